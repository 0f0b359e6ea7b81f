// Package queue defines Aetherium's task queue seam. Two implementations (asynqq on Redis, embedded in-process and
// persisted in the store) pass one conformance suite (queuetest).
//
// The queue carries only a task's id and routing; the tasks table is the source of truth. Every implementation
// mirrors a task's life into its row (processing, retried, completed, failed) through Tracker, and announces the
// end of a task on the event bus so waiters need not poll.
package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// Message asks the queue to run a task that is already stored.
type Message struct {
	TaskID   string
	Type     model.TaskType
	Priority model.Priority // empty means default
	// TargetWorker pins the task to one worker's own queue (the worker that hosts the VM). Empty: any worker.
	TargetWorker string
	// MaxRetries is how many times an infrastructure failure is retried after the first attempt.
	MaxRetries int
	// ProcessAt delays the first attempt; zero means now.
	ProcessAt time.Time
}

// Handler runs one task. It gets the stored task (status already "processing") and returns its result.
// A returned error is retried with backoff while retries remain, unless it is Permanent.
type Handler func(ctx context.Context, t *model.Task) (json.RawMessage, error)

// Queue runs tasks on the workers that consume it.
type Queue interface {
	// Enqueue schedules m. It works without Start (the gateway only enqueues).
	Enqueue(ctx context.Context, m Message) error
	// RegisterHandler sets the handler of a task type. Call before Start.
	RegisterHandler(t model.TaskType, h Handler)
	// Start begins consuming the shared priority queues and this worker's own queue.
	Start(ctx context.Context) error
	// Stop stops taking new tasks and waits for in-flight ones until ctx ends; unfinished tasks stay pending
	// (they are requeued), never lost.
	Stop(ctx context.Context) error
	// Stats reports queue depths; it also serves as the readiness probe of the queue's backing service.
	Stats(ctx context.Context) (Stats, error)
}

// Stats is a snapshot of the queues.
type Stats struct {
	Queues []QueueStats `json:"queues"`
}

// QueueStats counts the tasks of one named queue.
type QueueStats struct {
	Name      string `json:"name"`
	Pending   int    `json:"pending"`
	Active    int    `json:"active"`
	Scheduled int    `json:"scheduled"` // waiting for a retry or a ProcessAt time
}

// Options configure a consuming queue.
type Options struct {
	// WorkerID names this worker; it consumes the queue of tasks pinned to it. Required to Start.
	WorkerID string
	// Concurrency is how many tasks run at once (default 10).
	Concurrency int
	// RetryDelay gives the wait before retry n (1-based). Default: exponential from 1 s, capped at 1 min, with jitter.
	RetryDelay func(n int, err error) time.Duration
	// Observer, when set, is told how every delivery whose handler ran ended (metrics).
	Observer Observer
}

// Observer learns of every delivery whose handler ran: the task as begun, when its handler started, how long it
// took and how the delivery ended. It is called on the worker's goroutine and must be quick.
type Observer interface {
	TaskRan(t *model.Task, started time.Time, took time.Duration, outcome OutcomeKind)
}

// PermanentError marks a failure that retrying cannot fix (bad input, a VM that no longer exists).
type PermanentError struct{ Err error }

func (e *PermanentError) Error() string { return e.Err.Error() }
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent wraps err so that the queue fails the task at once instead of retrying it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err (or an error it wraps) is permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// RerouteError tells the queue that a task must run on another worker (the one that hosts its VM): the queue does
// not count the attempt, pins the task's row to that worker, and delivers the task on that worker's own queue.
// A handler returns it through Reroute; Tracker.Begin returns it for a delivery of a task pinned to another worker.
type RerouteError struct {
	Worker   string
	Priority model.Priority // filled in by the queue
}

func (e *RerouteError) Error() string { return "the task must run on worker " + e.Worker }

// Reroute returns the error a handler gives when its task must run on workerID instead (see RerouteError).
func Reroute(workerID string) error { return &RerouteError{Worker: workerID} }

// AsReroute reports whether err (or an error it wraps) is a RerouteError, and returns it.
func AsReroute(err error) (*RerouteError, bool) {
	var r *RerouteError
	if errors.As(err, &r) {
		return r, true
	}
	return nil, false
}

// DeferError tells the queue that a task cannot run yet and must be delivered again on its own route after After,
// without counting the attempt: nothing of it ran. A handler returns it through Defer when what the task needs is
// busy (its VM runs as many commands as it may), so that the task waits in the queue, out of any worker slot,
// however long the wait, instead of using up its retries.
type DeferError struct {
	After  time.Duration
	Reason error
}

func (e *DeferError) Error() string {
	return fmt.Sprintf("deferred for %s: %v", e.After, e.Reason)
}

func (e *DeferError) Unwrap() error { return e.Reason }

// Defer returns the error a handler gives when its task must wait after before it is delivered again.
func Defer(after time.Duration, reason error) error { return &DeferError{After: after, Reason: reason} }

// AsDefer reports whether err (or an error it wraps) is a DeferError, and returns it.
func AsDefer(err error) (*DeferError, bool) {
	var d *DeferError
	if errors.As(err, &d) {
		return d, true
	}
	return nil, false
}

// Route is where a task's next delivery goes: the shared queue of Priority (Worker empty) or Worker's own.
type Route struct {
	Worker   string
	Priority model.Priority
}

// Queue is the name of the queue that carries the route's deliveries.
func (r Route) Queue() string { return QueueName(r.Worker, r.Priority) }

// QueueName gives the name of the queue that carries m: the priority for shared tasks, and
// "worker:<id>:<priority>" for tasks pinned to a worker.
func QueueName(targetWorker string, p model.Priority) string {
	if p == "" {
		p = model.PriorityDefault
	}
	if targetWorker == "" {
		return string(p)
	}
	return fmt.Sprintf("worker:%s:%s", targetWorker, p)
}

// WorkerQueues gives the queue names a worker consumes with their weights: the shared priority queues and its own
// pinned queues. Pinned queues weigh twice their shared counterpart so that work on existing VMs is not starved by
// new creates.
func WorkerQueues(workerID string) map[string]int {
	qs := make(map[string]int, 2*len(model.Priorities))
	for _, p := range model.Priorities {
		w := model.PriorityWeights[p]
		qs[QueueName("", p)] = w
		qs[QueueName(workerID, p)] = 2 * w
	}
	return qs
}
