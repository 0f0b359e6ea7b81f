package storetest

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

var allVMStatuses = []model.VMStatus{model.VMPending, model.VMCreating, model.VMRunning, model.VMPaused, model.VMStopping,
	model.VMStopped, model.VMDeleted, model.VMFailed}

// fullVM has every field set, times with nanoseconds in a non-UTC zone.
func fullVM(owner, name string) *model.VM {
	return &model.VM{
		ID:         newID(),
		OwnerID:    owner,
		Name:       name,
		Status:     model.VMRunning,
		VCPUCount:  2,
		MemoryMB:   1024,
		Image:      "ubuntu:24.04",
		KernelPath: "/var/lib/aetherium/vmlinux",
		RootfsPath: "/var/lib/aetherium/rootfs.ext4",
		SocketPath: "/run/aetherium/vm.sock",
		WorkerID:   "worker-1",
		Error:      "previous attempt: boom",
		Metadata:   map[string]string{"repo": "github.com/x/y", "ünïcode": "✓"},
		Network: &model.VMNetwork{
			Egress: model.EgressPolicy{AllowCIDRs: []string{"198.51.100.0/24"}, DenyCIDRs: []string{"0.0.0.0/0"},
				AllowDomains: []string{"github.com"}, DenyDomains: []string{"evil.example"}},
			IP: "172.16.0.2", MAC: "02:ae:ac:10:00:02", Gateway: "172.16.0.1",
		},
		Tools:          []string{"node@24", "jq"},
		InstalledTools: map[string]string{"node": "24.11.1", "jq": "1.6-2.1"},
		CreatedAt:      at(0),
		UpdatedAt:      at(1),
		StartedAt:      ptr(at(2)),
		StoppedAt:      ptr(at(3)),
		Lifetime: &model.VMLifetime{TimeoutSeconds: 3600, ExpiresAt: ptr(at(60)), IdleTimeoutSeconds: 300,
			OnIdle: model.OnIdleDelete, LastActivityAt: ptr(at(4))},
	}
}

func storedVM(v model.VM) model.VM {
	v.CreatedAt, v.UpdatedAt = stored(v.CreatedAt), stored(v.UpdatedAt)
	v.StartedAt, v.StoppedAt = storedPtr(v.StartedAt), storedPtr(v.StoppedAt)
	if l := v.Lifetime; l != nil {
		c := *l
		c.ExpiresAt, c.LastActivityAt = storedPtr(l.ExpiresAt), storedPtr(l.LastActivityAt)
		v.Lifetime = &c
	}
	return v
}

func runVMs(t *testing.T, open Opener) {
	t.Run("CreateGet", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		in := fullVM("owner-a", "vm-1")
		want := storedVM(*in)
		must(t, "Create", st.VMs().Create(ctx, in))
		got, err := st.VMs().Get(ctx, in.ID)
		must(t, "Get", err)
		same(t, "stored vm", want, *got)
		same(t, "caller's vm after Create", want, *in)
	})

	t.Run("Defaults", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		before := time.Now().Add(-time.Second)
		in := &model.VM{OwnerID: "owner-a", Name: "bare", Metadata: map[string]string{}}
		must(t, "Create", st.VMs().Create(ctx, in))
		if _, err := uuid.Parse(in.ID); err != nil {
			t.Fatalf("Create gave id %q: %v", in.ID, err)
		}
		if in.Status != model.VMPending {
			t.Fatalf("default status %q, want pending", in.Status)
		}
		if in.CreatedAt.Before(before) || in.UpdatedAt.Before(before) {
			t.Fatalf("Create did not set times: %v %v", in.CreatedAt, in.UpdatedAt)
		}
		got, err := st.VMs().Get(ctx, in.ID)
		must(t, "Get", err)
		if got.Metadata != nil {
			t.Fatalf("empty metadata came back as %#v, want nil", got.Metadata)
		}
		same(t, "stored vm", *in, *got)
	})

	t.Run("IDForms", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		in := fullVM("owner-a", "upper")
		in.ID = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
		must(t, "Create with upper-case id", st.VMs().Create(ctx, in))
		if in.ID != "6f9619ff-8b86-d011-b42d-00c04fc964ff" {
			t.Fatalf("id not canonicalised: %q", in.ID)
		}
		for _, id := range []string{in.ID, "6F9619FF-8B86-D011-B42D-00C04FC964FF"} {
			got, err := st.VMs().Get(ctx, id)
			must(t, "Get "+id, err)
			if got.ID != in.ID {
				t.Fatalf("Get(%q).ID = %q", id, got.ID)
			}
		}
		bad := fullVM("owner-a", "bad-id")
		bad.ID = "vm-1"
		wantErr(t, "Create with a non-uuid id", st.VMs().Create(ctx, bad), model.ErrInvalidInput)
	})

	t.Run("NotFound", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		id := newID()
		_, err := st.VMs().Get(ctx, id)
		notFound(t, "Get missing", err, id)
		_, err = st.VMs().Get(ctx, "no-such-vm")
		notFound(t, "Get non-uuid", err, "no-such-vm")
		called := false
		_, err = st.VMs().Update(ctx, id, func(*model.VM) error { called = true; return nil })
		notFound(t, "Update missing", err, id)
		if called {
			t.Fatal("Update called fn for a missing vm")
		}
	})

	t.Run("NameConflict", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		first := fullVM("owner-a", "dup")
		must(t, "Create", st.VMs().Create(ctx, first))
		wantErr(t, "same owner, same name", st.VMs().Create(ctx, fullVM("owner-a", "dup")), model.ErrConflict)
		must(t, "other owner, same name", st.VMs().Create(ctx, fullVM("owner-b", "dup")))
		again := fullVM("owner-c", "other")
		again.ID = first.ID
		wantErr(t, "same id", st.VMs().Create(ctx, again), model.ErrConflict)

		second := fullVM("owner-a", "second")
		must(t, "Create second", st.VMs().Create(ctx, second))
		_, err := st.VMs().Update(ctx, second.ID, func(vm *model.VM) error { vm.Name = "dup"; vm.Error = "x"; return nil })
		wantErr(t, "rename onto a taken name", err, model.ErrConflict)
		got, err := st.VMs().Get(ctx, second.ID)
		must(t, "Get", err)
		same(t, "vm after failed rename", *second, *got)
	})

	t.Run("NameReuseAfterDelete", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		for i := range 3 {
			vm := &model.VM{OwnerID: "owner-a", Name: "reused"}
			must(t, fmt.Sprintf("Create #%d", i), st.VMs().Create(ctx, vm))
			_, err := st.VMs().Update(ctx, vm.ID, func(vm *model.VM) error { vm.Status = model.VMDeleted; return nil })
			must(t, "delete", err)
		}
		live := &model.VM{OwnerID: "owner-a", Name: "reused"}
		must(t, "Create live", st.VMs().Create(ctx, live))
		wantErr(t, "second live", st.VMs().Create(ctx, &model.VM{OwnerID: "owner-a", Name: "reused"}), model.ErrConflict)
		vms, err := st.VMs().List(ctx, store.VMFilter{OwnerID: "owner-a"})
		must(t, "List", err)
		if len(vms) != 4 {
			t.Fatalf("%d vms, want 4 (3 deleted, 1 live)", len(vms))
		}
	})

	t.Run("Transitions", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		for _, from := range allVMStatuses {
			for _, to := range append(slices.Clone(allVMStatuses), "bogus") {
				vm := fullVM("owner-a", fmt.Sprintf("%s-to-%s", from, to))
				vm.Status = from
				must(t, "Create", st.VMs().Create(ctx, vm))
				got, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
					v.Status = to
					v.Error = "changed"
					return nil
				})
				if from.CanTransition(to) && to.Valid() {
					if err != nil {
						t.Fatalf("%s -> %s: %v", from, to, err)
					}
					if got.Status != to || got.Error != "changed" {
						t.Fatalf("%s -> %s: returned %s", from, to, describe(got))
					}
					read, err := st.VMs().Get(ctx, vm.ID)
					must(t, "Get", err)
					same(t, fmt.Sprintf("%s -> %s: stored", from, to), *got, *read)
					continue
				}
				wantErr(t, fmt.Sprintf("%s -> %s", from, to), err, model.ErrInvalidTransition)
				read, err := st.VMs().Get(ctx, vm.ID)
				must(t, "Get", err)
				same(t, fmt.Sprintf("%s -> %s: vm after rejected transition", from, to), *vm, *read)
			}
		}
	})

	t.Run("Update", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		vm := fullVM("owner-a", "upd")
		vm.UpdatedAt = time.Now().Add(-time.Hour)
		must(t, "Create", st.VMs().Create(ctx, vm))

		boom := errors.New("boom")
		_, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Name = "renamed"; return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("fn error: got %v, want boom", err)
		}
		got, err := st.VMs().Get(ctx, vm.ID)
		must(t, "Get", err)
		same(t, "vm after fn error", *vm, *got)

		_, err = st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.ID = newID(); return nil })
		wantErr(t, "changing the id", err, model.ErrInvalidInput)

		stopped := at(10)
		updated, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
			v.Status = model.VMStopping
			v.WorkerID = "worker-2"
			v.Metadata = map[string]string{"k": "v"}
			v.StoppedAt = &stopped
			v.StartedAt = nil
			v.CreatedAt = at(-1000) // creation time is immutable: ignored
			return nil
		})
		must(t, "Update", err)
		if !updated.UpdatedAt.After(stored(vm.UpdatedAt)) {
			t.Fatalf("UpdatedAt %v not moved past %v", updated.UpdatedAt, vm.UpdatedAt)
		}
		want := *vm
		want.Status, want.WorkerID, want.Metadata = model.VMStopping, "worker-2", map[string]string{"k": "v"}
		want.StoppedAt, want.StartedAt = storedPtr(&stopped), nil
		want.UpdatedAt = updated.UpdatedAt
		same(t, "returned vm", want, *updated)
		got, err = st.VMs().Get(ctx, vm.ID)
		must(t, "Get", err)
		same(t, "stored vm", want, *got)

		_, err = st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Metadata = nil; return nil })
		must(t, "clear metadata", err)
		got, err = st.VMs().Get(ctx, vm.ID)
		must(t, "Get", err)
		if got.Metadata != nil {
			t.Fatalf("cleared metadata came back %#v", got.Metadata)
		}

		// The network address and installed tools are recorded after creation, by the worker.
		_, err = st.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
			v.Network = &model.VMNetwork{IP: "172.16.0.9", MAC: "02:ae:ac:10:00:09", Gateway: "172.16.0.1"}
			v.InstalledTools = map[string]string{"git": "2.39.5"}
			return nil
		})
		must(t, "set network and tools", err)
		got, err = st.VMs().Get(ctx, vm.ID)
		must(t, "Get", err)
		if got.Network == nil || got.Network.IP != "172.16.0.9" || got.InstalledTools["git"] != "2.39.5" {
			t.Fatalf("network and tools after update: %+v %+v", got.Network, got.InstalledTools)
		}
	})

	t.Run("ListFilters", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		type spec struct {
			owner, worker string
			status        model.VMStatus
		}
		specs := []spec{
			{"a", "w1", model.VMRunning}, {"a", "w1", model.VMStopped}, {"a", "w2", model.VMRunning},
			{"b", "w1", model.VMRunning}, {"b", "w2", model.VMFailed}, {"b", "", model.VMPending},
			{"a", "", model.VMDeleted},
		}
		created := map[string]time.Time{}
		byID := map[string]spec{}
		for i, s := range specs {
			vm := &model.VM{OwnerID: s.owner, Name: fmt.Sprintf("vm-%d", i), WorkerID: s.worker, Status: s.status,
				CreatedAt: at(i % 3)}
			must(t, "Create", st.VMs().Create(ctx, vm))
			created[vm.ID] = vm.CreatedAt
			byID[vm.ID] = s
		}
		filters := []store.VMFilter{
			{}, {OwnerID: "a"}, {OwnerID: "b"}, {OwnerID: "nobody"}, {WorkerID: "w1"}, {WorkerID: "w2"},
			{Statuses: []model.VMStatus{model.VMRunning}},
			{Statuses: []model.VMStatus{model.VMRunning, model.VMFailed}},
			{OwnerID: "a", WorkerID: "w1", Statuses: []model.VMStatus{model.VMRunning}},
			{OwnerID: "b", Statuses: []model.VMStatus{model.VMDeleted}},
		}
		for _, f := range filters {
			match := map[string]time.Time{}
			for id, s := range byID {
				if (f.OwnerID == "" || f.OwnerID == s.owner) && (f.WorkerID == "" || f.WorkerID == s.worker) &&
					(len(f.Statuses) == 0 || slices.Contains(f.Statuses, s.status)) {
					match[id] = created[id]
				}
			}
			vms, err := st.VMs().List(ctx, f)
			must(t, "List", err)
			sameIDs(t, fmt.Sprintf("List(%+v)", f), newestFirst(match), idsOf(vms, func(v *model.VM) string { return v.ID }))
		}
	})

	t.Run("Pagination", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		created := map[string]time.Time{}
		for i := range 23 {
			// Groups of equal creation times make the id the tie-breaker.
			vm := &model.VM{OwnerID: "a", Name: fmt.Sprintf("vm-%02d", i), CreatedAt: at(i / 4)}
			must(t, "Create", st.VMs().Create(ctx, vm))
			created[vm.ID] = vm.CreatedAt
		}
		must(t, "Create other owner", st.VMs().Create(ctx, &model.VM{OwnerID: "b", Name: "x", CreatedAt: at(2)}))
		for _, n := range []int{1, 5, 23, 50} {
			got := pageAll(t, n, func(p store.Page) ([]string, error) {
				vms, err := st.VMs().List(ctx, store.VMFilter{OwnerID: "a", Page: p})
				return idsOf(vms, func(v *model.VM) string { return v.ID }), err
			})
			sameIDs(t, fmt.Sprintf("pages of %d", n), newestFirst(created), got)
		}
		_, err := st.VMs().List(ctx, store.VMFilter{Page: store.Page{After: newID()}})
		wantErr(t, "cursor naming no vm", err, model.ErrInvalidInput)
		_, err = st.VMs().List(ctx, store.VMFilter{Page: store.Page{After: "garbage"}})
		wantErr(t, "cursor that is no id", err, model.ErrInvalidInput)
	})
}
