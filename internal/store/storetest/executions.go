package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func fullExecution(owner, vmID string) *model.Execution {
	return &model.Execution{
		ID:              newID(),
		OwnerID:         owner,
		VMID:            vmID,
		JobID:           newID(),
		TaskID:          newID(),
		Seq:             2,
		Status:          model.ExecutionCompleted,
		Command:         "sh",
		Args:            []string{"-c", "printf 'ok\\0'"},
		Env:             map[string]string{"HOME": "/root", "LANG": "C.UTF-8"},
		WorkingDir:      "/work",
		User:            "1000:1000",
		TimeoutSeconds:  30,
		ExitCode:        ptr(0), // a zero exit code is a result, not an absent one
		Stdout:          binary,
		Stderr:          "warning: ünïcode\n",
		StdoutTruncated: true,
		StderrTruncated: false,
		TimedOut:        true,
		Error:           "",
		WorkerID:        "worker-1",
		CreatedAt:       at(0),
		StartedAt:       ptr(at(1)),
		CompletedAt:     ptr(at(2)),
		DurationMS:      ptr(int64(60_000)),
		PeakMemoryKB:    ptr(int64(123_456)),
	}
}

func storedExecution(e model.Execution) model.Execution {
	e.CreatedAt = stored(e.CreatedAt)
	e.StartedAt, e.CompletedAt = storedPtr(e.StartedAt), storedPtr(e.CompletedAt)
	return e
}

func executionIDs(es []*model.Execution) []string {
	return idsOf(es, func(e *model.Execution) string { return e.ID })
}

func runExecutions(t *testing.T, open Opener) {
	t.Run("CreateGet", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		in := fullExecution("owner-a", newID())
		want := storedExecution(*in)
		must(t, "Create", st.Executions().Create(ctx, in))
		got, err := st.Executions().Get(ctx, in.ID)
		must(t, "Get", err)
		same(t, "stored execution", want, *got)
		same(t, "caller's execution after Create", want, *in)

		bare := &model.Execution{OwnerID: "owner-a", VMID: newID(), Command: "true", Args: []string{},
			Env: map[string]string{}}
		must(t, "Create bare", st.Executions().Create(ctx, bare))
		got, err = st.Executions().Get(ctx, bare.ID)
		must(t, "Get bare", err)
		if got.Status != model.ExecutionPending || got.Args != nil || got.Env != nil || got.ExitCode != nil ||
			got.DurationMS != nil || got.Stdout != "" {
			t.Fatalf("bare execution came back %s", describe(got))
		}
		same(t, "bare execution", *bare, *got)

		wantErr(t, "Create without a vm", st.Executions().Create(ctx, &model.Execution{Command: "true"}),
			model.ErrInvalidInput)
	})

	t.Run("Update", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		id := newID()
		_, err := st.Executions().Get(ctx, id)
		notFound(t, "Get missing", err, id)
		_, err = st.Executions().Update(ctx, id, func(*model.Execution) error { return nil })
		notFound(t, "Update missing", err, id)

		e := &model.Execution{OwnerID: "owner-a", VMID: newID(), Command: "make", Status: model.ExecutionRunning,
			StartedAt: ptr(at(0))}
		must(t, "Create", st.Executions().Create(ctx, e))
		boom := errors.New("boom")
		_, err = st.Executions().Update(ctx, e.ID, func(e *model.Execution) error { e.Stdout = "x"; return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("fn error: got %v", err)
		}
		got, err := st.Executions().Get(ctx, e.ID)
		must(t, "Get", err)
		same(t, "execution after fn error", *e, *got)

		updated, err := st.Executions().Update(ctx, e.ID, func(x *model.Execution) error {
			x.Status = model.ExecutionCompleted
			x.ExitCode = ptr(2)
			x.Stdout, x.Stderr = binary, "make: *** [all] Error 2\n"
			x.StderrTruncated = true
			x.CompletedAt = ptr(at(1))
			x.DurationMS = ptr(int64(60_000))
			return nil
		})
		must(t, "Update", err)
		want := *e
		want.Status, want.ExitCode, want.Stdout, want.Stderr = model.ExecutionCompleted, ptr(2), binary, "make: *** [all] Error 2\n"
		want.StderrTruncated, want.CompletedAt, want.DurationMS = true, storedPtr(ptr(at(1))), ptr(int64(60_000))
		same(t, "returned execution", want, *updated)
		got, err = st.Executions().Get(ctx, e.ID)
		must(t, "Get", err)
		same(t, "stored execution", want, *got)
	})

	t.Run("List", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		vm1, vm2, job := newID(), newID(), newID()
		byVM1, byOwnerB, all := map[string]time.Time{}, map[string]time.Time{}, map[string]time.Time{}
		for i := range 9 {
			vm, owner := vm1, "a"
			if i%3 == 0 {
				vm, owner = vm2, "b"
			}
			e := &model.Execution{OwnerID: owner, VMID: vm, Command: fmt.Sprint(i), CreatedAt: at(i / 2)}
			must(t, "Create", st.Executions().Create(ctx, e))
			all[e.ID] = e.CreatedAt
			if vm == vm1 {
				byVM1[e.ID] = e.CreatedAt
			}
			if owner == "b" {
				byOwnerB[e.ID] = e.CreatedAt
			}
		}
		// A job's executions come in command order. They are created out of order, and one command has two
		// executions (a retried step) which then go in creation order.
		seqs := []int{3, 0, 2, 1, 4, 2}
		var jobExecs []*model.Execution
		for i, seq := range seqs {
			e := &model.Execution{OwnerID: "a", VMID: vm1, JobID: job, Seq: seq, Command: "step", CreatedAt: at(100 - i)}
			must(t, "Create", st.Executions().Create(ctx, e))
			jobExecs = append(jobExecs, e)
			all[e.ID] = e.CreatedAt
			byVM1[e.ID] = e.CreatedAt
		}
		wantJob := []string{jobExecs[1].ID, jobExecs[3].ID, jobExecs[5].ID, jobExecs[2].ID, jobExecs[0].ID,
			jobExecs[4].ID} // seq 0, 1, 2 (created at 95), 2 (created at 98), 3, 4
		list := func(f store.ExecutionFilter) func(p store.Page) ([]string, error) {
			return func(p store.Page) ([]string, error) {
				f.Page = p
				es, err := st.Executions().List(ctx, f)
				return executionIDs(es), err
			}
		}
		for _, n := range []int{1, 4, 50} {
			sameIDs(t, fmt.Sprintf("all, pages of %d", n), newestFirst(all), pageAll(t, n, list(store.ExecutionFilter{})))
			sameIDs(t, fmt.Sprintf("vm1, pages of %d", n), newestFirst(byVM1), pageAll(t, n, list(store.ExecutionFilter{VMID: vm1})))
			sameIDs(t, fmt.Sprintf("owner b, pages of %d", n), newestFirst(byOwnerB), pageAll(t, n, list(store.ExecutionFilter{OwnerID: "b"})))
			sameIDs(t, fmt.Sprintf("job, pages of %d", n), wantJob, pageAll(t, n, list(store.ExecutionFilter{JobID: job})))
		}
		es, err := st.Executions().List(ctx, store.ExecutionFilter{JobID: job, VMID: vm2})
		must(t, "List", err)
		sameIDs(t, "job on the wrong vm", nil, executionIDs(es))
		_, err = st.Executions().List(ctx, store.ExecutionFilter{JobID: job, Page: store.Page{After: newID()}})
		wantErr(t, "job list with a cursor naming no execution", err, model.ErrInvalidInput)
	})
}
