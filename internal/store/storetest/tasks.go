package storetest

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func fullTask(owner string) *model.Task {
	return &model.Task{
		ID:           newID(),
		OwnerID:      owner,
		Type:         model.TaskVMExecute,
		Status:       model.TaskProcessing,
		Priority:     model.PriorityHigh,
		Payload:      json.RawMessage(`{"vm_id": "x", "command": "echo", "args": ["a", "b"], "n": 1.5}`),
		Result:       json.RawMessage(`{"exit_code":0}`),
		Error:        "transient",
		VMID:         newID(),
		JobID:        newID(),
		TargetWorker: "worker-1",
		WorkerID:     "worker-1",
		MaxRetries:   3,
		RetryCount:   1,
		CreatedAt:    at(0),
		UpdatedAt:    at(1),
		ScheduledAt:  ptr(at(2)),
		StartedAt:    ptr(at(3)),
		CompletedAt:  ptr(at(4)),
	}
}

func storedTask(t model.Task) model.Task {
	t.CreatedAt, t.UpdatedAt = stored(t.CreatedAt), stored(t.UpdatedAt)
	t.ScheduledAt, t.StartedAt, t.CompletedAt = storedPtr(t.ScheduledAt), storedPtr(t.StartedAt), storedPtr(t.CompletedAt)
	return t
}

// sameTask compares tasks with their json documents compared as json.
func sameTask(t *testing.T, what string, want, got model.Task) {
	t.Helper()
	jsonEq(t, what+": payload", want.Payload, got.Payload)
	jsonEq(t, what+": result", want.Result, got.Result)
	if (want.Payload == nil) != (got.Payload == nil) || (want.Result == nil) != (got.Result == nil) {
		t.Fatalf("%s: json nil-ness differs: payload %q vs %q, result %q vs %q", what, want.Payload, got.Payload,
			want.Result, got.Result)
	}
	want.Payload, got.Payload, want.Result, got.Result = nil, nil, nil, nil
	same(t, what, want, got)
}

func taskIDs(ts []*model.Task) []string { return idsOf(ts, func(t *model.Task) string { return t.ID }) }

func runTasks(t *testing.T, open Opener) {
	t.Run("CreateGet", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		in := fullTask("owner-a")
		want := storedTask(*in)
		must(t, "Create", st.Tasks().Create(ctx, in))
		got, err := st.Tasks().Get(ctx, in.ID)
		must(t, "Get", err)
		sameTask(t, "stored task", want, *got)
		sameTask(t, "caller's task after Create", want, *in)

		bare := &model.Task{Type: model.TaskVMCreate}
		must(t, "Create bare", st.Tasks().Create(ctx, bare))
		if bare.Status != model.TaskPending || bare.Priority != model.PriorityDefault || bare.ID == "" {
			t.Fatalf("defaults not applied: %s", describe(bare))
		}
		got, err = st.Tasks().Get(ctx, bare.ID)
		must(t, "Get bare", err)
		if got.Payload != nil || got.Result != nil || got.ScheduledAt != nil {
			t.Fatalf("empty fields came back set: %s", describe(got))
		}
		sameTask(t, "bare task", *bare, *got)
	})

	t.Run("InvalidInput", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		bad := map[string]func(*model.Task){
			"payload not json": func(t *model.Task) { t.Payload = json.RawMessage(`{"a":`) },
			"result not json":  func(t *model.Task) { t.Result = json.RawMessage(`nope`) },
			"unknown priority": func(t *model.Task) { t.Priority = "urgent" },
			"unknown status":   func(t *model.Task) { t.Status = "lost" },
			"no type":          func(t *model.Task) { t.Type = "" },
			"vm id not a uuid": func(t *model.Task) { t.VMID = "vm-1" },
			"negative retries": func(t *model.Task) { t.RetryCount = -1 },
		}
		for name, mutate := range bad {
			task := fullTask("owner-a")
			mutate(task)
			wantErr(t, "Create with "+name, st.Tasks().Create(ctx, task), model.ErrInvalidInput)
			_, err := st.Tasks().Get(ctx, task.ID)
			notFound(t, "task refused for "+name, err, task.ID)
		}
		good := fullTask("owner-a")
		must(t, "Create", st.Tasks().Create(ctx, good))
		_, err := st.Tasks().Update(ctx, good.ID, func(t *model.Task) error { t.Payload = json.RawMessage("{"); return nil })
		wantErr(t, "Update with bad payload", err, model.ErrInvalidInput)
		wantErr(t, "duplicate id", st.Tasks().Create(ctx, &model.Task{ID: good.ID, Type: model.TaskVMCreate}),
			model.ErrConflict)
	})

	t.Run("Update", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		id := newID()
		_, err := st.Tasks().Get(ctx, id)
		notFound(t, "Get missing", err, id)
		_, err = st.Tasks().Update(ctx, id, func(*model.Task) error { return nil })
		notFound(t, "Update missing", err, id)

		task := fullTask("owner-a")
		task.Status, task.Result, task.CompletedAt, task.StartedAt = model.TaskPending, nil, nil, nil
		must(t, "Create", st.Tasks().Create(ctx, task))
		boom := errors.New("boom")
		_, err = st.Tasks().Update(ctx, task.ID, func(t *model.Task) error { t.Status = model.TaskFailed; return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("fn error: got %v", err)
		}
		got, err := st.Tasks().Get(ctx, task.ID)
		must(t, "Get", err)
		sameTask(t, "task after fn error", *task, *got)

		done := at(30)
		updated, err := st.Tasks().Update(ctx, task.ID, func(t *model.Task) error {
			t.Status = model.TaskCompleted
			t.Result = json.RawMessage(`{"exit_code": 3, "stdout": "x"}`)
			t.Payload = nil
			t.VMID = ""
			t.WorkerID = "worker-9"
			t.CompletedAt = &done
			return nil
		})
		must(t, "Update", err)
		want := *task
		want.Status, want.Result, want.Payload = model.TaskCompleted, json.RawMessage(`{"stdout":"x","exit_code":3}`), nil
		want.VMID, want.WorkerID, want.CompletedAt = "", "worker-9", storedPtr(&done)
		want.UpdatedAt = updated.UpdatedAt
		if !updated.UpdatedAt.After(task.UpdatedAt) {
			t.Fatalf("UpdatedAt %v not after %v", updated.UpdatedAt, task.UpdatedAt)
		}
		sameTask(t, "returned task", want, *updated)
		got, err = st.Tasks().Get(ctx, task.ID)
		must(t, "Get", err)
		sameTask(t, "stored task", want, *got)
	})

	t.Run("ListFilters", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		vm1, vm2, job1 := newID(), newID(), newID()
		type spec struct {
			owner, vm, job, target string
			status                 model.TaskStatus
		}
		specs := []spec{
			{"a", vm1, "", "", model.TaskPending}, {"a", vm1, job1, "w1", model.TaskProcessing},
			{"a", vm2, "", "w1", model.TaskPending}, {"b", vm2, job1, "w2", model.TaskCompleted},
			{"b", "", "", "", model.TaskFailed}, {"b", "", job1, "", model.TaskPending},
		}
		created := map[string]time.Time{}
		byID := map[string]spec{}
		for i, s := range specs {
			task := &model.Task{OwnerID: s.owner, Type: model.TaskVMExecute, VMID: s.vm, JobID: s.job,
				TargetWorker: s.target, Status: s.status, CreatedAt: at(i % 2)}
			must(t, "Create", st.Tasks().Create(ctx, task))
			created[task.ID], byID[task.ID] = task.CreatedAt, s
		}
		filters := []store.TaskFilter{
			{}, {OwnerID: "a"}, {VMID: vm1}, {VMID: vm2}, {JobID: job1}, {TargetWorker: "w1"},
			{TargetWorker: store.AnyWorker}, {Statuses: []model.TaskStatus{model.TaskPending}},
			{Statuses: []model.TaskStatus{model.TaskPending, model.TaskProcessing}, TargetWorker: store.AnyWorker},
			{OwnerID: "b", JobID: job1, Statuses: []model.TaskStatus{model.TaskCompleted}},
			{OwnerID: "a", TargetWorker: "w2"}, {VMID: newID()},
		}
		for _, f := range filters {
			match := map[string]time.Time{}
			for id, s := range byID {
				target := f.TargetWorker
				if target == store.AnyWorker {
					target = ""
				}
				if (f.OwnerID == "" || f.OwnerID == s.owner) && (f.VMID == "" || f.VMID == s.vm) &&
					(f.JobID == "" || f.JobID == s.job) && (f.TargetWorker == "" || target == s.target) &&
					(len(f.Statuses) == 0 || slices.Contains(f.Statuses, s.status)) {
					match[id] = created[id]
				}
			}
			ts, err := st.Tasks().List(ctx, f)
			must(t, "List", err)
			sameIDs(t, fmt.Sprintf("List(%+v)", f), newestFirst(match), taskIDs(ts))
		}
		ts, err := st.Tasks().List(ctx, store.TaskFilter{VMID: "not-a-uuid"})
		must(t, "List by a vm id that is no uuid", err)
		sameIDs(t, "List by a vm id that is no uuid", nil, taskIDs(ts))
	})

	t.Run("Pagination", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		created := map[string]time.Time{}
		// 501 tasks: enough to see both the default page (50) and the cap (500).
		for i := range 501 {
			task := &model.Task{OwnerID: "a", Type: model.TaskVMCreate, CreatedAt: at(i / 7)}
			must(t, "Create", st.Tasks().Create(ctx, task))
			created[task.ID] = task.CreatedAt
		}
		want := newestFirst(created)
		ts, err := st.Tasks().List(ctx, store.TaskFilter{})
		must(t, "List default page", err)
		sameIDs(t, "default page", want[:50], taskIDs(ts))
		ts, err = st.Tasks().List(ctx, store.TaskFilter{Page: store.Page{Limit: 10_000}})
		must(t, "List huge page", err)
		sameIDs(t, "capped page", want[:500], taskIDs(ts))
		got := pageAll(t, 37, func(p store.Page) ([]string, error) {
			ts, err := st.Tasks().List(ctx, store.TaskFilter{OwnerID: "a", Page: p})
			return taskIDs(ts), err
		})
		sameIDs(t, "pages of 37", want, got)
	})
}
