package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runEvents(t *testing.T, open Opener) {
	t.Run("RecordedWithStateChanges", func(t *testing.T) { testEventsRecorded(t, open(t)) })
	t.Run("AppendAndList", func(t *testing.T) { testEventsList(t, open(t)) })
	t.Run("Prune", func(t *testing.T) { testEventsPrune(t, open(t)) })
	t.Run("ConcurrentAppendsAreSeenInOrder", func(t *testing.T) { testEventsConcurrent(t, open(t)) })
}

// eventData decodes an event's data document.
func eventData(t *testing.T, e *store.Event) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(e.Data, &m); err != nil {
		t.Fatalf("event %d data %q: %v", e.ID, e.Data, err)
	}
	return m
}

// describeEvents renders events as "type subject key=value..." lines, for comparisons that say what differs.
func describeEvents(t *testing.T, evs []*store.Event, keys ...string) []string {
	t.Helper()
	out := make([]string, len(evs))
	for i, e := range evs {
		d := eventData(t, e)
		s := e.Type + " " + e.Subject
		for _, k := range keys {
			if v, ok := d[k]; ok {
				s += fmt.Sprintf(" %s=%v", k, v)
			}
		}
		out[i] = s
	}
	return out
}

func testEventsRecorded(t *testing.T, st store.Store) {
	ctx := t.Context()
	owner := "owner-" + newID()
	vm := &model.VM{OwnerID: owner, Name: "ev"}
	must(t, "create vm", st.VMs().Create(ctx, vm))
	for _, s := range []model.VMStatus{model.VMCreating, model.VMRunning} {
		_, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status = s; return nil })
		must(t, "update vm", err)
	}
	// Changes that are not state changes, and changes that do not happen, record nothing.
	_, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Metadata = map[string]string{"k": "v"}; return nil })
	must(t, "update vm metadata", err)
	_, err = st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status = model.VMStopped; return errors.New("no") })
	if err == nil {
		t.Fatal("an update whose callback fails succeeded")
	}
	_, err = st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status = model.VMPending; return nil })
	wantErr(t, "running -> pending", err, model.ErrInvalidTransition)

	task := fullTask(owner)
	task.VMID = vm.ID
	must(t, "create task", st.Tasks().Create(ctx, task))
	for _, s := range []model.TaskStatus{model.TaskCompleted, model.TaskCompleted} { // the second is not an end
		_, err := st.Tasks().Update(ctx, task.ID, func(x *model.Task) error { x.Status, x.Error = s, ""; return nil })
		must(t, "update task", err)
	}

	x := fullExecution(owner, vm.ID)
	x.Status, x.StartedAt, x.CompletedAt, x.ExitCode, x.Stdout = model.ExecutionPending, nil, nil, nil, ""
	must(t, "create execution", st.Executions().Create(ctx, x))
	_, err = st.Executions().Update(ctx, x.ID, func(e *model.Execution) error {
		e.Status, e.StartedAt = model.ExecutionRunning, ptr(time.Now())
		return nil
	})
	must(t, "start execution", err)
	_, err = st.Executions().Update(ctx, x.ID, func(e *model.Execution) error {
		e.Stdout = "s3cr3t output" // output changes alone are no event
		return nil
	})
	must(t, "execution output", err)
	_, err = st.Executions().Update(ctx, x.ID, func(e *model.Execution) error {
		e.Status, e.ExitCode, e.CompletedAt = model.ExecutionCompleted, ptr(7), ptr(time.Now())
		return nil
	})
	must(t, "finish execution", err)
	// Created finished (a job's skipped command, say): started and finished at once, in that order.
	y := fullExecution(owner, vm.ID)
	must(t, "create finished execution", st.Executions().Create(ctx, y))

	run := fullRun(owner)
	run.Status, run.VMID = model.RunPending, vm.ID
	must(t, "create run", st.Runs().Create(ctx, run))
	for _, s := range []model.RunStatus{model.RunRunning, model.RunCompleted} {
		_, err := st.Runs().Update(ctx, run.ID, func(r *model.Run) error { r.Status = s; return nil })
		must(t, "update run", err)
	}

	evs, err := st.Events().List(ctx, store.EventFilter{OwnerID: owner})
	must(t, "list events", err)
	same(t, "events", []string{
		"vm.status " + vm.ID + " name=ev status=pending",
		"vm.status " + vm.ID + " name=ev previous=pending status=creating",
		"vm.status " + vm.ID + " name=ev previous=creating status=running",
		"task.finished " + task.ID + " status=completed type=vm:execute",
		"execution.started " + x.ID + " status=running",
		"execution.finished " + x.ID + " exit_code=7 status=completed",
		"execution.started " + y.ID + " status=running",
		"execution.finished " + y.ID + " exit_code=0 status=completed",
		"run.status " + run.ID + " status=pending",
		"run.status " + run.ID + " previous=pending status=running",
		"run.finished " + run.ID + " previous=running status=completed",
	}, describeEvents(t, evs, "name", "exit_code", "previous", "status", "type"))
	var last int64
	for _, e := range evs {
		if e.ID <= last {
			t.Fatalf("ids are not increasing: %d after %d", e.ID, last)
		}
		last = e.ID
		if e.OwnerID != owner || e.VMID != vm.ID || e.CreatedAt.IsZero() || e.CreatedAt.Location() != time.UTC {
			t.Errorf("event %+v: owner, vm id or time wrong", e)
		}
		// What the log holds is ids and states: never the command, its environment or its output.
		for _, secret := range []string{"s3cr3t", "printf", "LANG", "fix the bug", "NPM_TOKEN"} {
			if strings.Contains(string(e.Data), secret) {
				t.Errorf("event %s carries %q: %s", e.Type, secret, e.Data)
			}
		}
		if d := eventData(t, e); d["id"] != e.Subject {
			t.Errorf("event %s: data id %v, subject %s", e.Type, d["id"], e.Subject)
		}
	}
	_, latest, err := st.Events().Bounds(ctx, owner)
	must(t, "bounds", err)
	if latest != last {
		t.Errorf("Bounds latest = %d, want %d", latest, last)
	}
}

func testEventsList(t *testing.T, st store.Store) {
	ctx := t.Context()
	es := st.Events()
	vmA, vmB := newID(), newID()
	var mine []*store.Event
	for i, c := range []struct{ owner, typ, vm string }{
		{"o1", store.EventVMStatus, vmA}, {"o2", store.EventVMStatus, vmB}, {"o1", store.EventRunStatus, vmB},
		{"o1", store.EventVMStatus, vmB}, {"o1", store.EventTaskFinished, ""}, {"o2", store.EventTaskFinished, ""},
	} {
		e := &store.Event{OwnerID: c.owner, Type: c.typ, Subject: fmt.Sprint("s", i), VMID: c.vm,
			Data: json.RawMessage(fmt.Sprintf(`{"n": %d, "ü": "✓"}`, i))}
		must(t, "append", es.Append(ctx, e))
		if e.ID == 0 || e.CreatedAt.IsZero() {
			t.Fatalf("Append did not fill id and time: %+v", e)
		}
		if c.owner == "o1" {
			mine = append(mine, e)
		}
	}
	ids := func(evs []*store.Event) string {
		var s []string
		for _, e := range evs {
			s = append(s, e.Subject)
		}
		return strings.Join(s, ",")
	}
	for _, c := range []struct {
		f    store.EventFilter
		want string
	}{
		{store.EventFilter{OwnerID: "o1"}, "s0,s2,s3,s4"},
		{store.EventFilter{OwnerID: "o1", After: mine[1].ID}, "s3,s4"},
		{store.EventFilter{OwnerID: "o1", Limit: 2}, "s0,s2"},
		{store.EventFilter{OwnerID: "o1", Types: []string{store.EventVMStatus, store.EventTaskFinished}}, "s0,s3,s4"},
		{store.EventFilter{OwnerID: "o1", VMID: vmB}, "s2,s3"},
		{store.EventFilter{OwnerID: "o1", VMID: vmB, Types: []string{store.EventVMStatus}}, "s3"},
		{store.EventFilter{OwnerID: "o2"}, "s1,s5"},
		{store.EventFilter{OwnerID: ""}, ""},
		{store.EventFilter{OwnerID: "nobody"}, ""},
		{store.EventFilter{OwnerID: "o1\x00"}, ""},
		{store.EventFilter{OwnerID: "o1", After: mine[3].ID}, ""},
	} {
		got, err := es.List(ctx, c.f)
		must(t, "list", err)
		if ids(got) != c.want {
			t.Errorf("List(%+v) = %s, want %s", c.f, ids(got), c.want)
		}
	}
	got, err := es.List(ctx, store.EventFilter{OwnerID: "o1"})
	must(t, "list", err)
	for i, e := range got {
		w := mine[i]
		if e.ID != w.ID || e.Type != w.Type || e.VMID != w.VMID || !e.CreatedAt.Equal(w.CreatedAt) {
			t.Errorf("listed %+v, appended %+v", e, w)
		}
		jsonEq(t, "data", json.RawMessage(w.Data), json.RawMessage(e.Data))
	}
	for _, bad := range []*store.Event{
		{Type: store.EventVMStatus},
		{OwnerID: "o1"},
		{OwnerID: "o1", Type: store.EventVMStatus, Data: []byte("{nope")},
		{OwnerID: "o1", Type: strings.Repeat("x", 65)},
	} {
		wantErr(t, fmt.Sprintf("Append(%+v)", bad), es.Append(ctx, bad), model.ErrInvalidInput)
	}
	if after, _ := es.List(ctx, store.EventFilter{OwnerID: "o1"}); len(after) != len(mine) {
		t.Fatalf("a refused append changed the log: %d events", len(after))
	}
}

func testEventsPrune(t *testing.T, st store.Store) {
	ctx := t.Context()
	es := st.Events()
	appendN := func(owner string, n int, at time.Time) []*store.Event {
		var out []*store.Event
		for range n {
			e := &store.Event{OwnerID: owner, Type: store.EventVMStatus, Subject: newID(), CreatedAt: at}
			must(t, "append", es.Append(ctx, e))
			out = append(out, e)
		}
		return out
	}
	old := time.Now().Add(-48 * time.Hour)
	a := appendN("a", 3, old)
	a = append(a, appendN("a", 4, time.Now())...)
	b := appendN("b", 2, time.Now())
	if n, err := es.Prune(ctx, store.EventRetention{}); err != nil || n != 0 {
		t.Fatalf("Prune with no limits = %d, %v", n, err)
	}

	// Too old: a's first three go; nothing of b's.
	n, err := es.Prune(ctx, store.EventRetention{MaxAge: 24 * time.Hour})
	must(t, "prune by age", err)
	if n != 3 {
		t.Fatalf("Prune(MaxAge) removed %d, want 3", n)
	}
	if h, latest, err := es.Bounds(ctx, "a"); err != nil || h != a[2].ID || latest != a[6].ID {
		t.Fatalf("Bounds(a) = %d, %d, %v, want %d, %d", h, latest, err, a[2].ID, a[6].ID)
	}
	if h, _, err := es.Bounds(ctx, "b"); err != nil || h != 0 {
		t.Fatalf("Bounds(b) = %d, %v: nothing of b's was pruned", h, err)
	}

	// Beyond the newest 2 per owner: a keeps a[5], a[6]; b keeps both of its own.
	n, err = es.Prune(ctx, store.EventRetention{MaxAge: 24 * time.Hour, MaxPerOwner: 2})
	must(t, "prune by count", err)
	if n != 2 {
		t.Fatalf("Prune(MaxPerOwner) removed %d, want 2", n)
	}
	left, err := es.List(ctx, store.EventFilter{OwnerID: "a"})
	must(t, "list", err)
	if len(left) != 2 || left[0].ID != a[5].ID || left[1].ID != a[6].ID {
		t.Fatalf("a kept %d events, want its newest two", len(left))
	}
	if h, _, _ := es.Bounds(ctx, "a"); h != a[4].ID {
		t.Fatalf("horizon of a = %d, want %d", h, a[4].ID)
	}
	if got, _ := es.List(ctx, store.EventFilter{OwnerID: "b"}); len(got) != len(b) {
		t.Fatalf("b kept %d events, want %d", len(got), len(b))
	}
	// Pruning again removes nothing and never lowers a horizon.
	if n, err := es.Prune(ctx, store.EventRetention{MaxAge: 24 * time.Hour, MaxPerOwner: 2}); err != nil || n != 0 {
		t.Fatalf("second Prune = %d, %v", n, err)
	}
	if h, _, _ := es.Bounds(ctx, "a"); h != a[4].ID {
		t.Fatalf("horizon of a moved to %d", h)
	}
}

// testEventsConcurrent appends from many goroutines while a reader follows the log the way the event stream does
// (List after the last id it saw). The reader must see every event exactly once: an id must never become visible
// after a larger one was read.
func testEventsConcurrent(t *testing.T, st store.Store) {
	ctx := t.Context()
	es := st.Events()
	const writers, each = 8, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := es.Append(ctx, &store.Event{OwnerID: "o", Type: store.EventVMStatus, Subject: fmt.Sprint(w, "-", i)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	seen := map[string]int{}
	var after int64
	read := func() {
		evs, err := es.List(ctx, store.EventFilter{OwnerID: "o", After: after})
		must(t, "list", err)
		for _, e := range evs {
			seen[e.Subject]++
			after = e.ID
		}
	}
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		read()
	}
	read()
	close(errs)
	for err := range errs {
		t.Fatalf("append: %v", err)
	}
	if len(seen) != writers*each {
		t.Fatalf("the reader saw %d distinct events of %d: an id became visible after a larger one", len(seen), writers*each)
	}
	for s, n := range seen {
		if n != 1 {
			t.Fatalf("event %s seen %d times", s, n)
		}
	}
}
