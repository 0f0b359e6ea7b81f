package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/vmm"
)

// Pause, resume and lifetimes (issue 15; docs/architecture.md, "VM lifetimes").
//
// vm:pause and vm:resume call the backend's vmm.Pauser and then record the new status; both are idempotent, so a
// retry after a crash between the two finishes the job. The reaper (reapLoop) runs on the worker that owns the
// VMs, because that is where their activity is seen: every ReapInterval it reads this worker's VMs that have a
// lifetime, and asks for a vm:delete of those past their hard expiry (busy or not) and a vm:pause or vm:delete
// (on_idle) of those idle for their idle timeout. An idle VM is one with nothing in progress (no command, shell,
// file transfer or agent run: activity.Tracker.Busy) and no activity for that long, and whose background
// processes have printed nothing since the last look. The reaper's tasks are ordinary tasks, pinned here, with
// the reason in their payload; their handlers log it ("vm idle for 5m0s: paused") and announce it.

// Events the worker publishes about VMs' lifecycle, on VMTopic(id) and TopicVMs; Data is VMLifecycleData.
const (
	EventVMPaused  = "vm.paused"
	EventVMResumed = "vm.resumed"
	// EventVMReaped: the VM was deleted by its hard timeout or its idle timeout (on_idle delete).
	EventVMReaped = "vm.reaped"
)

// VMLifecycleData is the data of the lifecycle events. Reason is set when the worker acted on its own (a timeout).
type VMLifecycleData struct {
	Reason   string `json:"reason,omitempty"`
	WorkerID string `json:"worker_id"`
}

// Defaults of the reaper.
const (
	DefaultReapInterval         = time.Second
	DefaultActivitySaveInterval = 10 * time.Second
	// restartGrace is the least time a restarted worker gives an idle VM before reaping it: one that went idle
	// while no worker watched is not reaped the moment its worker comes back, in a burst with all the others.
	restartGrace = 30 * time.Second
	// reapRetryAfter is how long the reaper waits before asking again for a VM whose reap task it queued (a task
	// still queued then gets a twin, which finds the work done: both are idempotent).
	reapRetryAfter = 10 * time.Second
)

func (w *Worker) handlePause(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	return w.handlePauseResume(ctx, t, true)
}

func (w *Worker) handleResume(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	return w.handlePauseResume(ctx, t, false)
}

func (w *Worker) handlePauseResume(ctx context.Context, t *model.Task, pause bool) (json.RawMessage, error) {
	var p task.LifecyclePayload
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	vm, err := w.pauseResume(ctx, p.VMID, pause, p.Reason)
	if err != nil {
		return nil, err
	}
	return encode(task.VMResult{VMID: vm.ID, Status: vm.Status})
}

// pauseResume pauses (or resumes) one of this worker's VMs. A VM already so is done; the backend is asked again
// all the same, since a crash may have come between its call and the status. A pause the reaper asked for
// (reason set) is dropped when the VM has become busy since.
func (w *Worker) pauseResume(ctx context.Context, vmID string, pause bool, reason string) (*model.VM, error) {
	from, to, verb := model.VMRunning, model.VMPaused, "paused"
	if !pause {
		from, to, verb = model.VMPaused, model.VMRunning, "resumed"
	}
	pauser, ok := w.cfg.Backend.(vmm.Pauser)
	if !ok {
		return nil, queue.Permanent(fmt.Errorf("the %s backend cannot pause or resume vms", w.cfg.Backend.Name()))
	}
	vm, err := w.cfg.Store.VMs().Get(ctx, vmID)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	if vm.WorkerID != w.cfg.ID {
		return nil, queue.Permanent(fmt.Errorf("vm %s is hosted by worker %q", vm.ID, vm.WorkerID))
	}
	if vm.Status != from && vm.Status != to {
		return nil, queue.Permanent(fmt.Errorf("vm %s is %s and cannot be %s", vm.ID, vm.Status, verb))
	}
	if reason != "" && pause && w.activeAgain(vm) {
		w.log.Info("vm became active; not "+verb, "vm_id", vm.ID, "reason", reason)
		return vm, nil
	}
	op := pauser.ResumeVM
	if pause {
		op = pauser.PauseVM
	}
	if err := op(ctx, vm.ID); err != nil {
		if errors.Is(err, vmm.ErrNotFound) || errors.Is(err, vmm.ErrNotRunning) {
			w.Kick() // the VM is gone: the resync loop marks it failed
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	if !pause {
		w.activity.Touch(vm.ID) // a resumed VM starts its idle time again
	}
	if vm.Status == to {
		return vm, nil
	}
	vm, err = w.cfg.Store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
		if v.Status != from {
			return errSkip
		}
		v.Status = to
		// The activity the pause followed, saved with it: the VM shows what it was idle since.
		if l, last := v.Lifetime, w.activity.Last(v.ID); l != nil && !last.IsZero() &&
			(l.LastActivityAt == nil || l.LastActivityAt.Before(last)) {
			t := last.UTC()
			l.LastActivityAt = &t
		}
		return nil
	})
	if errors.Is(err, errSkip) || errors.Is(err, model.ErrInvalidTransition) {
		return w.cfg.Store.VMs().Get(ctx, vmID) // deleted or changed meanwhile: that wins
	}
	if err != nil {
		return nil, err
	}
	if reason != "" {
		w.log.Info("vm "+reason+": "+verb, "vm_id", vm.ID)
	} else {
		w.log.Info("vm "+verb, "vm_id", vm.ID)
	}
	w.announce(ctx, vm, map[bool]string{true: EventVMPaused, false: EventVMResumed}[pause], reason)
	return vm, nil
}

// announce publishes a lifecycle event of vm.
func (w *Worker) announce(ctx context.Context, vm *model.VM, typ, reason string) {
	if w.cfg.Events == nil {
		return
	}
	data, err := json.Marshal(VMLifecycleData{Reason: reason, WorkerID: w.cfg.ID})
	if err != nil {
		return
	}
	e := events.Event{Type: typ, Subject: vm.ID, OwnerID: vm.OwnerID, Data: data, Time: time.Now().UTC()}
	for _, topic := range []string{VMTopic(vm.ID), TopicVMs} {
		if err := w.cfg.Events.Publish(ctx, topic, e); err != nil {
			w.log.Warn("could not announce vm event", "vm_id", vm.ID, "event", typ, "err", err)
		}
	}
}

// reapLoop runs the reaper every ReapInterval and saves the VMs' activity every ActivitySaveInterval (and once
// more as it ends), until ctx ends.
func (w *Worker) reapLoop(ctx context.Context) {
	defer w.wg.Done()
	t := time.NewTicker(w.cfg.ReapInterval)
	defer t.Stop()
	lastSave := time.Now()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			w.saveActivity(sctx)
			cancel()
			return
		case <-t.C:
		}
		if err := w.reap(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("reaper pass incomplete", "err", err)
		}
		if time.Since(lastSave) >= w.cfg.ActivitySaveInterval {
			w.saveActivity(ctx)
			lastSave = time.Now()
		}
	}
}

// reaperState is what the reaper remembers between passes. Only reapLoop's goroutine uses it.
type reaperState struct {
	asked    map[string]time.Time // vm id -> when its reap task was queued
	procOut  map[string]int64     // vm id -> output of its background processes at the last look
	lifetime map[string]bool      // vm ids with a lifetime, as of the last pass: whose activity is saved
}

// reap looks at this worker's VMs that have a lifetime once.
func (w *Worker) reap(ctx context.Context) error {
	r := &w.reaper
	if r.asked == nil {
		r.asked, r.procOut = make(map[string]time.Time), make(map[string]int64)
	}
	vms, err := w.listVMs(ctx, model.VMRunning, model.VMPaused)
	if err != nil {
		return err
	}
	now := time.Now()
	seen := make(map[string]bool, len(vms))
	var errs []error
	for _, vm := range vms {
		l := vm.Lifetime
		if !l.IsSet() {
			continue
		}
		seen[vm.ID] = true
		if l.LastActivityAt != nil {
			w.activity.Seed(vm.ID, *l.LastActivityAt) // a keepalive, or what an earlier process saved
		}
		if at, ok := r.asked[vm.ID]; ok && now.Sub(at) < reapRetryAfter {
			continue
		}
		typ, reason := w.reapVerdict(ctx, vm, now)
		if typ == "" {
			continue
		}
		if err := w.enqueueReap(ctx, vm, typ, reason); err != nil {
			errs = append(errs, err)
			continue
		}
		r.asked[vm.ID] = now
	}
	for id := range r.asked {
		if !seen[id] {
			delete(r.asked, id)
			delete(r.procOut, id)
		}
	}
	r.lifetime = seen
	return errors.Join(errs...)
}

// reapVerdict says what the reaper asks for vm now: a task type and its reason, or "" for nothing.
func (w *Worker) reapVerdict(ctx context.Context, vm *model.VM, now time.Time) (model.TaskType, string) {
	l := vm.Lifetime
	if l.ExpiresAt != nil && !now.Before(*l.ExpiresAt) {
		return model.TaskVMDelete, fmt.Sprintf("expired (timeout %s)", time.Duration(l.TimeoutSeconds)*time.Second)
	}
	if l.IdleTimeoutSeconds <= 0 || (vm.Status == model.VMPaused && l.OnIdle != model.OnIdleDelete) {
		return "", ""
	}
	idle := time.Duration(l.IdleTimeoutSeconds) * time.Second
	if vm.Status == model.VMRunning && w.activity.Busy(vm.ID) {
		return "", ""
	}
	last := w.activity.Last(vm.ID)
	if last.IsZero() {
		last = vm.CreatedAt
		if vm.StartedAt != nil {
			last = *vm.StartedAt
		}
	}
	if floor := w.startedAt.Add(min(idle, restartGrace) - idle); last.Before(floor) {
		last = floor
	}
	if now.Sub(last) < idle {
		return "", ""
	}
	if vm.Status == model.VMRunning && w.processesPrinted(ctx, vm.ID) {
		w.activity.Touch(vm.ID)
		return "", ""
	}
	reason := "idle for " + idle.String()
	if vm.Status == model.VMPaused || l.OnIdle == model.OnIdleDelete {
		return model.TaskVMDelete, reason
	}
	return model.TaskVMPause, reason
}

// processesPrinted reports whether the VM's background processes printed since the last look (the first look
// counts a running process that has printed), or one of them is attached to a caller (a command in progress
// that this worker process does not track). A VM whose agent cannot say is not kept alive by it.
func (w *Worker) processesPrinted(ctx context.Context, vmID string) bool {
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	c, err := w.cfg.Backend.Agent(actx, vmID)
	if err != nil {
		return false
	}
	procs, err := c.ListProcesses(actx)
	if err != nil {
		w.log.Debug("reaper: could not list the vm's processes", "vm_id", vmID, "err", err)
		return false
	}
	var total int64
	running := false
	for _, p := range procs {
		total += p.StdoutBytes + p.StderrBytes
		if p.State == agent.ProcessRunning {
			running = true
			if p.Attached {
				return true
			}
		}
	}
	before, seen := w.reaper.procOut[vmID]
	w.reaper.procOut[vmID] = total
	if !seen {
		return running && total > 0
	}
	return total != before
}

// enqueueReap queues a task of typ for vm on this worker, with reason in its payload.
func (w *Worker) enqueueReap(ctx context.Context, vm *model.VM, typ model.TaskType, reason string) error {
	payload, err := json.Marshal(task.LifecyclePayload{VMID: vm.ID, Reason: reason})
	if err != nil {
		return err
	}
	n := time.Now().UTC()
	t := &model.Task{ID: uuid.NewString(), OwnerID: vm.OwnerID, Type: typ, Status: model.TaskPending,
		Priority: model.PriorityHigh, Payload: payload, VMID: vm.ID, TargetWorker: w.cfg.ID, MaxRetries: 3,
		CreatedAt: n, UpdatedAt: n}
	if err := w.cfg.Store.Tasks().Create(ctx, t); err != nil {
		return fmt.Errorf("store %s task of vm %s: %w", typ, vm.ID, err)
	}
	if err := w.cfg.Queue.Enqueue(ctx, queue.Message{TaskID: t.ID, Type: typ, Priority: t.Priority,
		TargetWorker: w.cfg.ID, MaxRetries: t.MaxRetries}); err != nil {
		_, _ = w.cfg.Store.Tasks().Update(context.WithoutCancel(ctx), t.ID, func(x *model.Task) error {
			x.Status, x.Error, x.CompletedAt = model.TaskFailed, "could not be queued: "+err.Error(), utcNow()
			return nil
		})
		return fmt.Errorf("queue %s task of vm %s: %w", typ, vm.ID, err)
	}
	w.log.Info("vm "+reason+": asking for "+string(typ), "vm_id", vm.ID, "task_id", t.ID)
	return nil
}

// saveActivity writes the newest activity of this worker's VMs with a lifetime to the store. Best effort: what
// fails is tried again at the next save.
func (w *Worker) saveActivity(ctx context.Context) {
	for id, at := range w.activity.Unsaved() {
		if !w.reaper.lifetime[id] {
			w.activity.MarkSaved(id, at) // nothing reads it
			continue
		}
		_, err := w.cfg.Store.VMs().Update(ctx, id, func(v *model.VM) error {
			if v.Lifetime == nil || (v.Lifetime.LastActivityAt != nil && !v.Lifetime.LastActivityAt.Before(at)) {
				return errSkip
			}
			t := at.UTC()
			v.Lifetime.LastActivityAt = &t
			return nil
		})
		if err == nil || errors.Is(err, errSkip) || errors.Is(err, model.ErrNotFound) {
			w.activity.MarkSaved(id, at)
			continue
		}
		if ctx.Err() == nil {
			w.log.Warn("could not save vm activity", "vm_id", id, "err", err)
		}
	}
}

// listVMs lists this worker's VMs in the given statuses, every page.
func (w *Worker) listVMs(ctx context.Context, statuses ...model.VMStatus) ([]*model.VM, error) {
	var all []*model.VM
	page := store.Page{Limit: 500}
	for {
		vms, err := w.cfg.Store.VMs().List(ctx, store.VMFilter{WorkerID: w.cfg.ID, Statuses: statuses, Page: page})
		if err != nil {
			return nil, fmt.Errorf("list vms of worker %s: %w", w.cfg.ID, err)
		}
		all = append(all, vms...)
		if len(vms) < page.Limit {
			return all, nil
		}
		page.After = vms[len(vms)-1].ID
	}
}

// reapDelete deletes a VM the reaper asked to delete, unless, for an idle timeout, it has become busy since (a
// hard timeout deletes it all the same), and announces it.
func (w *Worker) reapDelete(ctx context.Context, p task.LifecyclePayload) (json.RawMessage, error) {
	vm, err := w.cfg.Store.VMs().Get(ctx, p.VMID)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	if vm.Status == model.VMDeleted {
		return encode(task.VMResult{VMID: vm.ID, Status: vm.Status})
	}
	expired := vm.Lifetime != nil && vm.Lifetime.ExpiresAt != nil && !time.Now().Before(*vm.Lifetime.ExpiresAt)
	if !expired && vm.Status == model.VMRunning && w.activeAgain(vm) {
		w.log.Info("vm became active; not deleted", "vm_id", vm.ID, "reason", p.Reason)
		return encode(task.VMResult{VMID: vm.ID, Status: vm.Status})
	}
	if err := w.deleteVM(ctx, vm.ID); err != nil {
		return nil, err
	}
	w.log.Info("vm "+p.Reason+": deleted", "vm_id", vm.ID)
	w.announce(ctx, vm, EventVMReaped, p.Reason)
	return encode(task.VMResult{VMID: vm.ID, Status: model.VMDeleted})
}

// activeAgain reports whether a VM the reaper found idle has been busy or active since, within its idle timeout.
func (w *Worker) activeAgain(vm *model.VM) bool {
	if w.activity.Busy(vm.ID) {
		return true
	}
	if vm.Lifetime == nil || vm.Lifetime.IdleTimeoutSeconds <= 0 {
		return false
	}
	last := w.activity.Last(vm.ID)
	return !last.IsZero() && time.Since(last) < time.Duration(vm.Lifetime.IdleTimeoutSeconds)*time.Second
}
