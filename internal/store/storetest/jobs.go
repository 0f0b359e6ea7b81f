package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func fullJob(owner string) *model.Job {
	return &model.Job{
		ID:      newID(),
		OwnerID: owner,
		VMID:    newID(),
		VMSpec: &model.VMSpec{Name: "job-vm", VCPUs: 2, MemoryMB: 512, Image: "alpine",
			Metadata: map[string]string{"from": "job"}},
		Commands: []model.JobCommand{
			{Command: "git", Args: []string{"clone", "https://example.invalid/r.git"}, Env: map[string]string{"A": "1"},
				WorkingDir: "/src", TimeoutSeconds: 60},
			{Command: "make"},
		},
		StopOnError:   true,
		DeleteVMAfter: true,
		Status:        model.JobRunning,
		TaskID:        newID(),
		Error:         "",
		CreatedAt:     at(0),
		UpdatedAt:     at(1),
		StartedAt:     ptr(at(2)),
	}
}

func storedJob(j model.Job) model.Job {
	j.CreatedAt, j.UpdatedAt = stored(j.CreatedAt), stored(j.UpdatedAt)
	j.StartedAt, j.CompletedAt = storedPtr(j.StartedAt), storedPtr(j.CompletedAt)
	return j
}

func runJobs(t *testing.T, open Opener) {
	t.Run("CreateGet", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		in := fullJob("owner-a")
		want := storedJob(*in)
		must(t, "Create", st.Jobs().Create(ctx, in))
		got, err := st.Jobs().Get(ctx, in.ID)
		must(t, "Get", err)
		same(t, "stored job", want, *got)
		same(t, "caller's job after Create", want, *in)

		// Empty nested collections come back nil; no spec and no commands come back nil.
		bare := &model.Job{OwnerID: "owner-a", Commands: []model.JobCommand{{Command: "true", Args: []string{},
			Env: map[string]string{}}}}
		must(t, "Create bare", st.Jobs().Create(ctx, bare))
		got, err = st.Jobs().Get(ctx, bare.ID)
		must(t, "Get bare", err)
		want = model.Job{ID: bare.ID, OwnerID: "owner-a", Commands: []model.JobCommand{{Command: "true"}},
			Status: model.JobPending, CreatedAt: bare.CreatedAt, UpdatedAt: bare.UpdatedAt}
		same(t, "bare job", want, *got)
		same(t, "caller's bare job", want, *bare)

		none := &model.Job{OwnerID: "owner-a", Commands: []model.JobCommand{}}
		must(t, "Create without commands", st.Jobs().Create(ctx, none))
		got, err = st.Jobs().Get(ctx, none.ID)
		must(t, "Get", err)
		if got.Commands != nil || got.VMSpec != nil {
			t.Fatalf("empty commands/spec came back %s", describe(got))
		}
	})

	t.Run("Update", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		id := newID()
		_, err := st.Jobs().Get(ctx, id)
		notFound(t, "Get missing", err, id)
		_, err = st.Jobs().Update(ctx, id, func(*model.Job) error { return nil })
		notFound(t, "Update missing", err, id)

		job := fullJob("owner-a")
		must(t, "Create", st.Jobs().Create(ctx, job))
		boom := errors.New("boom")
		_, err = st.Jobs().Update(ctx, job.ID, func(j *model.Job) error { j.Status = model.JobFailed; return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("fn error: got %v", err)
		}
		got, err := st.Jobs().Get(ctx, job.ID)
		must(t, "Get", err)
		same(t, "job after fn error", *job, *got)

		done := at(9)
		updated, err := st.Jobs().Update(ctx, job.ID, func(j *model.Job) error {
			j.Status, j.Error, j.CompletedAt = model.JobFailed, "command 2 failed", &done
			j.VMSpec = nil
			j.Commands = j.Commands[:1]
			return nil
		})
		must(t, "Update", err)
		want := *job
		want.Status, want.Error, want.CompletedAt = model.JobFailed, "command 2 failed", storedPtr(&done)
		want.VMSpec, want.Commands = nil, job.Commands[:1]
		want.UpdatedAt = updated.UpdatedAt
		if !updated.UpdatedAt.After(job.UpdatedAt) {
			t.Fatalf("UpdatedAt %v not after %v", updated.UpdatedAt, job.UpdatedAt)
		}
		same(t, "returned job", want, *updated)
		got, err = st.Jobs().Get(ctx, job.ID)
		must(t, "Get", err)
		same(t, "stored job", want, *got)
	})

	t.Run("List", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		all := map[string]time.Time{}
		ownerA := map[string]time.Time{}
		for i := range 13 {
			owner := "a"
			if i%3 == 0 {
				owner = "b"
			}
			j := &model.Job{OwnerID: owner, CreatedAt: at(i / 2)}
			must(t, "Create", st.Jobs().Create(ctx, j))
			all[j.ID] = j.CreatedAt
			if owner == "a" {
				ownerA[j.ID] = j.CreatedAt
			}
		}
		ids := func(owner string) func(p store.Page) ([]string, error) {
			return func(p store.Page) ([]string, error) {
				js, err := st.Jobs().List(ctx, owner, p)
				return idsOf(js, func(j *model.Job) string { return j.ID }), err
			}
		}
		for _, n := range []int{1, 4, 100} {
			sameIDs(t, fmt.Sprintf("all jobs, pages of %d", n), newestFirst(all), pageAll(t, n, ids("")))
			sameIDs(t, fmt.Sprintf("owner a, pages of %d", n), newestFirst(ownerA), pageAll(t, n, ids("a")))
		}
		js, err := st.Jobs().List(ctx, "nobody", store.Page{})
		must(t, "List", err)
		sameIDs(t, "unknown owner", nil, idsOf(js, func(j *model.Job) string { return j.ID }))
	})
}
