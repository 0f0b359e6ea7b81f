package credproxy

import (
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

// TestStoreVMs: against a real store, a VM's tokens work while its row says it runs on this worker with an
// address, and die when it is deleted, runs elsewhere, or is unknown.
func TestStoreVMs(t *testing.T) {
	ctx := context.Background()
	st := sqliteStore(t)
	mk := func(name, worker string, net *model.VMNetwork) *model.VM { return runningVM(t, st, name, worker, net) }
	here := mk("here", "w1", &model.VMNetwork{IP: "172.16.0.7"})
	elsewhere := mk("elsewhere", "w2", &model.VMNetwork{IP: "172.16.0.8"})
	nonet := mk("nonet", "w1", nil)
	src := StoreVMs(st.VMs(), "w1")
	vm, err := src.ProxyVM(ctx, here.ID)
	if err != nil || vm.OwnerID != "alice" || vm.IP.String() != "172.16.0.7" {
		t.Fatalf("running vm: %+v %v", vm, err)
	}
	for name, id := range map[string]string{"other worker": elsewhere.ID, "no network": nonet.ID, "unknown": "nope"} {
		if _, err := src.ProxyVM(ctx, id); !errors.Is(err, ErrVMGone) {
			t.Errorf("%s: %v, want ErrVMGone", name, err)
		}
	}
	if _, err := st.VMs().Update(ctx, here.ID, func(v *model.VM) error { v.Status = model.VMStopping; return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := src.ProxyVM(ctx, here.ID); !errors.Is(err, ErrVMGone) {
		t.Fatalf("a vm being deleted: %v, want ErrVMGone", err)
	}
}

func sqliteStore(t testing.TB) *sqlite.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

// runningVM stores a VM of owner alice running on worker with net.
func runningVM(t testing.TB, st *sqlite.Store, name, worker string, net *model.VMNetwork) *model.VM {
	t.Helper()
	ctx := context.Background()
	vm := &model.VM{OwnerID: "alice", Name: name, Status: model.VMPending, VCPUCount: 1, MemoryMB: 128}
	if err := st.VMs().Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	for _, s := range []model.VMStatus{model.VMCreating, model.VMRunning} {
		if _, err := st.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
			v.Status, v.WorkerID, v.Network = s, worker, net
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	return vm
}
