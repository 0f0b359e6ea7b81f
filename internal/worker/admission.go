package worker

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/placement"
	"github.com/aetherium/aetherium/internal/queue"
)

// errNoRoom is why a create waits: no worker has room for its VM now.
var errNoRoom = errors.New("no worker has room for the vm")

// admitWait bounds how long a VM waits for room before its create fails; admitRetry is how often it looks again.
const (
	admitWait  = 10 * time.Minute
	admitRetry = 15 * time.Second
)

// admit decides whether a pending VM that a create brought to this worker may be made here: it fits beside what
// this worker's VMs hold (the gateway's placement may be a moment old, or another gateway's placements not in it).
// It returns unlock, to be called once the VM is marked creating on this worker (so the next admission counts it),
// or an error: a reroute to a worker it fits on, a deferral while none has room, or, after admitWait, a permanent
// failure. A worker that advertises no capacity admits everything.
func (w *Worker) admit(ctx context.Context, vmID string) (unlock func(), err error) {
	if w.cfg.Resources.VCPUs <= 0 {
		return func() {}, nil
	}
	w.admitMu.Lock()
	vm, err := w.cfg.Store.VMs().Get(ctx, vmID)
	if err != nil || vm.Status != model.VMPending {
		return w.admitMu.Unlock, nil // createVM sorts out what it is
	}
	need := placement.Of(vm.VCPUCount, vm.MemoryMB)
	used, err := placement.Used(ctx, w.cfg.Store, w.cfg.ID, vm.ID)
	if err != nil {
		w.admitMu.Unlock()
		return nil, err
	}
	if placement.Fits(w.cfg.Resources, used, need) {
		return w.admitMu.Unlock, nil
	}
	w.admitMu.Unlock()
	loads, err := placement.Loads(ctx, w.cfg.Store, 3*w.cfg.HeartbeatInterval, nil)
	if err != nil {
		return nil, err
	}
	if other, ok := placement.Choose(loads, need, 2, w.cfg.ID, rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))); ok {
		w.log.Info("vm does not fit here; re-placed", "vm_id", vm.ID, "to", other, "need", need.String(), "used", used.String(),
			"capacity", w.cfg.Resources.String())
		return nil, queue.Reroute(other)
	}
	if time.Since(vm.CreatedAt) > admitWait {
		reason := fmt.Sprintf("no worker had room for %d vCPU and %d MB within %s", need.VCPUs, need.MemoryMB, admitWait)
		w.setVMFailed(context.WithoutCancel(ctx), vm.ID, "creation failed: "+reason)
		return nil, queue.Permanent(fmt.Errorf("create vm %s: %s", vm.ID, reason))
	}
	return nil, queue.Defer(admitRetry, fmt.Errorf("%w: %s needed, this worker holds %s of %s", errNoRoom, need, used, w.cfg.Resources))
}
