package api

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

func TestToTaskAttempts(t *testing.T) {
	started := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := []struct {
		name    string
		task    model.Task
		attempt int
	}{
		{"never picked up", model.Task{Status: model.TaskPending}, 0},
		{"failed before any run", model.Task{Status: model.TaskFailed}, 0},
		{"first run", model.Task{Status: model.TaskProcessing, StartedAt: &started}, 1},
		{"pending after two retries", model.Task{Status: model.TaskPending, RetryCount: 2, StartedAt: &started}, 3},
		{"completed on the second try", model.Task{Status: model.TaskCompleted, RetryCount: 1, StartedAt: &started}, 2},
	}
	for _, c := range cases {
		if got := ToTask(&c.task).Attempts; got != c.attempt {
			t.Errorf("%s: attempts = %d, want %d", c.name, got, c.attempt)
		}
	}
}

func TestToTaskKeepsInternalsOut(t *testing.T) {
	tk := &model.Task{
		ID: "t1", OwnerID: "secret-owner", Type: model.TaskVMCreate, Status: model.TaskCompleted,
		Priority: model.PriorityHigh, Payload: json.RawMessage(`{"vm_id":"internal-payload"}`),
		Result: json.RawMessage(`{"vm_id":"v1","status":"running"}`), TargetWorker: "w9", WorkerID: "w1", MaxRetries: 3,
	}
	b, err := json.Marshal(ToTask(tk))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, leak := range []string{"secret-owner", "internal-payload", "target_worker", "owner_id"} {
		if strings.Contains(s, leak) {
			t.Errorf("task JSON shows %q: %s", leak, s)
		}
	}
	var back client.Task
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Type != "vm:create" || back.Priority != "high" || back.WorkerID != "w1" || string(back.Result) != string(tk.Result) {
		t.Fatalf("round trip: %+v", back)
	}
}

func TestToVMHidesHostDetails(t *testing.T) {
	vm := &model.VM{
		ID: "v1", OwnerID: "o1", Name: "n", Status: model.VMRunning, VCPUCount: 2, MemoryMB: 256,
		KernelPath: "/var/lib/aetherium/vmlinux", RootfsPath: "/var/lib/aetherium/rootfs.ext4",
		SocketPath: "/run/aetherium/v1.sock", Metadata: map[string]string{"k": "v"},
	}
	c := ToVM(vm)
	if c.VCPUs != 2 || c.MemoryMB != 256 || c.Status != "running" || c.Metadata["k"] != "v" {
		t.Fatalf("ToVM = %+v", c)
	}
	b, _ := json.Marshal(c)
	if strings.Contains(string(b), "/var/lib") || strings.Contains(string(b), "/run/") || strings.Contains(string(b), "o1") {
		t.Fatalf("VM JSON shows host paths or the owner: %s", b)
	}
}

func TestToExecutionWireShape(t *testing.T) {
	e := &model.Execution{ID: "e1", VMID: "v1", Status: model.ExecutionPending, Command: "true", Stdout: "", Stderr: ""}
	b, err := json.Marshal(ToExecution(e))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	// A pending execution shows explicit nulls and an empty args list, so clients need not special-case absence.
	for _, k := range []string{"exit_code", "started_at", "completed_at", "duration_ms"} {
		if v, ok := m[k]; !ok || v != nil {
			t.Errorf("%s = %v (present %v), want null", k, v, ok)
		}
	}
	if args, ok := m["args"].([]any); !ok || len(args) != 0 {
		t.Errorf("args = %#v, want []", m["args"])
	}

	code, dur := 3, int64(1500)
	e.ExitCode, e.DurationMS, e.Stdout, e.Args = &code, &dur, "out\n", []string{"-c", "exit 3"}
	c := ToExecution(e)
	if *c.ExitCode != 3 || *c.DurationMS != 1500 || c.Stdout != "out\n" || len(c.Args) != 2 {
		t.Fatalf("ToExecution = %+v", c)
	}
}

func TestToJob(t *testing.T) {
	j := &model.Job{
		ID: "j1", VMID: "v1", Status: model.JobRunning, TaskID: "t1", StopOnError: true,
		Commands: []model.JobCommand{{Command: "echo", Args: []string{"a"}, TimeoutSeconds: 5}, {Command: "false"}},
	}
	c := ToJob(j, nil)
	if c.Executions == nil || len(c.Executions) != 0 {
		t.Fatalf("executions = %#v, want empty non-nil", c.Executions)
	}
	if len(c.Commands) != 2 || c.Commands[0].Args[0] != "a" || c.Commands[0].TimeoutSeconds != 5 || !c.StopOnError {
		t.Fatalf("ToJob = %+v", c)
	}
	c = ToJob(j, []*model.Execution{{ID: "e0", Seq: 0}, {ID: "e1", Seq: 1}})
	if len(c.Executions) != 2 || c.Executions[1].ID != "e1" {
		t.Fatalf("executions = %+v", c.Executions)
	}
}

func TestDescribeJSONError(t *testing.T) {
	cases := []struct {
		body string
		want []string
	}{
		{"{\n  \"name\": \"a\",,\n}", []string{"line 2, column 15"}},
		{`{"name": "a", "vcpus": "two"}`, []string{`"vcpus"`, "an integer", "string"}},
		{`{"name": "a", "metadata": {"k": 1}}`, []string{`"metadata"`, "a string", "number"}},
		{`{"name": "a", "vcpu": 2}`, []string{`unknown field "vcpu"`}},
		{`{"name": "a"`, []string{"ends before"}},
		{`{"name": 1e400}`, []string{"name"}},
	}
	for _, c := range cases {
		var req client.CreateVMRequest
		dec := json.NewDecoder(strings.NewReader(c.body))
		dec.DisallowUnknownFields()
		err := dec.Decode(&req)
		if err == nil {
			t.Errorf("%q decoded without error", c.body)
			continue
		}
		msg := describeJSONError([]byte(c.body), err)
		for _, w := range c.want {
			if !strings.Contains(msg, w) {
				t.Errorf("%q: message %q does not contain %q", c.body, msg, w)
			}
		}
	}
	if msg := describeJSONError(nil, errors.New("json: something new")); msg != "malformed JSON: something new" {
		t.Errorf("fallback message = %q", msg)
	}
}

func TestPosition(t *testing.T) {
	body := []byte("ab\ncd\n\nef")
	for _, c := range []struct {
		off       int64
		line, col int
	}{{0, 1, 1}, {1, 1, 2}, {3, 2, 1}, {4, 2, 2}, {7, 4, 1}, {9, 4, 3}, {100, 4, 3}, {-1, 1, 1}} {
		l, col := position(body, c.off)
		if l != c.line || col != c.col {
			t.Errorf("position(%d) = %d:%d, want %d:%d", c.off, l, col, c.line, c.col)
		}
	}
}
