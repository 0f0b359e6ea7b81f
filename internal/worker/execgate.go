package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/queue"
)

// One VM must not take all of a worker's slots (issue 10): its commands may stall for as long as their timeouts
// allow, or forever without one, and a guest decides how long they take. So at most MaxExecPerVM executions of
// one VM run at once on a worker. An execution over the limit does not wait in its queue slot, where it would
// block other VMs' work just the same: it waits a moment (execAdmitWait, for a short command to end), then its
// task is deferred (queue.Defer): delivered again after execDeferDelay, out of any slot, without counting an
// attempt, for as long as its VM stays at the limit. The execution has not started, so the new delivery is safe,
// and a burst of commands on one VM queues instead of failing. Nothing waits on anything else while holding a
// permit, so the limit cannot deadlock, and other VMs' tasks always find the remaining slots.

// execAdmitWait is how long an execution over its VM's limit waits in its slot before it is put back.
const execAdmitWait = 250 * time.Millisecond

// execDeferDelay is how long a deferred execution waits in the queue before it tries again (asynq schedules in
// whole seconds).
const execDeferDelay = time.Second

// errVMBusy marks an execution that found its VM at the per-VM limit.
var errVMBusy = errors.New("vm busy")

// execGates holds the per-VM permits. Its zero value is ready to use.
type execGates struct {
	mu    sync.Mutex
	gates map[string]*execGate
}

type execGate struct {
	sem   chan struct{} // one element per running execution
	users int           // holders and waiters: the gate is forgotten when none are left
}

// maxExecPerVM is the per-VM limit: Config.MaxExecPerVM, or half the worker's capacity (at least 1).
func (w *Worker) maxExecPerVM() int {
	if w.cfg.MaxExecPerVM > 0 {
		return w.cfg.MaxExecPerVM
	}
	capacity := w.cfg.Capacity
	if capacity <= 0 {
		capacity = queue.DefaultConcurrency
	}
	return max(1, capacity/2)
}

// admitExec takes one of vmID's permits, waiting at most wait. The returned release gives it back.
func (w *Worker) admitExec(ctx context.Context, vmID string, wait time.Duration) (release func(), err error) {
	limit := w.maxExecPerVM()
	g := &w.execGates
	g.mu.Lock()
	if g.gates == nil {
		g.gates = make(map[string]*execGate)
	}
	gate := g.gates[vmID]
	if gate == nil {
		gate = &execGate{sem: make(chan struct{}, limit)}
		g.gates[vmID] = gate
	}
	gate.users++
	g.mu.Unlock()
	leave := func() {
		g.mu.Lock()
		gate.users--
		if gate.users == 0 {
			delete(g.gates, vmID)
		}
		g.mu.Unlock()
	}

	select {
	case gate.sem <- struct{}{}:
		return func() { <-gate.sem; leave() }, nil
	default:
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case gate.sem <- struct{}{}:
		return func() { <-gate.sem; leave() }, nil
	case <-t.C:
		leave()
		return nil, fmt.Errorf("%w: vm %s already runs %d commands on worker %s (its per-vm limit)", errVMBusy, vmID, limit, w.cfg.ID)
	case <-ctx.Done():
		leave()
		return nil, ctx.Err()
	}
}
