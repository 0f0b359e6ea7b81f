package worker_test

import (
	"context"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
)

// TestTwoInstallationsWithOneWorkerIDKeepTheirVMs is issue 10's reproduction: two installations on one engine
// and host (two stores, two data directories) run workers with the same id (the host name, by default). A worker
// removes at start the containers of its id that its store does not know; it must only ever see its own.
func TestTwoInstallationsWithOneWorkerIDKeepTheirVMs(t *testing.T) {
	one := newRig(t)
	two := newRigAs(t, one.id, nil)
	vms := map[*rig][]*model.VM{}
	for _, r := range []*rig{one, two} {
		vms[r] = append(vms[r], r.createVM("a"), r.createVM("b"))
	}
	ctx := context.Background()
	for round := range 2 {
		for _, r := range []*rig{one, two} {
			r.stop()
			r.start() // reconciles: removes orphans of its worker id
		}
		for _, r := range []*rig{one, two} {
			for _, vm := range vms[r] {
				if !containerExists(t, vm.ID) {
					t.Fatalf("round %d: the container of vm %s was removed by a restart", round, vm.ID)
				}
				got, err := r.st.VMs().Get(ctx, vm.ID)
				if err != nil || got.Status != model.VMRunning {
					t.Fatalf("round %d: vm %s: %+v, %v", round, vm.ID, got, err)
				}
				_, tk := r.execute(ctx, vm.ID, "true")
				if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
					t.Fatalf("round %d: exec on vm %s: %s %s", round, vm.ID, tk.Status, tk.Error)
				}
			}
		}
	}
}
