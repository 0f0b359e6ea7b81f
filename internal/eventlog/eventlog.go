// Package eventlog serves the owner-scoped event log of GET /api/v1/events.
//
// The store is the truth: every state change of a VM, task, execution or run appends its event to the log in the
// transaction that makes the change (store.EventStore), so nothing can be lost, whichever process made the change.
// The event bus is only a wake-up signal: Wake wraps a store so that, after a change that appended events, it
// publishes a tiny notification on the owner's topic (Topic), and a Follower reading the log goes back to the store
// as soon as one arrives. The bus drops messages for slow readers and Redis pub/sub drops them while disconnected,
// so a Follower also polls: a lost wake-up only delays delivery until the next poll, never loses an event.
package eventlog

import (
	"context"
	"log/slog"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Topic is the bus topic on which the appends to an owner's log are announced.
func Topic(ownerID string) string { return "events/" + ownerID }

// wakeType is the type of the notifications on Topic: they carry no event, only "look again".
const wakeType = "events.appended"

// Wake returns st with the state-changing methods of its VMs, tasks, executions and runs announcing, on bus, every
// change that appended to the owner's event log. A failed publish is logged and otherwise ignored: followers poll.
func Wake(st store.Store, bus events.Bus, log *slog.Logger) store.Store {
	if log == nil {
		log = slog.Default()
	}
	return &wakeStore{Store: st, w: waker{bus: bus, log: log}}
}

type waker struct {
	bus events.Bus
	log *slog.Logger
}

func (w waker) wake(ctx context.Context, ownerID string) {
	if ownerID == "" {
		return
	}
	// The change is committed: announce it even if the caller's context ends now.
	ctx = context.WithoutCancel(ctx)
	if err := w.bus.Publish(ctx, Topic(ownerID), events.Event{Type: wakeType, OwnerID: ownerID}); err != nil {
		w.log.DebugContext(ctx, "event log wake-up not published; followers will poll", "err", err)
	}
}

type wakeStore struct {
	store.Store
	w waker
}

func (s *wakeStore) VMs() store.VMStore     { return wakeVMs{s.Store.VMs(), s.w} }
func (s *wakeStore) Tasks() store.TaskStore { return wakeTasks{s.Store.Tasks(), s.w} }
func (s *wakeStore) Executions() store.ExecutionStore {
	return wakeExecutions{s.Store.Executions(), s.w}
}
func (s *wakeStore) Runs() store.RunStore     { return wakeRuns{s.Store.Runs(), s.w} }
func (s *wakeStore) Events() store.EventStore { return wakeEvents{s.Store.Events(), s.w} }

// The wrappers below decide "did this append?" the way the store does (same fields compared), but loosely: a
// wake-up too many costs one List that finds nothing.

type wakeVMs struct {
	store.VMStore
	w waker
}

func (v wakeVMs) Create(ctx context.Context, vm *model.VM) error {
	if err := v.VMStore.Create(ctx, vm); err != nil {
		return err
	}
	v.w.wake(ctx, vm.OwnerID)
	return nil
}

func (v wakeVMs) Update(ctx context.Context, id string, fn func(*model.VM) error) (*model.VM, error) {
	var changed bool
	out, err := v.VMStore.Update(ctx, id, func(vm *model.VM) error {
		before := vm.Status
		err := fn(vm)
		changed = vm.Status != before
		return err
	})
	if err == nil && changed {
		v.w.wake(ctx, out.OwnerID)
	}
	return out, err
}

type wakeTasks struct {
	store.TaskStore
	w waker
}

func (t wakeTasks) Update(ctx context.Context, id string, fn func(*model.Task) error) (*model.Task, error) {
	var ended bool
	out, err := t.TaskStore.Update(ctx, id, func(x *model.Task) error {
		wasDone := x.Status.Done()
		err := fn(x)
		ended = !wasDone && x.Status.Done()
		return err
	})
	if err == nil && ended {
		t.w.wake(ctx, out.OwnerID)
	}
	return out, err
}

type wakeExecutions struct {
	store.ExecutionStore
	w waker
}

func (e wakeExecutions) Create(ctx context.Context, x *model.Execution) error {
	if err := e.ExecutionStore.Create(ctx, x); err != nil {
		return err
	}
	if x.StartedAt != nil || x.Status == model.ExecutionCompleted || x.Status == model.ExecutionFailed {
		e.w.wake(ctx, x.OwnerID)
	}
	return nil
}

func (e wakeExecutions) Update(ctx context.Context, id string, fn func(*model.Execution) error) (*model.Execution, error) {
	var changed bool
	out, err := e.ExecutionStore.Update(ctx, id, func(x *model.Execution) error {
		status, started := x.Status, x.StartedAt != nil
		err := fn(x)
		changed = x.Status != status || (x.StartedAt != nil) != started
		return err
	})
	if err == nil && changed {
		e.w.wake(ctx, out.OwnerID)
	}
	return out, err
}

type wakeRuns struct {
	store.RunStore
	w waker
}

func (r wakeRuns) Create(ctx context.Context, run *model.Run) error {
	if err := r.RunStore.Create(ctx, run); err != nil {
		return err
	}
	r.w.wake(ctx, run.OwnerID)
	return nil
}

func (r wakeRuns) Update(ctx context.Context, id string, fn func(*model.Run) error) (*model.Run, error) {
	var changed bool
	out, err := r.RunStore.Update(ctx, id, func(x *model.Run) error {
		before := x.Status
		err := fn(x)
		changed = x.Status != before
		return err
	})
	if err == nil && changed {
		r.w.wake(ctx, out.OwnerID)
	}
	return out, err
}

type wakeEvents struct {
	store.EventStore
	w waker
}

func (e wakeEvents) Append(ctx context.Context, ev *store.Event) error {
	if err := e.EventStore.Append(ctx, ev); err != nil {
		return err
	}
	e.w.wake(ctx, ev.OwnerID)
	return nil
}
