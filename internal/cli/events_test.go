package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/api"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/eventlog"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// eventsAPI is the real API over SQLite with the event log; the test changes states in the store directly, as a
// worker would.
type eventsAPI struct {
	url, key, owner string
	st              store.Store
}

func newEventsAPI(t *testing.T) *eventsAPI {
	t.Helper()
	ctx := context.Background()
	raw, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { raw.Close() })
	if err := raw.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	bus := inproc.New()
	t.Cleanup(func() { bus.Close() })
	st := eventlog.Wake(raw, bus, log)
	q := embedded.New(st.Tasks(), bus, queue.Options{WorkerID: "w", Concurrency: 1}, log)
	svc := task.New(st, q, bus, task.DefaultLimits())
	plain, k, err := auth.NewKey("", "cli", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.APIKeys().Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.New(api.Config{Service: svc, Auth: auth.NewAuthenticator(st.APIKeys()), Logger: log,
		Events: st.Events(), EventBus: bus}))
	t.Cleanup(srv.Close)
	return &eventsAPI{url: srv.URL, key: plain, owner: k.OwnerID, st: st}
}

func (s *eventsAPI) run(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	root := &cobra.Command{Use: "aetherium"}
	vars := map[string]string{cli.EnvServer: s.url, cli.EnvAPIKey: s.key}
	root.AddCommand(cli.NewClientCommands(cli.IOStreams{Out: &out, ErrOut: &errb},
		cli.WithGetenv(func(k string) string { return vars[k] }))...)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := root.ExecuteContext(ctx)
	return result{stdout: out.String(), stderr: errb.String(), code: cli.ExitCode(err)}
}

// vm creates a VM of the owner and moves it through statuses, as a worker does.
func (s *eventsAPI) vm(t *testing.T, name string, statuses ...model.VMStatus) string {
	t.Helper()
	ctx := context.Background()
	vm := &model.VM{OwnerID: s.owner, Name: name}
	if err := s.st.VMs().Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	for _, st := range statuses {
		if _, err := s.st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status = st; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return vm.ID
}

func TestEventsCommand(t *testing.T) {
	s := newEventsAPI(t)
	web := s.vm(t, "web", model.VMCreating, model.VMRunning)
	s.vm(t, "db", model.VMCreating)

	// One-off: everything kept, one line each, oldest first; then the command ends.
	r := s.run(t, "events")
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(lines) != 5 {
		t.Fatalf("exit %d, %d lines:\n%s%s", r.code, len(lines), r.stdout, r.stderr)
	}
	for i, want := range []string{"vm.status          " + web + " web pending", "web pending -> creating", "web creating -> running",
		"db pending", "db pending -> creating"} {
		if !strings.HasSuffix(lines[i], want) {
			t.Errorf("line %d %q, want it to show %q", i, lines[i], want)
		}
	}
	first := strings.Fields(lines[0])[0]

	// --vm by name, --after, --json.
	r = s.run(t, "events", "--vm", "web", "--after", first, "--json")
	var got []client.Event
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var ev client.Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("--json line %q: %v (stderr %s)", l, err, r.stderr)
		}
		got = append(got, ev)
	}
	if r.code != 0 || len(got) != 2 || got[0].Type != client.EventVMStatus || !strings.Contains(string(got[1].Data), `"status":"running"`) {
		t.Fatalf("--vm web --after %s: %d %+v %s", first, r.code, got, r.stderr)
	}

	if r := s.run(t, "events", "--types", "vm.status,vm.exploded"); r.code == 0 || !strings.Contains(r.stderr, "vm.exploded") {
		t.Fatalf("an unknown type was accepted: %d %s", r.code, r.stderr)
	}

	// --follow from now: only what happens after it connected, until the timeout ends it (exit 0).
	done := make(chan result)
	go func() { done <- s.run(t, "events", "--follow", "--types", "vm.status", "--timeout", "1500ms") }()
	time.Sleep(500 * time.Millisecond) // connected by then: what follows is live
	cache := s.vm(t, "cache")
	r = <-done
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 || !strings.Contains(r.stdout, cache+" cache pending") {
		t.Fatalf("--follow: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
}
