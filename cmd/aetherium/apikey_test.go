package main

import (
	"bytes"
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/aetherium/aetherium/internal/api"
	"github.com/aetherium/aetherium/internal/audit"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/server"
)

func runCmd(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	if args[0] != "auth" || args[1] == "rotate-signing-key" {
		args = append(args, "--log-level", "warn") // the commands that read the configuration
	}
	var out, errb bytes.Buffer
	code := run(args, strings.NewReader(""), &out, &errb)
	return out.String(), errb.String(), code
}

// TestAPIKeyCommands: without a server the commands work on the store (the bootstrap path); with a server and an
// admin key they go through the API. rotate-signing-key makes a new signing key.
func TestAPIKeyCommands(t *testing.T) {
	ctx := context.Background()
	t.Setenv("AETHERIUM_DATA_DIR", t.TempDir())
	t.Setenv(cli.EnvServer, "")
	t.Setenv(cli.EnvAPIKey, "")
	t.Setenv(cli.EnvAPIKeyFile, "")
	out, errOut, code := runCmd(t, "apikey", "create", "--name", "boot", "--admin")
	admin := strings.TrimSpace(out)
	if code != 0 || !auth.WellFormed(admin) {
		t.Fatalf("local create: %d %q %s", code, out, errOut)
	}
	if _, errOut, code := runCmd(t, "apikey", "create", "--name", "x", "--scope", "admin"); code == 0 || !strings.Contains(errOut, "role admin") {
		t.Fatalf("a user key with the admin scope: %d %s", code, errOut)
	}
	out, _, code = runCmd(t, "apikey", "list")
	if code != 0 || !strings.Contains(out, "boot") || !strings.Contains(out, "admin") {
		t.Fatalf("local list: %d %s", code, out)
	}

	cfg, err := config.Load(pflag.NewFlagSet("t", pflag.ContinueOnError), os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	st, err := server.OpenStore(ctx, cfg, true)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	quiet := slog.New(slog.DiscardHandler)
	rec := audit.NewRecorder(st.Audit(), audit.Options{FlushEvery: time.Hour, Logger: quiet})
	defer rec.Close(ctx)
	jwt := auth.NewJWT(st.SigningKeys(), nil, auth.JWTConfig{})
	srv := httptest.NewServer(api.New(api.Config{Auth: auth.NewAuthenticator(st.APIKeys(), auth.WithJWT(jwt)),
		APIKeys: st.APIKeys(), Audit: rec, AuditStore: st.Audit(), Logger: quiet}))
	defer srv.Close()
	t.Setenv(cli.EnvServer, srv.URL)
	t.Setenv(cli.EnvAPIKey, admin)
	out, errOut, code = runCmd(t, "apikey", "create", "--name", "remote", "--scope", "vms:read", "--expires-in", "1h")
	if code != 0 || !auth.WellFormed(strings.TrimSpace(out)) {
		t.Fatalf("remote create: %d %q %s", code, out, errOut)
	}
	out, errOut, code = runCmd(t, "apikey", "list")
	if code != 0 || !strings.Contains(out, "remote") || !strings.Contains(out, "vms:read") {
		t.Fatalf("remote list: %d %s %s", code, out, errOut)
	}
	keys, _ := st.APIKeys().List(ctx)
	if len(keys) != 2 || keys[0].Name != "remote" || keys[0].ExpiresAt == nil {
		t.Fatalf("stored keys %+v", keys)
	}
	if out, errOut, code := runCmd(t, "apikey", "revoke", keys[0].ID); code != 0 || !strings.Contains(out, "revoked") {
		t.Fatalf("remote revoke: %d %s %s", code, out, errOut)
	}
	if k, _ := st.APIKeys().Get(ctx, keys[0].ID); k.RevokedAt == nil {
		t.Fatal("not revoked")
	}
	// A user key is refused by the API.
	user, _, _ := runCmd(t, "apikey", "create", "--name", "u", "--local")
	t.Setenv(cli.EnvAPIKey, strings.TrimSpace(user))
	if _, errOut, code := runCmd(t, "apikey", "list"); code == 0 || !strings.Contains(errOut, "admin") {
		t.Fatalf("list with a user key: %d %s", code, errOut)
	}

	t.Setenv(cli.EnvAPIKey, admin)
	out, errOut, code = runCmd(t, "auth", "token")
	if code != 0 || !auth.LooksLikeJWT(strings.TrimSpace(out)) {
		t.Fatalf("auth token: %d %s %s", code, out, errOut)
	}
	rec.Flush(ctx)
	out, errOut, code = runCmd(t, "auth", "audit")
	if code != 0 || !strings.Contains(out, "/api/v1/apikeys") {
		t.Fatalf("auth audit: %d %s %s", code, out, errOut)
	}

	out, errOut, code = runCmd(t, "auth", "rotate-signing-key")
	if code != 0 || !strings.Contains(out, "new signing key") {
		t.Fatalf("rotate-signing-key: %d %s %s", code, out, errOut)
	}
	if ks, _ := st.SigningKeys().List(ctx); len(ks) != 2 {
		t.Fatalf("signing keys: %d", len(ks))
	}
}
