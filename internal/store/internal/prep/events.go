package prep

import (
	"encoding/json"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Event log limits (see store.EventFilter).
const (
	DefaultEventLimit = 500
	MaxEventLimit     = 5000
	// maxEventError bounds the error text a task.finished event carries: the log holds states, not reports.
	maxEventError = 512
)

// EventLimit returns the number of events one List may return.
func EventLimit(n int) int {
	switch {
	case n <= 0:
		return DefaultEventLimit
	case n > MaxEventLimit:
		return MaxEventLimit
	default:
		return n
	}
}

// The data documents of the event types (docs/api.md, "Events"): ids and states only, never secrets or output.
type (
	vmStatusData struct {
		ID       string `json:"id"`
		Name     string `json:"name"`
		Status   string `json:"status"`
		Previous string `json:"previous,omitempty"`
		Time     string `json:"time"`
	}
	taskFinishedData struct {
		ID     string `json:"id"`
		Type   string `json:"type"`
		Status string `json:"status"`
		VMID   string `json:"vm_id,omitempty"`
		Error  string `json:"error,omitempty"`
		Time   string `json:"time"`
	}
	executionData struct {
		ID       string `json:"id"`
		VMID     string `json:"vm_id"`
		JobID    string `json:"job_id,omitempty"`
		Status   string `json:"status"`
		ExitCode *int   `json:"exit_code,omitempty"`
		TimedOut bool   `json:"timed_out,omitempty"`
		Time     string `json:"time"`
	}
	runData struct {
		ID       string `json:"id"`
		VMID     string `json:"vm_id,omitempty"`
		Status   string `json:"status"`
		Previous string `json:"previous,omitempty"`
		Time     string `json:"time"`
	}
)

func event(owner, typ, subject, vmID string, now time.Time, data any) *store.Event {
	b, err := json.Marshal(data)
	if err != nil {
		// The documents are flat structs of strings and numbers: this cannot fail.
		panic("prep: marshal event data: " + err.Error())
	}
	return &store.Event{OwnerID: owner, Type: typ, Subject: subject, VMID: vmID, Data: b, CreatedAt: now}
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// VMEvents returns the events of a VM's change from before (nil: the VM is being created) to vm: a vm.status when
// its status changed.
func VMEvents(before, vm *model.VM, now time.Time) []*store.Event {
	if before != nil && before.Status == vm.Status {
		return nil
	}
	d := vmStatusData{ID: vm.ID, Name: vm.Name, Status: string(vm.Status), Time: stamp(now)}
	if before != nil {
		d.Previous = string(before.Status)
	}
	return []*store.Event{event(vm.OwnerID, store.EventVMStatus, vm.ID, vm.ID, now, d)}
}

// TaskEvents returns the events of a task's change: a task.finished when it became done.
func TaskEvents(before, t *model.Task, now time.Time) []*store.Event {
	if !t.Status.Done() || (before != nil && before.Status.Done()) {
		return nil
	}
	d := taskFinishedData{ID: t.ID, Type: string(t.Type), Status: string(t.Status), VMID: t.VMID,
		Error: truncate(t.Error, maxEventError), Time: stamp(now)}
	return []*store.Event{event(t.OwnerID, store.EventTaskFinished, t.ID, t.VMID, now, d)}
}

// ExecutionEvents returns the events of an execution's change: execution.started when it got a start time, and
// execution.finished when it reached a final status (both, in that order, when one change does both).
func ExecutionEvents(before, e *model.Execution, now time.Time) []*store.Event {
	var out []*store.Event
	if e.StartedAt != nil && (before == nil || before.StartedAt == nil) {
		out = append(out, event(e.OwnerID, store.EventExecutionStarted, e.ID, e.VMID, now,
			executionData{ID: e.ID, VMID: e.VMID, JobID: e.JobID, Status: string(model.ExecutionRunning), Time: stamp(now)}))
	}
	if executionDone(e.Status) && (before == nil || !executionDone(before.Status)) {
		out = append(out, event(e.OwnerID, store.EventExecutionFinished, e.ID, e.VMID, now,
			executionData{ID: e.ID, VMID: e.VMID, JobID: e.JobID, Status: string(e.Status), ExitCode: e.ExitCode,
				TimedOut: e.TimedOut, Time: stamp(now)}))
	}
	return out
}

func executionDone(s model.ExecutionStatus) bool {
	return s == model.ExecutionCompleted || s == model.ExecutionFailed
}

// RunStatusEvents returns the events of a run's change: run.status when its status changed (or it is being created),
// run.finished instead when the new status is final.
func RunStatusEvents(before, r *model.Run, now time.Time) []*store.Event {
	if before != nil && before.Status == r.Status {
		return nil
	}
	d := runData{ID: r.ID, VMID: r.VMID, Status: string(r.Status), Time: stamp(now)}
	if before != nil {
		d.Previous = string(before.Status)
	}
	typ := store.EventRunStatus
	if r.Status.Done() {
		typ = store.EventRunFinished
	}
	return []*store.Event{event(r.OwnerID, typ, r.ID, r.VMID, now, d)}
}

// NewEvent checks an event about to be appended and fills its time.
func NewEvent(e *store.Event, now time.Time) error {
	if e == nil {
		return Invalid("nil event")
	}
	if e.OwnerID == "" || e.Type == "" || len(e.Type) > 64 {
		return Invalid("event: an owner and a type (at most 64 bytes) are required")
	}
	if !TextOK(e.OwnerID, e.Type, e.Subject, e.VMID) {
		return Invalid("event: text fields must be valid UTF-8 without NUL")
	}
	if len(e.Data) == 0 {
		e.Data = []byte("{}")
	}
	if !json.Valid(e.Data) {
		return Invalid("event data is not JSON")
	}
	if e.CreatedAt.IsZero() {
		e.CreatedAt = now
	}
	e.CreatedAt = Time(e.CreatedAt)
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
