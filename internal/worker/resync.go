package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/vmm"
)

// Events the worker publishes about VMs, on VMTopic(id) and TopicVMs.
const (
	// EventVMFailed: a VM stopped behind the worker's back (crashed, OOM-killed, killed) and was marked failed.
	// Data is VMFailedData.
	EventVMFailed = "vm.failed"
	// TopicVMs carries the events of every VM.
	TopicVMs = "vms"
)

// VMTopic is the topic of one VM's events.
func VMTopic(vmID string) string { return "vms/" + vmID }

// VMFailedData is the data of EventVMFailed.
type VMFailedData struct {
	Reason   string `json:"reason"`
	WorkerID string `json:"worker_id"`
}

// DefaultResyncInterval is how often the resync loop compares the store with the backend: a VM that dies is
// marked failed within about this long (plus one pass), well inside the 10 s the product promises.
const DefaultResyncInterval = 3 * time.Second

// maxDeleteBackoff caps the wait between two attempts to remove what the backend holds for a VM.
const maxDeleteBackoff = 5 * time.Minute

// resyncer is the state of the resync loop: one pass at a time, and when to try again a backend deletion that
// failed.
type resyncer struct {
	mu      sync.Mutex
	retryAt map[string]time.Time // vm id -> not before
	fails   map[string]int
	lastErr string
	lastLog time.Time
}

// Kick asks the resync loop for a pass now, say because a command found its VM gone. It never blocks.
func (w *Worker) Kick() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// resyncLoop runs a resync pass every ResyncInterval, when the backend reports a VM event, and when kicked, until
// ctx ends. A pass that fails is logged and the next one tries again: nothing here stops the worker.
func (w *Worker) resyncLoop(ctx context.Context) {
	defer w.wg.Done()
	t := time.NewTicker(w.cfg.ResyncInterval)
	defer t.Stop()
	src, hasEvents := w.cfg.Backend.(vmm.VMEvents)
	var evC <-chan vmm.Event
	subscribe := hasEvents
	for {
		if subscribe {
			evC, subscribe = src.Events(ctx), false
		}
		var suspect string
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			subscribe = hasEvents && evC == nil // the event source ended: try it again, at most once a period
		case <-w.kick:
		case ev, ok := <-evC:
			if !ok {
				evC = nil
				continue
			}
			w.log.Debug("backend vm event", "vm_id", ev.VMID, "state", ev.State, "detail", ev.Detail)
			suspect = ev.VMID
		}
		err := w.resync(ctx, false, suspect)
		if ctx.Err() != nil {
			return
		}
		w.logResync(err)
	}
}

// logResync logs a failed pass; the same error again is logged at most once a minute, since the loop runs every
// few seconds.
func (w *Worker) logResync(err error) {
	r := &w.rs
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		if r.lastErr != "" {
			w.log.Info("resync recovered")
		}
		r.lastErr = ""
		return
	}
	if msg := err.Error(); msg != r.lastErr || time.Since(r.lastLog) >= time.Minute {
		w.log.Warn("resync incomplete; retrying", "err", err)
		r.lastErr, r.lastLog = msg, time.Now()
	}
}

// Reconcile makes the store agree with the backend, at start: see resync. It returns what it could not do; the
// resync loop keeps trying, so a caller logs it rather than giving up.
func (w *Worker) Reconcile(ctx context.Context) error { return w.resync(ctx, true, "") }

// resync makes the store agree with the backend:
//   - a VM the store says runs here that the backend no longer runs is marked failed with the backend's reason,
//     announced (EventVMFailed), and what the backend still holds for it (disk, TAP, lease) is released;
//   - a VM this worker was creating or deleting that no task will finish is settled (reconcileInFlight);
//   - what the backend still holds for a failed VM is released;
//   - backend VMs the store does not know as this worker's (or knows as deleted) are removed.
//
// Races with the handlers: the store is read before the backend, so a VM the store says is running was running
// in the backend before the backend was listed; a VM is only marked failed if the store still says it runs here
// when the row is written, so a delete that began meanwhile wins. A backend VM missing from the store's list is
// looked up again before it is removed, since its creation may have begun after the list was read. A backend
// that fails to list marks nothing failed. A deletion that fails is logged and tried again later, with backoff:
// one VM that cannot be removed never stops the others, the worker, or its start.
//
// suspect is the VM a backend event named, if any: its state is asked of the backend directly even when the
// listing says it runs, since a listing may lag behind the event (Docker 20.10 publishes a container's die before
// its list view has it stopped).
func (w *Worker) resync(ctx context.Context, restarted bool, suspect string) error {
	w.rs.mu.Lock()
	defer w.rs.mu.Unlock()
	vms, err := w.listOwnVMs(ctx)
	if err != nil {
		return err
	}
	insts, err := w.cfg.Backend.ListVMs(ctx)
	if err != nil {
		return fmt.Errorf("list %s backend vms: %w", w.cfg.Backend.Name(), err)
	}
	byID := make(map[string]*vmm.Instance, len(insts))
	for _, in := range insts {
		byID[in.ID] = in
	}
	known := make(map[string]bool, len(vms))
	var errs []error
	for _, vm := range vms {
		known[vm.ID] = true
		in := byID[vm.ID]
		var err error
		switch vm.Status {
		case model.VMCreating, model.VMStopping:
			err = w.reconcileInFlight(ctx, vm, restarted)
		case model.VMRunning, model.VMPaused:
			// A paused VM's process or container is there, frozen: backends list it as running (vmm.Pauser).
			if in == nil || in.State != vmm.StateRunning || vm.ID == suspect {
				err = w.vmLost(ctx, vm, in, restarted)
			}
		case model.VMFailed:
			// Normally released when it failed; this retries a release that did not work then.
			if in != nil {
				err = w.backendDelete(ctx, vm.ID, "release resources of failed vm")
			}
		}
		if err != nil && !errors.Is(err, errRetryLater) {
			errs = append(errs, err)
		}
	}
	for _, in := range insts {
		if known[in.ID] {
			continue
		}
		if err := w.removeOrphan(ctx, in); err != nil && !errors.Is(err, errRetryLater) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// vmLost marks a VM failed that the store says runs here and the backend does not run (in is the backend's view
// from the listing, nil when it was missing), announces it and releases its backend resources.
func (w *Worker) vmLost(ctx context.Context, vm *model.VM, in *vmm.Instance, restarted bool) error {
	cur, err := w.cfg.Backend.GetVMStatus(ctx, vm.ID)
	switch {
	case err == nil && cur.State == vmm.StateRunning:
		return nil
	case err == nil:
		in = cur
	case errors.Is(err, vmm.ErrNotFound):
		in = nil
	case in != nil:
		// The backend cannot say: mark nothing failed on its word.
		return fmt.Errorf("status of vm %s: %w", vm.ID, err)
	}
	var reason string
	switch {
	case restarted && in == nil:
		reason = "vm was missing from the " + w.cfg.Backend.Name() + " backend when worker " + w.cfg.ID + " restarted"
	case restarted:
		reason = "vm was not running when worker " + w.cfg.ID + " restarted"
		if in.Detail != "" {
			reason += " (" + in.Detail + ")"
		}
	case in == nil:
		reason = "vm disappeared from the " + w.cfg.Backend.Name() + " backend of worker " + w.cfg.ID
	default:
		reason = "vm stopped unexpectedly"
		if in.Detail != "" {
			reason += ": " + in.Detail
		}
	}
	failed, err := w.cfg.Store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
		if (v.Status != model.VMRunning && v.Status != model.VMPaused) || v.WorkerID != w.cfg.ID {
			return errSkip // deleted, or being deleted, meanwhile
		}
		v.Status, v.Error, v.StoppedAt = model.VMFailed, reason, utcNow()
		return nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("mark vm %s failed: %w", vm.ID, err)
	}
	w.log.Warn("vm lost", "vm_id", vm.ID, "reason", reason)
	w.announceVMFailed(ctx, failed, reason)
	if in == nil {
		return nil
	}
	// Nothing can bring the guest's memory back, and no API restarts a failed VM: free its disk and the rest of
	// what the backend holds for it now, rather than when the user gets round to deleting it.
	return w.backendDelete(ctx, vm.ID, "release resources of lost vm")
}

func (w *Worker) announceVMFailed(ctx context.Context, vm *model.VM, reason string) {
	if w.cfg.Events == nil {
		return
	}
	data, err := json.Marshal(VMFailedData{Reason: reason, WorkerID: w.cfg.ID})
	if err != nil {
		return
	}
	e := events.Event{Type: EventVMFailed, Subject: vm.ID, OwnerID: vm.OwnerID, Data: data, Time: time.Now().UTC()}
	for _, topic := range []string{VMTopic(vm.ID), TopicVMs} {
		if err := w.cfg.Events.Publish(ctx, topic, e); err != nil {
			w.log.Warn("could not announce failed vm", "vm_id", vm.ID, "topic", topic, "err", err)
		}
	}
}

// removeOrphan removes a backend VM the store's list did not have as this worker's, once the store confirms it.
func (w *Worker) removeOrphan(ctx context.Context, in *vmm.Instance) error {
	vm, err := w.cfg.Store.VMs().Get(ctx, in.ID)
	switch {
	case err == nil && vm.WorkerID == w.cfg.ID && vm.Status != model.VMDeleted:
		return nil // its creation began after the list was read
	case err != nil && !errors.Is(err, model.ErrNotFound):
		return fmt.Errorf("look up backend vm %s: %w", in.ID, err)
	}
	if err := w.backendDelete(ctx, in.ID, "remove orphaned vm"); err != nil {
		return err
	}
	w.log.Info("removed orphaned vm", "vm_id", in.ID)
	return nil
}

// errRetryLater is returned by backendDelete for a VM whose last deletion failed not long ago.
var errRetryLater = errors.New("waiting to retry")

// backendDelete removes what the backend holds for a VM. After a failure it waits, doubling from the resync
// interval up to maxDeleteBackoff, before trying that VM again (calls meanwhile return errRetryLater and do
// nothing). w.rs.mu must be held.
func (w *Worker) backendDelete(ctx context.Context, id, what string) error {
	r := &w.rs
	now := time.Now()
	if at, ok := r.retryAt[id]; ok && now.Before(at) {
		return errRetryLater // failed recently; the failure was reported then
	}
	err := w.cfg.Backend.DeleteVM(ctx, id)
	if err == nil {
		delete(r.retryAt, id)
		delete(r.fails, id)
		return nil
	}
	if r.retryAt == nil {
		r.retryAt, r.fails = make(map[string]time.Time), make(map[string]int)
	}
	r.fails[id]++
	n := r.fails[id]
	delay := maxDeleteBackoff
	if n <= 16 {
		delay = min(w.cfg.ResyncInterval<<(n-1), maxDeleteBackoff)
	}
	r.retryAt[id] = now.Add(delay)
	w.log.Error("backend could not remove a vm; retrying later", "vm_id", id, "what", what, "failures", n, "retry_in", delay, "err", err)
	return fmt.Errorf("%s %s (failed %d times, next try in %s): %w", what, id, n, delay, err)
}
