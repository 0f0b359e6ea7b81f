package cli_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

func TestLogsPrintsOldestFirstAndEscapes(t *testing.T) {
	e := newEnv(t)
	vm := e.srv.AddVM("web", "running")
	other := e.srv.AddVM("db", "running")
	t0 := time.Now().Add(-time.Minute).UTC()
	e.srv.AddLogs(
		client.LogEntry{Time: t0.Add(2 * time.Second), Line: "second \x1b[31mred", Kind: "exec", Metadata: map[string]string{"vm_id": vm.ID, "stream": "stderr"}},
		client.LogEntry{Time: t0, Line: "first", Kind: "exec", Metadata: map[string]string{"vm_id": vm.ID, "stream": "stdout"}},
		client.LogEntry{Time: t0, Line: "not mine", Kind: "exec", Metadata: map[string]string{"vm_id": other.ID}},
	)
	r := e.run("logs", "--vm", "web", "-q", "x y", "--since", "2h")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "exec/stdout  first") || !strings.HasSuffix(lines[1], "exec/stderr  second ?[31mred") {
		t.Fatalf("output %q", r.stdout)
	}
	var got *struct{ vm, q, since string }
	for _, req := range e.srv.Requests() {
		if req.Path == "/api/v1/logs" {
			got = &struct{ vm, q, since string }{req.Query.Get("vm_id"), req.Query.Get("q"), req.Query.Get("since")}
		}
	}
	if got == nil || got.vm != vm.ID || got.q != "x y" || got.since == "" {
		t.Fatalf("request %+v", got)
	}
	if r := e.run("logs", "--since", "last tuesday"); r.code == 0 || !strings.Contains(r.stderr, "--since") {
		t.Fatalf("a bad --since was accepted: %d %s", r.code, r.stderr)
	}
}

// TestVMLogsFollow: `vm logs VM -f` prints the console, then, polling, only what is new.
func TestVMLogsFollow(t *testing.T) {
	e := newEnv(t)
	vm := e.srv.AddVM("web", "running")
	t0 := time.Now().Add(-time.Minute).UTC()
	e.srv.AddLogs(client.LogEntry{Time: t0, Line: "boot", Kind: "console", Metadata: map[string]string{"vm_id": vm.ID, "stream": "console"}})
	go func() {
		for e.srv.Count("GET", "/api/v1/vms/"+vm.ID+"/logs") == 0 {
			time.Sleep(5 * time.Millisecond)
		}
		e.srv.AddLogs(client.LogEntry{Time: t0.Add(time.Second), Line: "agent up", Kind: "console", Metadata: map[string]string{"vm_id": vm.ID}})
	}()
	r := e.run("vm", "logs", "web", "-f", "--timeout", "3s")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], "console      boot") || !strings.HasSuffix(lines[1], "console      agent up") {
		t.Fatalf("output %q", r.stdout)
	}
	if n := e.srv.Count("GET", "/api/v1/vms/"+vm.ID+"/logs"); n < 2 {
		t.Fatalf("%d polls", n)
	}
}
