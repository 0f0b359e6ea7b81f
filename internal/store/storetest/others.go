package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runWorkers(t *testing.T, open Opener) {
	t.Run("Drain", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		notFound(t, "SetDrained missing", st.Workers().SetDrained(ctx, "w-missing", true), "w-missing")
		w := &model.Worker{ID: "w-d", Status: "active", StartedAt: at(0), LastHeartbeat: at(0)}
		must(t, "Upsert", st.Workers().Upsert(ctx, w))
		must(t, "SetDrained", st.Workers().SetDrained(ctx, "w-d", true))
		// A heartbeat (Upsert of a row that says nothing of draining) leaves it drained.
		w.Drained, w.LastHeartbeat = false, at(1)
		must(t, "Upsert again", st.Workers().Upsert(ctx, w))
		got, err := st.Workers().Get(ctx, "w-d")
		must(t, "Get", err)
		if !got.Drained || !got.LastHeartbeat.Equal(stored(at(1))) {
			t.Fatalf("after a heartbeat: drained=%v heartbeat=%s; want drained, heartbeat refreshed", got.Drained, got.LastHeartbeat)
		}
		must(t, "undrain", st.Workers().SetDrained(ctx, "w-d", false))
		if ws, err := st.Workers().List(ctx); err != nil || len(ws) != 1 || ws[0].Drained {
			t.Fatalf("List after undrain: %+v %v", ws, err)
		}
	})
	t.Run("Quotas", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		qs := st.Quotas()
		_, err := qs.Get(ctx, "alice")
		notFound(t, "Get missing", err, "alice")
		notFound(t, "Delete missing", qs.Delete(ctx, "alice"), "alice")
		q := &model.Quota{OwnerID: "alice", MaxVMs: 10, MaxVCPUs: 20, MaxMemoryMB: 40960}
		must(t, "Put", qs.Put(ctx, q))
		q2 := &model.Quota{OwnerID: "alice", MaxVMs: 11}
		must(t, "Put again", qs.Put(ctx, q2))
		got, err := qs.Get(ctx, "alice")
		must(t, "Get", err)
		if got.MaxVMs != 11 || got.MaxVCPUs != 0 || got.MaxMemoryMB != 0 || got.UpdatedAt.IsZero() {
			t.Fatalf("quota after the second Put: %+v", got)
		}
		wantErr(t, "Put negative", qs.Put(ctx, &model.Quota{OwnerID: "bob", MaxVMs: -1}), model.ErrInvalidInput)
		wantErr(t, "Put no owner", qs.Put(ctx, &model.Quota{MaxVMs: 1}), model.ErrInvalidInput)
		must(t, "Delete", qs.Delete(ctx, "alice"))
		_, err = qs.Get(ctx, "alice")
		notFound(t, "Get deleted", err, "alice")
	})
	t.Run("UpsertHeartbeatList", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		ws, err := st.Workers().List(ctx)
		must(t, "List empty", err)
		if len(ws) != 0 {
			t.Fatalf("new store lists %d workers", len(ws))
		}
		_, err = st.Workers().Get(ctx, "w-missing")
		notFound(t, "Get missing", err, "w-missing")
		notFound(t, "Heartbeat missing", st.Workers().Heartbeat(ctx, "w-missing", at(0)), "w-missing")
		notFound(t, "SetStatus missing", st.Workers().SetStatus(ctx, "w-missing", "stopped"), "w-missing")

		w := &model.Worker{ID: "w-b", Hostname: "host-b", Backend: "docker", Status: "active", Capacity: 8,
			Metadata: map[string]string{"kvm": "false"}, StartedAt: at(0), LastHeartbeat: at(1)}
		must(t, "Upsert", st.Workers().Upsert(ctx, w))
		want := *w
		want.StartedAt, want.LastHeartbeat = stored(at(0)), stored(at(1))
		got, err := st.Workers().Get(ctx, "w-b")
		must(t, "Get", err)
		same(t, "stored worker", want, *got)

		bare := &model.Worker{ID: "w-a"}
		must(t, "Upsert bare", st.Workers().Upsert(ctx, bare))
		if bare.Status != "active" || bare.StartedAt.IsZero() || bare.LastHeartbeat.IsZero() {
			t.Fatalf("defaults not applied: %s", describe(bare))
		}
		wantErr(t, "Upsert without id", st.Workers().Upsert(ctx, &model.Worker{}), model.ErrInvalidInput)

		// A restarted worker registers again: its row is refreshed, not duplicated.
		w2 := &model.Worker{ID: "w-b", Hostname: "host-b", Backend: "qemu", Status: "active", Capacity: 4,
			StartedAt: at(10), LastHeartbeat: at(10)}
		must(t, "Upsert again", st.Workers().Upsert(ctx, w2))
		got, err = st.Workers().Get(ctx, "w-b")
		must(t, "Get", err)
		same(t, "refreshed worker", *w2, *got)

		must(t, "Heartbeat", st.Workers().Heartbeat(ctx, "w-b", at(20)))
		must(t, "SetStatus", st.Workers().SetStatus(ctx, "w-b", "stopped"))
		got, err = st.Workers().Get(ctx, "w-b")
		must(t, "Get", err)
		if !got.LastHeartbeat.Equal(stored(at(20))) || got.Status != "stopped" {
			t.Fatalf("after heartbeat and SetStatus: %s", describe(got))
		}
		ws, err = st.Workers().List(ctx)
		must(t, "List", err)
		sameIDs(t, "workers by id", []string{"w-a", "w-b"}, idsOf(ws, func(w *model.Worker) string { return w.ID }))
		same(t, "listed worker", *got, *ws[1])
	})
}

func runAPIKeys(t *testing.T, open Opener) {
	t.Run("Lifecycle", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		n, err := st.APIKeys().Count(ctx)
		must(t, "Count", err)
		if n != 0 {
			t.Fatalf("new store counts %d keys", n)
		}
		k1 := &model.APIKey{ID: newID(), OwnerID: "owner-a", Name: "ci", Prefix: "ae_aaaaaaaa", Hash: "hash-1",
			Role: model.RoleAdmin, Scopes: []string{"vms:read", "exec"}, CreatedAt: at(0), ExpiresAt: ptr(at(100))}
		must(t, "Create", st.APIKeys().Create(ctx, k1))
		k2 := &model.APIKey{OwnerID: "owner-b", Name: "laptop", Prefix: "ae_bbbbbbbb", Hash: "hash-2"}
		must(t, "Create with defaults", st.APIKeys().Create(ctx, k2))
		if k2.ID == "" || k2.CreatedAt.IsZero() || k2.Role != model.RoleUser {
			t.Fatalf("defaults not applied: %s", describe(k2))
		}
		wantErr(t, "duplicate hash", st.APIKeys().Create(ctx,
			&model.APIKey{OwnerID: "x", Prefix: "ae_cccccccc", Hash: "hash-1"}), model.ErrConflict)
		wantErr(t, "duplicate prefix", st.APIKeys().Create(ctx,
			&model.APIKey{OwnerID: "x", Prefix: "ae_aaaaaaaa", Hash: "hash-3"}), model.ErrConflict)
		wantErr(t, "no hash", st.APIKeys().Create(ctx, &model.APIKey{OwnerID: "x", Prefix: "ae_dddddddd"}),
			model.ErrInvalidInput)
		wantErr(t, "bad role", st.APIKeys().Create(ctx, &model.APIKey{OwnerID: "x", Prefix: "ae_eeeeeeee",
			Hash: "hash-4", Role: "root"}), model.ErrInvalidInput)
		wantErr(t, "bad scope", st.APIKeys().Create(ctx, &model.APIKey{OwnerID: "x", Prefix: "ae_ffffffff",
			Hash: "hash-5", Scopes: []string{"a b"}}), model.ErrInvalidInput)

		got, err := st.APIKeys().GetByHash(ctx, "hash-1")
		must(t, "GetByHash", err)
		want := *k1
		want.CreatedAt = stored(at(0))
		want.ExpiresAt = ptr(stored(at(100)))
		same(t, "key by hash", want, *got)
		_, err = st.APIKeys().GetByHash(ctx, "hash-unknown")
		wantErr(t, "GetByHash unknown", err, model.ErrNotFound)
		got, err = st.APIKeys().Get(ctx, k1.ID)
		must(t, "Get", err)
		same(t, "key by id", want, *got)
		_, err = st.APIKeys().Get(ctx, newID())
		wantErr(t, "Get unknown", err, model.ErrNotFound)
		_, err = st.APIKeys().Get(ctx, "not-a-uuid")
		wantErr(t, "Get malformed id", err, model.ErrNotFound)

		must(t, "TouchLastUsed", st.APIKeys().TouchLastUsed(ctx, k1.ID, at(5)))
		must(t, "TouchLastUsed earlier", st.APIKeys().TouchLastUsed(ctx, k1.ID, at(4)))
		got, err = st.APIKeys().GetByHash(ctx, "hash-1")
		must(t, "GetByHash", err)
		if got.LastUsedAt == nil || !got.LastUsedAt.Equal(stored(at(5))) {
			t.Fatalf("last used %v, want %v (a late, older touch must not move it back)", got.LastUsedAt, stored(at(5)))
		}

		must(t, "Revoke", st.APIKeys().Revoke(ctx, k1.ID, at(6)))
		_, err = st.APIKeys().GetByHash(ctx, "hash-1")
		wantErr(t, "GetByHash revoked", err, model.ErrNotFound)
		must(t, "Revoke again", st.APIKeys().Revoke(ctx, k1.ID, at(7)))
		got, err = st.APIKeys().Get(ctx, k1.ID)
		must(t, "Get revoked", err)
		if got.RevokedAt == nil {
			t.Fatal("Get of a revoked key has no revoked_at")
		}

		id := newID()
		notFound(t, "Revoke missing", st.APIKeys().Revoke(ctx, id, at(0)), id)
		notFound(t, "TouchLastUsed missing", st.APIKeys().TouchLastUsed(ctx, id, at(0)), id)

		keys, err := st.APIKeys().List(ctx)
		must(t, "List", err)
		sameIDs(t, "keys newest first", []string{k2.ID, k1.ID}, idsOf(keys, func(k *model.APIKey) string { return k.ID }))
		if keys[1].RevokedAt == nil || !keys[1].RevokedAt.Equal(stored(at(6))) {
			t.Fatalf("revoked at %v, want the first revocation %v", keys[1].RevokedAt, stored(at(6)))
		}
		if keys[1].Hash != "hash-1" {
			t.Fatalf("listed key has hash %q", keys[1].Hash)
		}
		n, err = st.APIKeys().Count(ctx)
		must(t, "Count", err)
		if n != 2 {
			t.Fatalf("Count = %d, want 2 (revoked keys count)", n)
		}
	})
}

func runConcurrency(t *testing.T, open Opener) {
	t.Run("NoLostUpdates", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		task := &model.Task{Type: model.TaskVMCreate}
		must(t, "Create", st.Tasks().Create(ctx, task))
		const n = 20
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() {
				_, err := st.Tasks().Update(ctx, task.ID, func(t *model.Task) error { t.RetryCount++; return nil })
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			must(t, "concurrent Update", err)
		}
		got, err := st.Tasks().Get(ctx, task.ID)
		must(t, "Get", err)
		if got.RetryCount != n {
			t.Fatalf("RetryCount = %d after %d concurrent increments: updates were lost", got.RetryCount, n)
		}
	})

	t.Run("OneNameOneWinner", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		const n = 8
		var wg sync.WaitGroup
		errs := make(chan error, n)
		for range n {
			wg.Go(func() { errs <- st.VMs().Create(ctx, &model.VM{OwnerID: "owner-a", Name: "contested"}) })
		}
		wg.Wait()
		close(errs)
		ok, conflicts := 0, 0
		for err := range errs {
			switch {
			case err == nil:
				ok++
			case errors.Is(err, model.ErrConflict):
				conflicts++
			default:
				t.Fatalf("concurrent Create: %v", err)
			}
		}
		if ok != 1 || conflicts != n-1 {
			t.Fatalf("%d creates succeeded and %d conflicted, want 1 and %d", ok, conflicts, n-1)
		}
	})

	t.Run("ManyWriters", func(t *testing.T) {
		// Writers and readers from many goroutines at once must neither fail (SQLITE_BUSY) nor lose rows.
		st := open(t)
		ctx := t.Context()
		const goroutines, each = 16, 10
		var wg sync.WaitGroup
		errs := make(chan error, goroutines*each*3)
		for g := range goroutines {
			wg.Go(func() {
				for i := range each {
					vm := &model.VM{OwnerID: "owner-a", Name: fmt.Sprintf("vm-%d-%d", g, i)}
					if err := st.VMs().Create(ctx, vm); err != nil {
						errs <- fmt.Errorf("create vm: %w", err)
						continue
					}
					if _, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
						v.Status = model.VMCreating
						return nil
					}); err != nil {
						errs <- fmt.Errorf("update vm: %w", err)
					}
					if _, err := st.VMs().List(ctx, store.VMFilter{OwnerID: "owner-a", Page: store.Page{Limit: 5}}); err != nil {
						errs <- fmt.Errorf("list vms: %w", err)
					}
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		vms, err := st.VMs().List(ctx, store.VMFilter{Statuses: []model.VMStatus{model.VMCreating}, Page: store.Page{Limit: 500}})
		must(t, "List", err)
		if len(vms) != goroutines*each {
			t.Fatalf("%d vms in creating, want %d", len(vms), goroutines*each)
		}
	})
}

// BenchmarkTaskUpdate measures Tasks().Update, the hot path of the queue mirror (every task's state changes go
// through it), on one row from one goroutine and from GOMAXPROCS goroutines updating their own rows.
func BenchmarkTaskUpdate(b *testing.B, st store.Store) {
	ctx := b.Context()
	b.Run("serial", func(b *testing.B) {
		task := &model.Task{Type: model.TaskVMExecute, Payload: []byte(`{"vm_id":"x","command":"echo"}`)}
		if err := st.Tasks().Create(ctx, task); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if _, err := st.Tasks().Update(ctx, task.ID, func(t *model.Task) error {
				t.RetryCount++
				t.Status = model.TaskProcessing
				return nil
			}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			task := &model.Task{Type: model.TaskVMExecute}
			if err := st.Tasks().Create(ctx, task); err != nil {
				b.Error(err)
				return
			}
			for pb.Next() {
				if _, err := st.Tasks().Update(ctx, task.ID, func(t *model.Task) error {
					t.RetryCount++
					return nil
				}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkCreateTask measures what the API does before it acknowledges a call with 202: a task row written
// (committed, so durable as far as the store's settings go), from one goroutine and from GOMAXPROCS goroutines.
func BenchmarkCreateTask(b *testing.B, st store.Store) {
	ctx := b.Context()
	create := func() error {
		return st.Tasks().Create(ctx, &model.Task{Type: model.TaskVMExecute, Payload: []byte(`{"vm_id":"x","execution_id":"y"}`)})
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if err := create(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := create(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}
