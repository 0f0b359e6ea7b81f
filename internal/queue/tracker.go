package queue

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"slices"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Event types announced when a task ends.
const (
	EventTaskCompleted = "task.completed"
	EventTaskFailed    = "task.failed"
)

// DefaultConcurrency is the number of tasks a worker runs at once when Options.Concurrency is not set.
const DefaultConcurrency = 10

// DefaultRetryDelay waits 1 s before the first retry and doubles the wait for each further one, up to one minute.
// Up to a fifth of the wait is taken off at random so that tasks that failed together do not retry together.
func DefaultRetryDelay(n int, _ error) time.Duration {
	if n < 1 {
		n = 1
	}
	d := time.Minute
	if n <= 7 { // 1s << 6 = 64 s is already past the cap; larger shifts could overflow
		d = min(time.Second<<(n-1), time.Minute)
	}
	return d - rand.N(d/5)
}

// WithDefaults returns o with its unset fields filled in (Concurrency, RetryDelay).
func (o Options) WithDefaults() Options {
	if o.Concurrency <= 0 {
		o.Concurrency = DefaultConcurrency
	}
	if o.RetryDelay == nil {
		o.RetryDelay = DefaultRetryDelay
	}
	return o
}

// ErrTaskMissing is returned (wrapped, and marked Permanent) by Tracker.Begin when a delivered task has no row:
// there is nothing to run and nowhere to record a result, so retrying cannot help.
var ErrTaskMissing = errors.New("task row not found")

// Tracker mirrors a task's life into its row of the tasks table and announces the task's end on the event bus.
// Both queue implementations drive it, so a task's row reads the same whichever queue ran it.
//
// Attempts are 1-based. RetryCount in the row always tells how many retries have been used: attempt n runs with
// RetryCount n-1, and a failed attempt n that will be retried leaves RetryCount n. A pending row therefore always
// runs next as attempt RetryCount+1, which is what a restarted embedded queue relies on.
type Tracker struct {
	tasks store.TaskStore
	bus   events.Bus // may be nil
	log   *slog.Logger
	now   func() time.Time
}

// NewTracker returns a Tracker writing to tasks and publishing on bus (nil: no events). log may be nil.
func NewTracker(tasks store.TaskStore, bus events.Bus, log *slog.Logger) *Tracker {
	if log == nil {
		log = slog.Default()
	}
	return &Tracker{tasks: tasks, bus: bus, log: log, now: time.Now}
}

// errSkip aborts a store update without an error reaching the caller.
var errSkip = errors.New("skip")

// Begin marks the task as being processed by workerID for the given attempt and returns the stored task.
// skip is true when the task already ended (completed or failed), or when another worker is processing the same
// attempt: a duplicate delivery must never run a task twice. A task pinned to another worker is not begun: the
// error is a *RerouteError naming that worker.
// A missing row is logged and reported as a Permanent error wrapping ErrTaskMissing and model.ErrNotFound.
func (tr *Tracker) Begin(ctx context.Context, taskID, workerID string, attempt int) (t *model.Task, skip bool, err error) {
	if attempt < 1 {
		attempt = 1
	}
	now := tr.now().UTC()
	var holder string
	var reroute *RerouteError
	t, err = tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		if t.Status.Done() {
			return errSkip
		}
		if t.Status == model.TaskProcessing && t.WorkerID != workerID && t.RetryCount >= attempt-1 {
			// Another worker holds this attempt (or a later one). A redelivery after a lost worker's lease expired
			// carries a higher attempt and proceeds; so does the same worker coming back after a restart.
			holder = t.WorkerID
			return errSkip
		}
		if t.TargetWorker != "" && t.TargetWorker != workerID {
			// Pinned to another worker (its VM lives there) after this delivery was queued, say by an attempt that
			// created the VM there: this worker cannot run it, the queue must send it there.
			reroute = &RerouteError{Worker: t.TargetWorker, Priority: t.Priority}
			return errSkip
		}
		t.Status = model.TaskProcessing
		t.WorkerID = workerID
		t.RetryCount = attempt - 1
		if t.StartedAt == nil {
			t.StartedAt = &now
		}
		t.UpdatedAt = now
		return nil
	})
	switch {
	case errors.Is(err, errSkip) && reroute != nil:
		tr.log.InfoContext(ctx, "task is pinned to another worker; rerouting it", "task_id", taskID, "attempt", attempt, "to", reroute.Worker)
		return nil, false, reroute
	case errors.Is(err, errSkip) && holder != "":
		tr.log.WarnContext(ctx, "task attempt is already being processed by another worker; not running it", "task_id", taskID, "attempt", attempt, "holder", holder)
		return nil, true, nil
	case errors.Is(err, errSkip):
		tr.log.InfoContext(ctx, "task already ended; not running it again", "task_id", taskID, "attempt", attempt)
		return nil, true, nil
	case errors.Is(err, model.ErrNotFound):
		tr.log.ErrorContext(ctx, "queued task has no row; failing it without running it", "task_id", taskID, "err", err)
		return nil, false, Permanent(fmt.Errorf("begin task %s: %w: %w", taskID, ErrTaskMissing, err))
	case err != nil:
		return nil, false, fmt.Errorf("begin task %s: %w", taskID, err)
	}
	return t, false, nil
}

// Succeed stores the result, marks the task completed and announces it.
func (tr *Tracker) Succeed(ctx context.Context, taskID string, result json.RawMessage) error {
	now := tr.now().UTC()
	t, err := tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		t.Status = model.TaskCompleted
		t.Result = result
		t.Error = ""
		t.CompletedAt = &now
		t.UpdatedAt = now
		return nil
	})
	if err != nil {
		return fmt.Errorf("complete task %s: %w", taskID, err)
	}
	tr.announce(ctx, EventTaskCompleted, t, now)
	return nil
}

// Retry records that attempt failed with cause and will be retried at nextAt: the task goes back to pending with
// the error kept, so a client sees why it is being retried.
func (tr *Tracker) Retry(ctx context.Context, taskID string, attempt int, cause error, nextAt time.Time) error {
	_, err := tr.retry(ctx, taskID, attempt, cause, nextAt)
	return err
}

// retry is Retry that also tells where the retry must go: the row's routing as it is now (a handler may have
// pinned the task to its worker meanwhile). The route is nil when the row was not updated.
func (tr *Tracker) retry(ctx context.Context, taskID string, attempt int, cause error, nextAt time.Time) (*Route, error) {
	now := tr.now().UTC()
	next := nextAt.UTC()
	var route *Route
	_, err := tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		if t.Status.Done() {
			return errSkip
		}
		t.Status = model.TaskPending
		t.RetryCount = attempt
		t.Error = errText(cause)
		t.ScheduledAt = &next
		t.UpdatedAt = now
		route = &Route{Worker: t.TargetWorker, Priority: t.Priority}
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		return nil, fmt.Errorf("retry task %s: %w", taskID, err)
	}
	return route, nil
}

// Reroute pins the task to worker and puts it back to pending without counting the attempt (it did not run here).
// Only a row still held by workerID for that attempt goes back to pending; the pin is written in any case.
func (tr *Tracker) Reroute(ctx context.Context, taskID, workerID string, attempt int, worker string) (*Route, error) {
	now := tr.now().UTC()
	var route *Route
	_, err := tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		if t.Status.Done() {
			return errSkip
		}
		t.TargetWorker = worker
		if t.Status == model.TaskProcessing && t.WorkerID == workerID && t.RetryCount == attempt-1 {
			t.Status = model.TaskPending
		}
		t.UpdatedAt = now
		route = &Route{Worker: worker, Priority: t.Priority}
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		return nil, fmt.Errorf("reroute task %s: %w", taskID, err)
	}
	return route, nil
}

// Defer puts the task back to pending until at without counting the attempt (nothing of it ran), keeping reason in
// the row so a client sees why it waits. Only a row still held by workerID for that attempt is changed; the route
// is the row's (nil when it was not changed).
func (tr *Tracker) Defer(ctx context.Context, taskID, workerID string, attempt int, reason error, at time.Time) (*Route, error) {
	now := tr.now().UTC()
	next := at.UTC()
	var route *Route
	_, err := tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		if t.Status.Done() || t.Status != model.TaskProcessing || t.WorkerID != workerID || t.RetryCount != attempt-1 {
			return errSkip
		}
		t.Status = model.TaskPending
		t.Error = errText(reason)
		t.ScheduledAt = &next
		t.UpdatedAt = now
		route = &Route{Worker: t.TargetWorker, Priority: t.Priority}
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		return nil, fmt.Errorf("defer task %s: %w", taskID, err)
	}
	return route, nil
}

// Fail marks the task failed for good with cause and announces it.
func (tr *Tracker) Fail(ctx context.Context, taskID string, cause error) error {
	now := tr.now().UTC()
	t, err := tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		if t.Status.Done() {
			return errSkip
		}
		t.Status = model.TaskFailed
		t.Error = errText(cause)
		t.CompletedAt = &now
		t.UpdatedAt = now
		return nil
	})
	switch {
	case errors.Is(err, errSkip):
		return nil
	case err != nil:
		return fmt.Errorf("fail task %s: %w", taskID, err)
	}
	tr.announce(ctx, EventTaskFailed, t, now)
	return nil
}

// Release puts a task that was interrupted by a shutdown back to pending without counting the attempt: the queue
// hands it out again as the same attempt. Only a row still held by workerID for that attempt is touched, so a late
// release cannot undo the work of a worker that has meanwhile picked the task up again.
func (tr *Tracker) Release(ctx context.Context, taskID, workerID string, attempt int) error {
	now := tr.now().UTC()
	_, err := tr.tasks.Update(ctx, taskID, func(t *model.Task) error {
		if t.Status != model.TaskProcessing || t.WorkerID != workerID || t.RetryCount != attempt-1 {
			return errSkip
		}
		t.Status = model.TaskPending
		t.UpdatedAt = now
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		return fmt.Errorf("release task %s: %w", taskID, err)
	}
	return nil
}

// announce publishes the end of t on its own topic and on the topic of all tasks. The store is the source of truth
// and waiters fall back to reading it, so a lost event is logged, not returned.
func (tr *Tracker) announce(ctx context.Context, typ string, t *model.Task, at time.Time) {
	if tr.bus == nil {
		return
	}
	e := events.Event{Type: typ, Subject: t.ID, OwnerID: t.OwnerID, Time: at}
	for _, topic := range []string{events.TaskTopic(t.ID), events.TopicTasks} {
		if err := tr.bus.Publish(ctx, topic, e); err != nil {
			tr.log.WarnContext(ctx, "could not announce task end", "task_id", t.ID, "topic", topic, "err", err)
		}
	}
}

func errText(err error) string {
	if err == nil {
		return "unknown error"
	}
	return err.Error()
}

// Detach returns a context for bookkeeping after a handler ran: it keeps ctx's values but not its cancellation
// (the handler's context may have been cancelled while the outcome must still be stored), bounded by timeout.
func Detach(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), timeout)
}

// Delivery is one hand-out of a task to a worker.
type Delivery struct {
	TaskID   string
	WorkerID string
	// Attempt is 1-based: attempt n is retry n-1.
	Attempt int
	// MaxRetries is how many retries follow a failed first attempt.
	MaxRetries int
}

// OutcomeKind says how a delivery ended.
type OutcomeKind int

const (
	// Skipped: the task had already ended (a duplicate delivery); nothing ran.
	Skipped OutcomeKind = iota
	// Completed: the handler succeeded and the result is stored.
	Completed
	// Retrying: the attempt failed and the task runs again at Outcome.RetryAt (the row says pending).
	Retrying
	// Failed: the task failed for good (permanent error, retries exhausted, no row or no handler).
	Failed
	// Released: the queue is shutting down and cancelled the handler; the row is back to pending and the same
	// attempt must be delivered again later.
	Released
	// Rerouted: the task must run on another worker (Outcome.Route): the same attempt must be delivered on that
	// worker's own queue.
	Rerouted
	// Deferred: the task could not start yet (DeferError): the same attempt must be delivered again at
	// Outcome.RetryAt, on its own route (Outcome.Route, when the row told).
	Deferred
)

func (k OutcomeKind) String() string {
	switch k {
	case Skipped:
		return "skipped"
	case Completed:
		return "completed"
	case Retrying:
		return "retrying"
	case Failed:
		return "failed"
	case Released:
		return "released"
	case Rerouted:
		return "rerouted"
	case Deferred:
		return "deferred"
	}
	return fmt.Sprintf("OutcomeKind(%d)", int(k))
}

// Outcome is how a delivery ended.
type Outcome struct {
	Kind    OutcomeKind
	Err     error     // the failure, for Retrying and Failed; for Completed, a failure to store the result
	RetryAt time.Time // for Retrying and Deferred
	Delay   time.Duration
	// Route is where the next delivery goes, for Rerouted and (when the row told) Retrying: the row's routing at
	// the end of the attempt, which a handler may have changed by pinning the task to its worker.
	Route *Route
}

// Runner runs deliveries the same way for every queue implementation: begin the attempt in the row, call the
// handler of the row's task type, and record the outcome (with the retry policy of Options).
type Runner struct {
	Tracker *Tracker
	// Handler returns the handler of a task type.
	Handler func(model.TaskType) (Handler, bool)
	// RetryDelay gives the wait before retry n.
	RetryDelay func(n int, err error) time.Duration
	// Aborting reports whether the queue is shutting down and has cancelled in-flight handlers; a handler that
	// returns an error then is released (not counted as an attempt). Nil means never.
	Aborting func() bool
	// StoreTimeout bounds each bookkeeping write (default 10 s).
	StoreTimeout time.Duration
	// Granularity, when set, rounds retry times up to a multiple of it: a broker that schedules with coarse
	// timestamps (asynq: whole seconds) then neither runs a retry before its delay nor disagrees with the row.
	Granularity time.Duration
	// Observer, when set, is told how every delivery whose handler ran ended (Options.Observer).
	Observer Observer
}

// errInterruptedLastAttempt fails a task whose last attempt was lost with its worker (asynq redelivers it once
// more after the lease expires, see asynqq).
var errInterruptedLastAttempt = errors.New("interrupted: the worker running the last attempt stopped before it ended")

// Run runs one delivery. ctx is the handler's context; bookkeeping continues past its cancellation.
func (r *Runner) Run(ctx context.Context, d Delivery) Outcome {
	tr := r.Tracker
	if d.Attempt < 1 {
		d.Attempt = 1
	}
	if d.MaxRetries < 0 {
		d.MaxRetries = 0
	}
	if d.Attempt > d.MaxRetries+1 {
		return r.fail(ctx, d, errInterruptedLastAttempt)
	}

	bctx, cancel := Detach(ctx, r.storeTimeout())
	t, skip, err := tr.Begin(bctx, d.TaskID, d.WorkerID, d.Attempt)
	cancel()
	if re, ok := AsReroute(err); ok {
		return Outcome{Kind: Rerouted, Err: err, Route: &Route{Worker: re.Worker, Priority: re.Priority}}
	}
	switch {
	case skip:
		return Outcome{Kind: Skipped}
	case IsPermanent(err):
		// No row: nothing to record, and retrying cannot bring it back.
		return Outcome{Kind: Failed, Err: err}
	case err != nil:
		// The store failed: the attempt counts (it could not run), like a handler error would.
		return r.failed(ctx, d, err)
	}

	h, ok := r.Handler(t.Type)
	if !ok {
		return r.fail(ctx, d, Permanent(fmt.Errorf("no handler registered for task type %q", t.Type)))
	}
	started := time.Now()
	result, herr := call(ctx, tr.log, h, t)
	took := time.Since(started)
	o := r.settle(ctx, d, t, result, herr)
	if r.Observer != nil {
		r.Observer.TaskRan(t, started, took, o.Kind)
	}
	return o
}

// settle records how the handler's run of delivery d ended and returns the outcome.
func (r *Runner) settle(ctx context.Context, d Delivery, t *model.Task, result json.RawMessage, herr error) Outcome {
	tr := r.Tracker
	if herr == nil {
		// A failed write is logged by write; the work is done and running it again would be worse than a stale row.
		err := r.write(ctx, d, "complete", func(c context.Context) error { return tr.Succeed(c, d.TaskID, result) })
		return Outcome{Kind: Completed, Err: err}
	}
	if re, ok := AsReroute(herr); ok {
		if re.Worker == "" || re.Worker == d.WorkerID {
			return r.failed(ctx, d, fmt.Errorf("handler asked to reroute task %s to worker %q, which is not another worker", d.TaskID, re.Worker))
		}
		var route *Route
		err := r.write(ctx, d, "reroute", func(c context.Context) (err error) {
			route, err = tr.Reroute(c, d.TaskID, d.WorkerID, d.Attempt, re.Worker)
			return err
		})
		if route == nil {
			route = &Route{Worker: re.Worker, Priority: t.Priority}
		}
		return Outcome{Kind: Rerouted, Err: errors.Join(herr, err), Route: route}
	}
	if de, ok := AsDefer(herr); ok && ctx.Err() == nil {
		at := tr.now().Add(max(de.After, 0))
		if r.Granularity > 0 {
			at = CeilTime(at, r.Granularity)
		}
		var route *Route
		err := r.write(ctx, d, "defer", func(c context.Context) (err error) {
			route, err = tr.Defer(c, d.TaskID, d.WorkerID, d.Attempt, de.Reason, at)
			return err
		})
		if err != nil {
			// The row still says processing: count the attempt as failed rather than lose track of it.
			return r.failed(ctx, d, errors.Join(herr, err))
		}
		return Outcome{Kind: Deferred, Err: herr, RetryAt: at, Delay: time.Until(at), Route: route}
	}
	if r.Aborting != nil && r.Aborting() && ctx.Err() != nil {
		_ = r.write(ctx, d, "release", func(c context.Context) error { return tr.Release(c, d.TaskID, d.WorkerID, d.Attempt) })
		return Outcome{Kind: Released, Err: herr}
	}
	return r.failed(ctx, d, herr)
}

// failed records a failed attempt: retried while retries remain, unless permanent.
func (r *Runner) failed(ctx context.Context, d Delivery, cause error) Outcome {
	if IsPermanent(cause) || d.Attempt > d.MaxRetries {
		return r.fail(ctx, d, cause)
	}
	now := time.Now()
	at := CeilTime(now.Add(r.RetryDelay(d.Attempt, cause)), r.Granularity)
	delay := at.Sub(now)
	var route *Route
	_ = r.write(ctx, d, "retry", func(c context.Context) (err error) {
		route, err = r.Tracker.retry(c, d.TaskID, d.Attempt, cause, at)
		return err
	})
	return Outcome{Kind: Retrying, Err: cause, RetryAt: at, Delay: delay, Route: route}
}

func (r *Runner) fail(ctx context.Context, d Delivery, cause error) Outcome {
	_ = r.write(ctx, d, "fail", func(c context.Context) error { return r.Tracker.Fail(c, d.TaskID, cause) })
	return Outcome{Kind: Failed, Err: cause}
}

// write runs one bookkeeping write, retrying a few times: the handler's work is done and a short store outage
// should not make the row disagree with it.
func (r *Runner) write(ctx context.Context, d Delivery, what string, fn func(context.Context) error) error {
	var err error
	for i, wait := range []time.Duration{0, 50 * time.Millisecond, 250 * time.Millisecond} {
		if i > 0 {
			time.Sleep(wait)
		}
		c, cancel := Detach(ctx, r.storeTimeout())
		err = fn(c)
		cancel()
		if err == nil || errors.Is(err, model.ErrNotFound) {
			break
		}
	}
	if err != nil {
		r.Tracker.log.ErrorContext(ctx, "could not record task outcome", "task_id", d.TaskID, "attempt", d.Attempt, "op", what, "err", err)
	}
	return err
}

func (r *Runner) storeTimeout() time.Duration {
	if r.StoreTimeout > 0 {
		return r.StoreTimeout
	}
	return 10 * time.Second
}

// call runs h, turning a panic into an error: a bug in one handler must not take the worker down.
func call(ctx context.Context, log *slog.Logger, h Handler, t *model.Task) (res json.RawMessage, err error) {
	defer func() {
		if p := recover(); p != nil {
			log.ErrorContext(ctx, "task handler panicked", "task_id", t.ID, "type", t.Type, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("task handler panicked: %v", p)
		}
	}()
	return h(ctx, t)
}

// SortStats orders queue stats for display: the shared queues by priority, highest first, then every other queue
// (pinned ones) by name.
func SortStats(qs []QueueStats) {
	rank := func(name string) int {
		for i, p := range model.Priorities {
			if name == string(p) {
				return i
			}
		}
		return len(model.Priorities)
	}
	slices.SortFunc(qs, func(a, b QueueStats) int {
		if c := cmp.Compare(rank(a.Name), rank(b.Name)); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

// CeilTime rounds t up to a multiple of g (g <= 0: t unchanged).
func CeilTime(t time.Time, g time.Duration) time.Time {
	if g <= 0 {
		return t
	}
	if r := t.Truncate(g); !r.Equal(t) {
		return r.Add(g)
	}
	return t
}
