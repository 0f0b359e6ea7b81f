package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/api"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// secretsAPI is the real API (SQLite, embedded queue, in-process bus) with secrets under a new key.
type secretsAPI struct {
	url, key, owner string
	m               *secrets.Manager
}

func newSecretsAPI(t *testing.T) *secretsAPI {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus := inproc.New()
	t.Cleanup(func() { bus.Close() })
	q := embedded.New(st.Tasks(), bus, queue.Options{WorkerID: "w", Concurrency: 1}, log)
	key, _ := secrets.GenerateKey()
	kr, _ := secrets.NewKeyring(key)
	m := secrets.NewManager(st.Secrets(), kr, log)
	svc := task.New(st, q, bus, task.DefaultLimits(), task.WithSecrets(m))
	plain, k, err := auth.NewKey("", "cli", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.APIKeys().Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.New(api.Config{Service: svc, Auth: auth.NewAuthenticator(st.APIKeys()), Logger: log, Notifications: st.Notifications()}))
	t.Cleanup(srv.Close)
	return &secretsAPI{url: srv.URL, key: plain, owner: k.OwnerID, m: m}
}

// run runs the CLI with stdin, as main would.
func (s *secretsAPI) run(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	root := &cobra.Command{Use: "aetherium"}
	vars := map[string]string{cli.EnvServer: s.url, cli.EnvAPIKey: s.key}
	root.AddCommand(cli.NewClientCommands(cli.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errb},
		cli.WithGetenv(func(k string) string { return vars[k] }))...)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	r := result{stdout: out.String(), stderr: errb.String(), code: cli.ExitCode(err)}
	if strings.Contains(r.stdout+r.stderr, s.key) {
		t.Errorf("output shows the API key:\n%s", r)
	}
	return r
}

func TestSecretCommands(t *testing.T) {
	s := newSecretsAPI(t)
	ctx := context.Background()
	const value = "ghp_cli-test-value-0123456789"
	var outputs []string
	run := func(stdin string, args ...string) result {
		t.Helper()
		r := s.run(t, stdin, args...)
		outputs = append(outputs, r.stdout+r.stderr)
		return r
	}

	// The value on the command line is refused: a usage error, and nothing is stored.
	r := run("", "secret", "set", "GH", value)
	wantCode(t, r, 2)
	if !strings.Contains(r.stderr, "never taken from the command line") {
		t.Fatalf("refusal: %s", r)
	}
	if l, _ := s.m.List(ctx, s.owner); len(l) != 0 {
		t.Fatalf("a refused set stored %d secrets", len(l))
	}
	wantCode(t, run("", "secret", "set", "GH"), 1) // empty stdin

	r = run(value+"\n", "secret", "set", "GH")
	wantCode(t, r, 0)
	if r.stdout != "created secret GH\n" {
		t.Fatalf("set: %s", r)
	}
	if v, err := s.m.Secret(ctx, s.owner, "GH"); err != nil || v != value {
		t.Fatalf("stored value = %q, %v (one trailing newline dropped)", v, err)
	}
	file := filepath.Join(t.TempDir(), "v")
	if err := os.WriteFile(file, []byte(value+"-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = run("", "secret", "set", "GH", "--file", file)
	if r.code != 0 || r.stdout != "replaced secret GH\n" {
		t.Fatalf("set --file: %s", r)
	}
	if v, _ := s.m.Secret(ctx, s.owner, "GH"); v != value+"-2" {
		t.Fatalf("value from the file = %q", v)
	}
	r = run("x", "secret", "set", "9BAD")
	if r.code != 1 || !strings.Contains(r.stderr, "name") {
		t.Fatalf("bad name: %s", r)
	}

	r = run("", "secret", "list")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "NAME") || !strings.Contains(r.stdout, "GH ") || !strings.Contains(r.stdout, "ago") {
		t.Fatalf("list: %s", r)
	}
	r = run("", "secret", "list", "--json")
	var l client.SecretList
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &l) != nil || len(l.Secrets) != 1 || l.Secrets[0].Name != "GH" {
		t.Fatalf("list --json: %s", r)
	}

	wantCode(t, run("", "secret", "rm", "GH"), 0)
	r = run("", "secret", "rm", "GH")
	if r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Fatalf("second rm: %s", r)
	}
	r = run("", "secret", "list")
	if r.code != 0 || r.stdout != "" || !strings.Contains(r.stderr, "no secrets") {
		t.Fatalf("empty list: %s", r)
	}
	for _, o := range outputs {
		if strings.Contains(o, value) {
			t.Fatalf("the CLI printed the value:\n%s", o)
		}
	}
}

// TestSecretEnvFlags: vm exec and job run send --secret-env as secret_env.
func TestSecretEnvFlags(t *testing.T) {
	e := newEnv(t)
	e.srv.AddVM("box", "running")
	wantCode(t, e.run("vm", "exec", "--secret-env", "GH_TOKEN=GH", "--secret-env", "K=API", "box", "--", "true"), 0)
	var body client.ExecuteRequest
	if err := json.Unmarshal(e.lastRequest("POST", "/api/v1/vms/").Body, &body); err != nil {
		t.Fatal(err)
	}
	if len(body.SecretEnv) != 2 || body.SecretEnv["GH_TOKEN"] != "GH" || body.SecretEnv["K"] != "API" || body.Env != nil {
		t.Fatalf("exec request: %+v", body)
	}

	wantCode(t, e.run("job", "run", "--vm", "box", "--secret-env", "T=GH", "--", "echo a", "echo b"), 0)
	var job client.CreateJobRequest
	if err := json.Unmarshal(e.lastRequest("POST", "/api/v1/jobs").Body, &job); err != nil {
		t.Fatal(err)
	}
	if len(job.Commands) != 2 || job.Commands[0].SecretEnv["T"] != "GH" || job.Commands[1].SecretEnv["T"] != "GH" {
		t.Fatalf("job request: %+v", job)
	}
}
