package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/vmm"
)

// TestStopVMsAtShutdown: with shutdown_vms the drained worker stops its running VMs and marks them stopped (disks
// kept); the next worker process leaves them stopped, not failed, and they can still be deleted.
func TestStopVMsAtShutdown(t *testing.T) {
	r := newRig(t)
	vm := r.createVM("stopme")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.w.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.w.StopVMs(ctx); err != nil {
		t.Fatal(err)
	}
	inst, err := r.backend.GetVMStatus(ctx, vm.ID)
	if err != nil || inst.State != vmm.StateStopped {
		t.Fatalf("backend after StopVMs: %+v, %v; want stopped", inst, err)
	}
	got, err := r.st.VMs().Get(ctx, vm.ID)
	if err != nil || got.Status != model.VMStopped || !strings.Contains(got.Error, "shutdown_vms") || got.StoppedAt == nil {
		t.Fatalf("store after StopVMs: %+v, %v; want stopped with the reason", got, err)
	}
	_ = r.backend.Close()

	r.start() // the next worker process
	if got, _ = r.st.VMs().Get(ctx, vm.ID); got.Status != model.VMStopped {
		t.Fatalf("after the restart the vm is %s, want it left stopped", got.Status)
	}
	tk, err := r.svc.DeleteVM(ctx, r.owner, vm.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("delete of the stopped vm: %s %s", tk.Status, tk.Error)
	}
	if containerExists(t, vm.ID) {
		t.Fatal("the stopped vm's container is left after its delete")
	}
}
