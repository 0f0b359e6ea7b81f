package worker

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/vmm"
)

// untouchable is a backend any call of which fails the test: the code under test must not reach the backend.
type untouchable struct {
	vmm.Orchestrator // nil: every method not overridden panics
	t                *testing.T
}

func (u untouchable) Name() string { return "untouchable" }
func (u untouchable) DeleteVM(context.Context, string) error {
	u.t.Error("DeleteVM called")
	return nil
}

// TestSettleSkipsAVMItsTaskFinishedMeanwhile: the resync pass read a VM as creating; by the time it finds no active
// task, the task has made it running and ended. The VM must be left alone (found by TestMicroVMProduction: the
// pass deleted a guest that had just booted).
func TestSettleSkipsAVMItsTaskFinishedMeanwhile(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{ID: "w1", Store: st, Queue: embedded.New(st.Tasks(), nil, queue.Options{WorkerID: "w1"}, nil),
		Backend: untouchable{t: t}})
	if err != nil {
		t.Fatal(err)
	}
	vm := &model.VM{ID: uuid.NewString(), OwnerID: "o", Name: "booted", Status: model.VMPending, VCPUCount: 1, MemoryMB: 256}
	if err := st.VMs().Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	stale, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status, v.WorkerID = model.VMCreating, "w1"; return nil })
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile the create task finished it (and its task ended: none is active).
	if _, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status = model.VMRunning; return nil }); err != nil {
		t.Fatal(err)
	}
	w.rs.mu.Lock()
	err = w.reconcileInFlight(ctx, stale, false)
	w.rs.mu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := st.VMs().Get(ctx, vm.ID); got.Status != model.VMRunning {
		t.Fatalf("vm is %s (%s); want left running", got.Status, got.Error)
	}
}
