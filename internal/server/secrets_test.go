package server

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/secrets"
)

func secretsConfig(t *testing.T, dataDir string, env map[string]string) config.Config {
	t.Helper()
	vars := map[string]string{"AETHERIUM_DATA_DIR": dataDir}
	for k, v := range env {
		vars[k] = v
	}
	cfg, err := config.Load(pflag.NewFlagSet("t", pflag.ContinueOnError), func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// startErr runs the server roles and returns their start-up error; they must fail before serving anything.
func startErr(t *testing.T, cfg config.Config, roles Roles) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := Run(ctx, cfg, roles, "test", slog.New(slog.NewTextHandler(io.Discard, nil)), io.Discard)
	if err == nil || ctx.Err() != nil {
		t.Fatalf("Run started (err %v): want a start-up error", err)
	}
	return err
}

func TestSecretsKeyAtStartUp(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	cfg := secretsConfig(t, dataDir, nil)
	st, err := OpenStore(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	// serve creates the key file, 0600, on first start, and reuses it.
	m, err := OpenSecrets(ctx, cfg, st, true, nil)
	if err != nil || m == nil {
		t.Fatalf("first OpenSecrets = %v, %v", m, err)
	}
	path := filepath.Join(dataDir, SecretsKeyFile)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v, %v", fi, err)
	}
	if _, _, err := m.Put(ctx, "owner", "TOKEN", "v4lue-of-the-token"); err != nil {
		t.Fatal(err)
	}
	m2, err := OpenSecrets(ctx, cfg, st, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if v, err := m2.Secret(ctx, "owner", "TOKEN"); err != nil || v != "v4lue-of-the-token" {
		t.Fatalf("after a restart: %q, %v", v, err)
	}
	// A gateway or worker with the same key given in the environment.
	keyText, _ := os.ReadFile(path)
	byEnv := secretsConfig(t, t.TempDir(), map[string]string{"AETHERIUM_SECRETS_KEY": strings.TrimSpace(string(keyText))})
	if _, err := OpenSecrets(ctx, byEnv, st, false, nil); err != nil {
		t.Fatalf("the same key from the environment: %v", err)
	}

	// The wrong key fails start-up, clearly, and is never used to write.
	other, _ := secrets.GenerateKey()
	wrong := secretsConfig(t, dataDir, map[string]string{"AETHERIUM_SECRETS_KEY": other.Encode()})
	err = startErr(t, wrong, Roles{API: true, Worker: true, Bootstrap: true})
	if !strings.Contains(err.Error(), "wrong secrets key") || !strings.Contains(err.Error(), other.ID()) ||
		!strings.Contains(err.Error(), m.Keyring().CurrentID()) {
		t.Fatalf("start-up with the wrong key: %v", err)
	}
	t.Logf("start-up with the wrong key: %v", err)
	if checks, _ := st.Secrets().Checks(ctx); len(checks) != 1 {
		t.Fatalf("the wrong key left a key check: %d checks", len(checks))
	}
	for _, c := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"AETHERIUM_SECRETS_KEY": "not base64!"}, "secrets_key (AETHERIUM_SECRETS_KEY): secrets key is not base64"},
		{map[string]string{"AETHERIUM_SECRETS_KEY": "c2hvcnQ="}, "must be 32 bytes"},
		{map[string]string{"AETHERIUM_SECRETS_KEY_FILE": filepath.Join(dataDir, "nope")}, "secrets_key_file"},
		{map[string]string{"AETHERIUM_SECRETS_OLD_KEYS": "bad"}, "secrets_old_keys, key 1"},
	} {
		err := startErr(t, secretsConfig(t, dataDir, c.env), Roles{API: true, Worker: true, Bootstrap: true})
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("start-up with %v: %v; want %q", c.env, err, c.want)
		}
		if strings.Contains(err.Error(), "not base64!") {
			t.Errorf("the error quotes the key: %v", err)
		}
	}

	// A gateway without any key on a database that holds secrets: a start-up error, not a silent start.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	err = startErr(t, secretsConfig(t, dataDir, nil), Roles{API: true})
	if !strings.Contains(err.Error(), "no secrets key is configured") || !strings.Contains(err.Error(), m.Keyring().CurrentID()) {
		t.Fatalf("gateway without a key: %v", err)
	}
	// Without secrets in the database, a gateway may run without a key.
	fresh := secretsConfig(t, t.TempDir(), nil)
	fst, err := OpenStore(ctx, fresh, true)
	if err != nil {
		t.Fatal(err)
	}
	defer fst.Close()
	if m, err := OpenSecrets(ctx, fresh, fst, false, nil); err != nil || m != nil {
		t.Fatalf("OpenSecrets without a key on an unused database = %v, %v", m, err)
	}
}

// TestRotateSecretsKey rotates a serve installation's key: every secret is re-sealed under the new key, the old
// key then fails start-up, and the new one opens everything.
func TestRotateSecretsKey(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	cfg := secretsConfig(t, dataDir, nil)
	st, err := OpenStore(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	m, err := OpenSecrets(ctx, cfg, st, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	values := map[string]string{"A": "value-of-a-1234", "B": "value-of-b-5678"}
	for name, v := range values {
		if _, _, err := m.Put(ctx, "owner", name, v); err != nil {
			t.Fatal(err)
		}
	}
	newFile := filepath.Join(t.TempDir(), "secrets-key.new")
	id, n, err := RotateSecrets(ctx, cfg, st, newFile, nil)
	if err != nil || n != 2 || id == m.Keyring().CurrentID() {
		t.Fatalf("RotateSecrets = %s, %d, %v", id, n, err)
	}
	if fi, err := os.Stat(newFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("new key file: %v, %v", fi, err)
	}
	// Again: nothing left to do (an interrupted rotation can be resumed with the same file).
	if id2, n, err := RotateSecrets(ctx, secretsConfig(t, dataDir, map[string]string{"AETHERIUM_SECRETS_KEY_FILE": newFile}), st, "", nil); err != nil || n != 0 || id2 != id {
		t.Fatalf("second RotateSecrets = %s, %d, %v", id2, n, err)
	}
	// The old key is retired: start-up with it fails.
	if _, err := OpenSecrets(ctx, cfg, st, true, nil); err == nil || !strings.Contains(err.Error(), "wrong secrets key") {
		t.Fatalf("start-up with the retired key: %v", err)
	}
	m2, err := OpenSecrets(ctx, secretsConfig(t, dataDir, map[string]string{"AETHERIUM_SECRETS_KEY_FILE": newFile}), st, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, v := range values {
		if got, err := m2.Secret(ctx, "owner", name); err != nil || got != v {
			t.Fatalf("%s after rotation = %q, %v", name, got, err)
		}
	}
}

// TestDoctorChecksTheSecretsKey: doctor says whether the configured key fits the database, without writing.
func TestDoctorChecksTheSecretsKey(t *testing.T) {
	ctx := context.Background()
	dataDir := t.TempDir()
	cfg := secretsConfig(t, dataDir, nil)
	st, err := OpenStore(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	serve := Roles{API: true, Worker: true}
	if c := checkSecretsKey(ctx, cfg, serve); c.Status != CheckOK || !strings.Contains(c.Detail, "creates") {
		t.Fatalf("before the first start: %+v", c)
	}
	if c := checkSecretsKey(ctx, cfg, Roles{API: true}); c.Status != CheckWarn {
		t.Fatalf("gateway without a key: %+v", c)
	}
	m, err := OpenSecrets(ctx, cfg, st, true, nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := checkSecretsKey(ctx, cfg, serve); c.Status != CheckOK || c.Detail != "key "+m.Keyring().CurrentID() {
		t.Fatalf("with the key: %+v", c)
	}
	other, _ := secrets.GenerateKey()
	before, _ := st.Secrets().Checks(ctx)
	c := checkSecretsKey(ctx, secretsConfig(t, dataDir, map[string]string{"AETHERIUM_SECRETS_KEY": other.Encode()}), serve)
	if c.Status != CheckFail || !strings.Contains(c.Detail, "wrong secrets key") {
		t.Fatalf("with the wrong key: %+v", c)
	}
	if after, _ := st.Secrets().Checks(ctx); len(after) != len(before) {
		t.Fatal("doctor wrote a key check")
	}
}
