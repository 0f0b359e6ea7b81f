package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/vmm"
)

// stopVMsAtOnce bounds how many VMs StopVMs stops in parallel.
const stopVMsAtOnce = 8

// StopVMs stops every running VM of this worker and marks the ones the store has as running stopped, with the
// reason. It is what a worker shutting down with shutdown_vms does after its drain (Stop): by default VMs outlive
// their worker and the next worker process adopts them. Disks are kept (a stopped VM can still be deleted). A VM
// whose stop fails keeps its row as it was; the errors are joined.
func (w *Worker) StopVMs(ctx context.Context) error {
	insts, err := w.cfg.Backend.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("stop vms: list backend vms: %w", err)
	}
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		sem  = make(chan struct{}, stopVMsAtOnce)
	)
	for _, in := range insts {
		if in.State != vmm.StateRunning {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := w.stopVM(ctx, in.ID); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (w *Worker) stopVM(ctx context.Context, id string) error {
	if err := w.cfg.Backend.StopVM(ctx, id); err != nil {
		return fmt.Errorf("stop vm %s: %w", id, err)
	}
	_, err := w.cfg.Store.VMs().Update(ctx, id, func(v *model.VM) error {
		if v.WorkerID != w.cfg.ID || v.Status != model.VMRunning {
			return errSkip
		}
		v.Status, v.StoppedAt = model.VMStopped, utcNow()
		v.Error = "stopped: worker " + w.cfg.ID + " shut down with shutdown_vms"
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) && !errors.Is(err, model.ErrNotFound) {
		return fmt.Errorf("mark vm %s stopped: %w", id, err)
	}
	w.log.Info("vm stopped at shutdown", "vm_id", id)
	return nil
}
