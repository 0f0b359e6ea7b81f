package api

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

// recordingQuerier stands in for Loki here (logs.LokiQuerier is tested on Loki's response shape in internal/logs):
// these tests are about which filters the API lets through.
type recordingQuerier struct {
	mu      sync.Mutex
	filters []logs.Filter
}

func (q *recordingQuerier) Query(_ context.Context, f logs.Filter) ([]logs.Entry, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.filters = append(q.filters, f)
	return []logs.Entry{{Time: time.Unix(1700000000, 0), Line: "hello", Labels: logs.Labels{Kind: f.Kind, Level: "info"},
		Metadata: map[string]string{logs.MetaVMID: f.VMID}}}, nil
}

func (q *recordingQuerier) calls() []logs.Filter {
	q.mu.Lock()
	defer q.mu.Unlock()
	return append([]logs.Filter(nil), q.filters...)
}

func (e *testEnv) createExecution(owner, vmID, stdout, stderr string) *model.Execution {
	e.t.Helper()
	now := time.Now().UTC()
	x := &model.Execution{ID: uuid.NewString(), OwnerID: owner, VMID: vmID, Status: model.ExecutionCompleted, Command: "echo",
		Args: []string{}, Stdout: stdout, Stderr: stderr, CreatedAt: now, StartedAt: &now}
	if err := e.st.Executions().Create(context.Background(), x); err != nil {
		e.t.Fatal(err)
	}
	return x
}

func TestLogsAreOwnerScoped(t *testing.T) {
	q := &recordingQuerier{}
	e := newEnv(t, func(c *Config) { c.Logs = q })
	vm := e.createVM(e.keyA, "logged")
	x := e.createExecution(e.ownerA, vm.VM.ID, "out\n", "")
	for _, path := range []string{
		"/api/v1/logs?vm_id=" + vm.VM.ID,
		"/api/v1/logs?execution_id=" + x.ID,
		"/api/v1/logs?run_id=" + uuid.NewString(),
		"/api/v1/vms/" + vm.VM.ID + "/logs",
	} {
		if r := e.call("GET", path, e.keyB, ""); r.status != http.StatusNotFound || r.errCode() != client.CodeNotFound {
			t.Errorf("bob: GET %s = %d %s, want 404", path, r.status, r.body)
		}
	}
	if calls := q.calls(); len(calls) != 0 {
		t.Fatalf("foreign ids reached the log store: %+v", calls)
	}
	if r := e.call("GET", "/api/v1/logs?vm_id="+vm.VM.ID, "", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("without a key: %d", r.status)
	}

	// Alice's queries reach the store with her owner id, whatever else she asks for.
	list := decodeAs[client.LogList](t, e.okCall("GET", "/api/v1/logs?vm_id="+vm.VM.ID+`&q=a"b&limit=7&since=2026-01-01T00:00:00Z`, e.keyA, ""))
	if list.Source != "loki" || len(list.Entries) != 1 || list.Entries[0].Line != "hello" {
		t.Fatalf("answer %+v", list)
	}
	decodeAs[client.LogList](t, e.okCall("GET", "/api/v1/vms/"+vm.VM.ID+"/logs", e.keyA, ""))
	decodeAs[client.LogList](t, e.okCall("GET", "/api/v1/logs", e.keyA, ""))
	calls := q.calls()
	if len(calls) != 3 {
		t.Fatalf("%d queries", len(calls))
	}
	want := logs.Filter{OwnerID: e.ownerA, VMID: vm.VM.ID, Contains: `a"b`, Limit: 7, Since: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	if calls[0] != want {
		t.Errorf("filter %+v, want %+v", calls[0], want)
	}
	if c := calls[1]; c.OwnerID != e.ownerA || c.VMID != vm.VM.ID || c.Kind != logs.KindConsole || c.Limit != 100 {
		t.Errorf("vm logs filter %+v", c)
	}
	if c := calls[2]; c.OwnerID != e.ownerA || c.VMID != "" {
		t.Errorf("unfiltered query %+v", c)
	}
}

func TestLogsRefuseBadInput(t *testing.T) {
	q := &recordingQuerier{}
	e := newEnv(t, func(c *Config) { c.Logs = q })
	for _, query := range []string{"since=yesterday", "until=1700000000", "limit=0", "limit=5001", "limit=ten",
		"since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z", "q=" + strings.Repeat("x", maxLogContains+1)} {
		r := e.call("GET", "/api/v1/logs?"+query, e.keyA, "")
		if r.status != http.StatusBadRequest || r.errCode() != client.CodeBadRequest {
			t.Errorf("?%s = %d %s, want 400", query[:min(len(query), 40)], r.status, r.body)
		}
	}
	if calls := q.calls(); len(calls) != 0 {
		t.Fatalf("bad input reached the log store: %+v", calls)
	}
}

// TestLogsFromStoreWithoutLoki: with the stdout logger, an execution's stored output answers, filtered and
// limited; what only Loki could answer is a 501 that says so.
func TestLogsFromStoreWithoutLoki(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "plain")
	x := e.createExecution(e.ownerA, vm.VM.ID, "one\ntwo error\nthree\n", "warn: error here\n")
	list := decodeAs[client.LogList](t, e.okCall("GET", "/api/v1/logs?execution_id="+x.ID, e.keyA, ""))
	var lines []string
	for _, en := range list.Entries {
		lines = append(lines, en.Metadata[logs.MetaStream]+":"+en.Line)
		if en.Kind != logs.KindExec || en.Metadata[logs.MetaExecutionID] != x.ID {
			t.Errorf("entry %+v", en)
		}
	}
	if list.Source != "store" || strings.Join(lines, "|") != "stdout:one|stdout:two error|stdout:three|stderr:warn: error here" {
		t.Fatalf("answer %s %q", list.Source, lines)
	}
	list = decodeAs[client.LogList](t, e.okCall("GET", "/api/v1/logs?execution_id="+x.ID+"&q=error&limit=1", e.keyA, ""))
	if len(list.Entries) != 1 || list.Entries[0].Line != "warn: error here" {
		t.Fatalf("filtered answer %+v", list.Entries)
	}
	for _, path := range []string{"/api/v1/logs?vm_id=" + vm.VM.ID, "/api/v1/logs", "/api/v1/vms/" + vm.VM.ID + "/logs"} {
		r := e.call("GET", path, e.keyA, "")
		if r.status != http.StatusNotImplemented || r.errCode() != client.CodeNotImplemented || !strings.Contains(string(r.body), "loki_url") {
			t.Errorf("GET %s = %d %s, want 501 naming loki_url", path, r.status, r.body)
		}
	}
}
