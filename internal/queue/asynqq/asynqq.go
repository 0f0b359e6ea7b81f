// Package asynqq is the production task queue: Asynq on Redis. The asynq task id is Aetherium's task id, so
// enqueueing a task twice is harmless, and every delivery is mirrored into the tasks table through queue.Runner.
//
// Retries. Our Runner decides, not asynq: a failed attempt that may be retried returns an error carrying its delay
// (fed back to asynq through RetryDelayFunc, so the row's scheduled_at and asynq's retry time agree), and a final
// failure returns asynq.SkipRetry. Asynq is given one retry more than Message.MaxRetries: that spare delivery only
// happens when asynq's recoverer requeues the last attempt of a worker that died (its lease expired without the
// handler returning). The Runner then fails the task instead of leaving its row "processing" forever.
//
// Namespaces. Asynq has no key prefix, but all its keys hang off queue names ("asynq:{<queue>}:..."), so a namespace
// prefixes every queue name. Deployments (or test runs) sharing one Redis database never see each other's tasks, and
// PurgeNamespace removes exactly one namespace's keys.
package asynqq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
)

// Defaults of the asynq-specific options.
const (
	// DefaultTaskCheckInterval is how long an idle worker waits between polls of its queues (asynq polls: it does not
	// block on Redis). Measured on 2 cores (BenchmarkPickup, enqueue to handler start, including the store write that
	// marks the task processing): asynq's own default of 1 s gives a median of ~0.95 s; 5 ms ~4.6 ms; 2 ms ~2.9 ms;
	// 1 ms ~2 ms. Each idle worker costs Redis ~8% of a core at 5 ms, ~12% at 2 ms, ~16% at 1 ms: raise it (with
	// WithTaskCheckInterval) for fleets of mostly idle workers.
	DefaultTaskCheckInterval = 2 * time.Millisecond
	// DefaultDelayedTaskCheckInterval is how often retries and delayed tasks that are due move to their queue.
	DefaultDelayedTaskCheckInterval = time.Second
	// DefaultTaskTimeout bounds one attempt. Asynq always sets a deadline (30 min unless told); Aetherium's jobs may
	// run commands for up to a day, so the bound is set past that.
	DefaultTaskTimeout = 25 * time.Hour
	// DefaultAbortGrace is how long Stop waits, after cancelling the handlers that outlived its context, for them to
	// return and put their rows back to pending.
	DefaultAbortGrace = 5 * time.Second
)

// requeueTimeout is asynq's ShutdownTimeout. Stop has already waited for in-flight tasks itself (until its context
// ended), so asynq only needs a moment to push the interrupted tasks back to their queues.
const requeueTimeout = 100 * time.Millisecond

// Option configures what queue.Options does not cover.
type Option func(*config)

type config struct {
	namespace            string
	taskCheckInterval    time.Duration
	delayedCheckInterval time.Duration
	taskTimeout          time.Duration
	abortGrace           time.Duration
}

// WithNamespace prefixes every queue name with ns + ":" (see the package comment).
func WithNamespace(ns string) Option { return func(c *config) { c.namespace = ns } }

// WithTaskCheckInterval sets how often an idle worker polls its queues; it trades pickup latency for Redis load.
func WithTaskCheckInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.taskCheckInterval = d
		}
	}
}

// WithDelayedTaskCheckInterval sets how often due retries and delayed tasks are moved to their queues.
func WithDelayedTaskCheckInterval(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.delayedCheckInterval = d
		}
	}
}

// WithTaskTimeout bounds one attempt of a task (the handler's context ends then).
func WithTaskTimeout(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.taskTimeout = d
		}
	}
}

// WithAbortGrace sets how long Stop waits for cancelled handlers to return.
func WithAbortGrace(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.abortGrace = d
		}
	}
}

// ParseRedisURL parses redis://[user:password@]host:port/db (or rediss://, redis-socket://).
func ParseRedisURL(url string) (asynq.RedisConnOpt, error) {
	o, err := asynq.ParseRedisURI(url)
	if err != nil {
		return nil, fmt.Errorf("asynq queue: redis url: %w", err)
	}
	return o, nil
}

// payload is what the asynq task carries besides its id: the task row holds everything else.
type payload struct {
	MaxRetries int `json:"max_retries"`
	// Attempts is how many attempts were used before this asynq task was enqueued: a task moved to another queue
	// (rerouted, or retried on the worker it was pinned to) is a new asynq task whose retry count starts at 0.
	Attempts int `json:"attempts,omitempty"`
}

type state int

const (
	stateNew state = iota
	stateRunning
	stateStopping
	stateStopped
)

// Queue is the asynq queue.Queue. Enqueue and Stats work without Start (the gateway only enqueues).
type Queue struct {
	rdb       redis.UniversalClient
	tasks     store.TaskStore
	client    *asynq.Client
	inspector *asynq.Inspector
	opts      queue.Options
	cfg       config
	prefix    string // namespace + ":" or ""
	log       *slog.Logger
	runner    *queue.Runner

	mu       sync.Mutex
	state    state
	handlers map[model.TaskType]queue.Handler
	server   *asynq.Server

	// In-flight accounting for Stop. A handler call is in flight from process's start until it returns or parks;
	// idle is closed once Stop has begun and nothing is in flight.
	fmu      sync.Mutex
	inflight int
	stopping bool
	idle     chan struct{}

	aborting    atomic.Bool
	abortCtx    context.Context // cancelled when Stop gives up waiting: ends the handlers' contexts
	abortCancel context.CancelFunc
	released    chan struct{} // closed once asynq has pushed interrupted tasks back: parked calls may return
}

var _ queue.Queue = (*Queue)(nil)

// New returns a queue on the Redis that redisOpt describes (asynq.RedisClientOpt, or ParseRedisURL's result).
// tasks is the tasks table, bus (may be nil) receives the end of every task, log may be nil.
func New(redisOpt asynq.RedisConnOpt, tasks store.TaskStore, bus events.Bus, opts queue.Options, log *slog.Logger, extra ...Option) (*Queue, error) {
	rc, ok := redisOpt.MakeRedisClient().(redis.UniversalClient)
	if !ok {
		return nil, fmt.Errorf("asynq queue: unsupported redis option %T", redisOpt)
	}
	if log == nil {
		log = slog.Default()
	}
	cfg := config{
		taskCheckInterval:    DefaultTaskCheckInterval,
		delayedCheckInterval: DefaultDelayedTaskCheckInterval,
		taskTimeout:          DefaultTaskTimeout,
		abortGrace:           DefaultAbortGrace,
	}
	for _, o := range extra {
		o(&cfg)
	}
	opts = opts.WithDefaults()
	q := &Queue{
		rdb:       rc,
		tasks:     tasks,
		client:    asynq.NewClientFromRedisClient(rc),
		inspector: asynq.NewInspectorFromRedisClient(rc),
		opts:      opts,
		cfg:       cfg,
		log:       log.With("component", "queue", "queue", "asynq", "worker_id", opts.WorkerID),
		handlers:  make(map[model.TaskType]queue.Handler),
		idle:      make(chan struct{}),
		released:  make(chan struct{}),
	}
	if cfg.namespace != "" {
		q.prefix = cfg.namespace + ":"
	}
	q.abortCtx, q.abortCancel = context.WithCancel(context.Background())
	q.runner = &queue.Runner{
		Tracker:    queue.NewTracker(tasks, bus, q.log),
		Handler:    q.handler,
		RetryDelay: opts.RetryDelay,
		Aborting:   q.aborting.Load,
		// asynq stores retry and process-at times in whole seconds and moves a task once that second has begun.
		Granularity: time.Second,
		Observer:    opts.Observer,
	}
	return q, nil
}

// NewFromURL is New with a Redis URL.
func NewFromURL(url string, tasks store.TaskStore, bus events.Bus, opts queue.Options, log *slog.Logger, extra ...Option) (*Queue, error) {
	o, err := ParseRedisURL(url)
	if err != nil {
		return nil, err
	}
	return New(o, tasks, bus, opts, log, extra...)
}

// RegisterHandler sets the handler of a task type.
func (q *Queue) RegisterHandler(t model.TaskType, h queue.Handler) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.handlers[t] = h
}

func (q *Queue) handler(t model.TaskType) (queue.Handler, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	h, ok := q.handlers[t]
	return h, ok
}

// redisQueue turns one of our queue names into the asynq queue name.
func (q *Queue) redisQueue(name string) string { return q.prefix + name }

// Enqueue puts m on its queue. Enqueueing a task id that asynq still holds is a no-op success; one that asynq has
// already finished and forgotten is delivered again, and the Runner skips it because its row has ended.
func (q *Queue) Enqueue(ctx context.Context, m queue.Message) error {
	if m.TaskID == "" {
		return fmt.Errorf("enqueue: %w: empty task id", model.ErrInvalidInput)
	}
	if m.Priority != "" && !m.Priority.Valid() {
		return fmt.Errorf("enqueue task %s: %w: unknown priority %q", m.TaskID, model.ErrInvalidInput, m.Priority)
	}
	maxRetries := max(m.MaxRetries, 0)
	data, err := json.Marshal(payload{MaxRetries: maxRetries})
	if err != nil {
		return fmt.Errorf("enqueue task %s: %w", m.TaskID, err)
	}
	typ := string(m.Type)
	if typ == "" {
		typ = "task" // asynq requires a type name; the handler is chosen by the row's type anyway
	}
	aopts := []asynq.Option{
		asynq.TaskID(m.TaskID),
		asynq.Queue(q.redisQueue(queue.QueueName(m.TargetWorker, m.Priority))),
		asynq.MaxRetry(maxRetries + 1), // the spare delivery: see the package comment
		asynq.Timeout(q.cfg.taskTimeout),
	}
	if !m.ProcessAt.IsZero() {
		// Rounded up: asynq keeps whole seconds and would otherwise start the task up to a second early.
		aopts = append(aopts, asynq.ProcessAt(queue.CeilTime(m.ProcessAt, time.Second)))
	}
	_, err = q.client.EnqueueContext(ctx, asynq.NewTask(typ, data), aopts...)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("enqueue task %s: %w", m.TaskID, err)
	}
	return nil
}

// Start starts an asynq server consuming the shared priority queues and this worker's own.
func (q *Queue) Start(ctx context.Context) error {
	if q.opts.WorkerID == "" {
		return fmt.Errorf("start queue: %w: a worker id is required", model.ErrInvalidInput)
	}
	if err := q.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("start queue: redis: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state != stateNew {
		return errors.New("start queue: already started or stopped")
	}
	weights := make(map[string]int)
	for name, w := range queue.WorkerQueues(q.opts.WorkerID) {
		weights[q.redisQueue(name)] = w
	}
	// Before the server starts: its recoverer, which runs at once, then hands the tasks back (see reclaim).
	if n, err := q.reclaim(ctx, weights); err != nil {
		q.log.WarnContext(ctx, "could not take back the tasks a previous run of this worker left active; asynq recovers them when their lease expires", "reclaimed", n, "err", err)
	} else if n > 0 {
		q.log.InfoContext(ctx, "took back tasks a previous run of this worker left active", "tasks", n)
	}
	q.server = asynq.NewServerFromRedisClient(q.rdb, asynq.Config{
		Concurrency:              q.opts.Concurrency,
		Queues:                   weights,
		TaskCheckInterval:        q.cfg.taskCheckInterval,
		DelayedTaskCheckInterval: q.cfg.delayedCheckInterval,
		RetryDelayFunc:           q.retryDelay,
		// A deferred delivery did not run: asynq retries it without counting a retry.
		IsFailure:       isFailure,
		ShutdownTimeout: requeueTimeout,
		Logger:          logAdapter{q.log},
		LogLevel:        asynq.InfoLevel,
		HealthCheckFunc: func(err error) {
			if err != nil {
				q.log.Warn("redis health check failed", "err", err)
			}
		},
	})
	if err := q.server.Start(asynq.HandlerFunc(q.process)); err != nil {
		return fmt.Errorf("start queue: %w", err)
	}
	q.state = stateRunning
	q.log.InfoContext(ctx, "queue started", "concurrency", q.opts.Concurrency, "namespace", q.cfg.namespace)
	return nil
}

// ErrInterruptedByRestart is the error recorded in the row of a task a previous run of this worker left active.
var ErrInterruptedByRestart = errors.New("interrupted: the worker restarted while running it")

// reclaim takes back, at once, the tasks a previous run of this worker (killed, so it could not requeue them)
// left active in asynq. Left alone they would stay active until their lease expires, about a minute later.
//
// A task is this worker's when it is active on one of its own queues (nobody else consumes them), or active on a
// shared queue while its row says this worker is processing it. Either way the previous run is dead: this run has
// not started consuming yet, and a worker id is one process. A task that another live asynq server lists as
// running is left alone whatever the row says (its row may just lag behind). The lease of each such task is set
// to have expired long ago, and the asynq server's recoverer, which runs as the server starts, then retries it
// as it would have after the lease expired (the interrupted attempt counts, like any other failed one). The row
// moves on at once: pending again, or failed if that was its last attempt.
//
// This writes asynq's lease set directly ("asynq:{<queue>}:lease", a sorted set of task ids scored by expiry in
// Unix seconds), the one piece of asynq's Redis layout Aetherium depends on; it is checked against the pinned
// asynq version by TestReclaimAfterKill.
func (q *Queue) reclaim(ctx context.Context, weights map[string]int) (int, error) {
	busy, err := q.othersBusy()
	if err != nil {
		return 0, err
	}
	tr := q.runner.Tracker
	own := make(map[string]bool)
	for _, p := range model.Priorities {
		own[q.redisQueue(queue.QueueName(q.opts.WorkerID, p))] = true
	}
	n := 0
	var errs []error
	for rq := range weights {
		for page := 1; ; page++ {
			active, err := q.inspector.ListActiveTasks(rq, asynq.PageSize(100), asynq.Page(page))
			if errors.Is(err, asynq.ErrQueueNotFound) {
				break
			}
			if err != nil {
				return n, fmt.Errorf("list active tasks of %s: %w", rq, err)
			}
			for _, ti := range active {
				if busy[ti.ID] {
					continue
				}
				row, err := q.tasks.Get(ctx, ti.ID)
				if err != nil && !errors.Is(err, model.ErrNotFound) {
					errs = append(errs, err)
					continue
				}
				mine := row != nil && row.Status == model.TaskProcessing && row.WorkerID == q.opts.WorkerID
				if !own[rq] && !mine {
					continue
				}
				if err := q.rdb.ZAddXX(ctx, "asynq:{"+rq+"}:lease", redis.Z{Score: 1, Member: ti.ID}).Err(); err != nil {
					return n, fmt.Errorf("expire the lease of task %s: %w", ti.ID, err)
				}
				n++
				if mine {
					var err error
					if row.RetryCount >= row.MaxRetries {
						err = tr.Fail(ctx, ti.ID, fmt.Errorf("%w, on its last attempt", ErrInterruptedByRestart))
					} else {
						err = tr.Retry(ctx, ti.ID, row.RetryCount+1, ErrInterruptedByRestart, time.Now())
					}
					errs = append(errs, err)
				}
				q.log.WarnContext(ctx, "task interrupted by a restart of this worker; taking it back", "task_id", ti.ID, "queue", rq)
			}
			if len(active) < 100 {
				break
			}
		}
	}
	return n, errors.Join(errs...)
}

// othersBusy gives the ids of the tasks that live asynq servers other than this worker's previous runs are
// processing. A server is a run of this worker when it consumes this worker's own queue.
func (q *Queue) othersBusy() (map[string]bool, error) {
	servers, err := q.inspector.Servers()
	if err != nil {
		return nil, fmt.Errorf("list asynq servers: %w", err)
	}
	mine := q.redisQueue(queue.QueueName(q.opts.WorkerID, model.PriorityDefault))
	busy := make(map[string]bool)
	for _, srv := range servers {
		if _, ok := srv.Queues[mine]; ok {
			continue
		}
		for _, w := range srv.ActiveWorkers {
			busy[w.TaskID] = true
		}
	}
	return busy, nil
}

// retryError carries the retry time the Runner chose (and stored in the row) to asynq's RetryDelayFunc.
type retryError struct {
	err error
	at  time.Time
	// uncounted marks a deferred delivery: nothing ran, so asynq must not count it as a retry (isFailure).
	uncounted bool
}

// isFailure is asynq's IsFailure: every handler error counts as a failed attempt but a deferral.
func isFailure(err error) bool {
	var re *retryError
	return err != nil && !(errors.As(err, &re) && re.uncounted)
}

func (e *retryError) Error() string { return e.err.Error() }
func (e *retryError) Unwrap() error { return e.err }

// retryDelay gives asynq the Runner's delay; a lease that expired with its worker means a retry at once.
func (q *Queue) retryDelay(n int, err error, _ *asynq.Task) time.Duration {
	var re *retryError
	if errors.As(err, &re) {
		return max(time.Until(re.at), 0)
	}
	if errors.Is(err, asynq.ErrLeaseExpired) {
		// The attempt did not fail, its worker died; the lease already made the task wait (or reclaim took it
		// back because the worker restarted): run it again now.
		return 0
	}
	return q.opts.RetryDelay(n+1, err)
}

// errShutdown is returned by calls that asynq will requeue because the queue is stopping; asynq ignores it.
var errShutdown = errors.New("queue is shutting down: task requeued")

// enter counts a handler call in flight, or reports that Stop has begun.
func (q *Queue) enter() bool {
	q.fmu.Lock()
	defer q.fmu.Unlock()
	if q.stopping {
		return false
	}
	q.inflight++
	return true
}

func (q *Queue) leave() {
	q.fmu.Lock()
	defer q.fmu.Unlock()
	q.inflight--
	if q.stopping && q.inflight == 0 {
		close(q.idle)
	}
}

// beginStopping makes later calls park instead of run, and returns the channel closed when none is in flight.
func (q *Queue) beginStopping() <-chan struct{} {
	q.fmu.Lock()
	defer q.fmu.Unlock()
	q.stopping = true
	if q.inflight == 0 {
		close(q.idle)
	}
	return q.idle
}

// process is the asynq handler: one delivery of one task.
func (q *Queue) process(ctx context.Context, t *asynq.Task) error {
	if !q.enter() {
		// Dequeued just as Stop began: do not start it. Asynq pushes it back (uncounted) when Shutdown aborts the
		// workers still busy; returning before that would let asynq count it as a failed attempt.
		<-q.released
		return errShutdown
	}
	parked := false
	defer func() {
		if !parked {
			q.leave()
		}
	}()

	id, _ := asynq.GetTaskID(ctx)
	retried, _ := asynq.GetRetryCount(ctx)
	rq, _ := asynq.GetQueueName(ctx)
	var p payload
	if err := json.Unmarshal(t.Payload(), &p); err != nil {
		q.log.ErrorContext(ctx, "undecodable asynq payload; dropping the delivery", "task_id", id, "err", err)
		return fmt.Errorf("decode payload of task %s: %w: %w", id, err, asynq.SkipRetry)
	}
	attempt := p.Attempts + retried + 1

	// The handler's context also ends when Stop gives up waiting. asynq's own ctx must stay alive meanwhile: if it
	// ended, asynq would count the interruption as a failed attempt instead of requeueing the task.
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(q.abortCtx, cancel)
	defer stop()

	out := q.runner.Run(hctx, queue.Delivery{TaskID: id, WorkerID: q.opts.WorkerID, Attempt: attempt, MaxRetries: p.MaxRetries})
	switch out.Kind {
	case queue.Skipped, queue.Completed:
		return nil
	case queue.Rerouted:
		// The same attempt again, on the queue of the worker the task is pinned to. Once the move is made this
		// asynq task is done (returning nil deletes it); if the move fails, asynq retries it here, and the next
		// delivery tries again.
		if err := q.move(ctx, t, id, p, attempt-1, *out.Route, time.Time{}); err != nil {
			q.log.ErrorContext(ctx, "could not reroute task; retrying", "task_id", id, "to", out.Route.Worker, "err", err)
			return err
		}
		q.log.InfoContext(ctx, "task rerouted", "task_id", id, "attempt", attempt, "to", out.Route.Worker)
		return nil
	case queue.Deferred:
		q.log.DebugContext(ctx, "task deferred", "task_id", id, "attempt", attempt, "until", out.RetryAt, "err", out.Err)
		if out.Route != nil && q.redisQueue(out.Route.Queue()) != rq {
			if err := q.move(ctx, t, id, p, attempt-1, *out.Route, out.RetryAt); err == nil {
				return nil
			}
		}
		return &retryError{err: out.Err, at: out.RetryAt, uncounted: true}
	case queue.Retrying:
		q.log.InfoContext(ctx, "task attempt failed; retrying", "task_id", id, "attempt", attempt, "retry_in", out.Delay, "err", out.Err)
		if out.Route != nil && q.redisQueue(out.Route.Queue()) != rq {
			// The attempt pinned the task to a worker (it made the task's VM there): the retry must run there.
			err := q.move(ctx, t, id, p, attempt, *out.Route, out.RetryAt)
			if err == nil {
				return nil
			}
			// Retried here instead; whoever gets it forwards it (Tracker.Begin sees the pin).
			q.log.ErrorContext(ctx, "could not move the retry to the worker the task is pinned to", "task_id", id, "to", out.Route.Worker, "err", err)
		}
		return &retryError{err: out.Err, at: out.RetryAt}
	case queue.Released:
		parked = true
		q.leave()
		<-q.released
		return errShutdown
	default: // queue.Failed
		q.log.InfoContext(ctx, "task failed", "task_id", id, "attempt", attempt, "err", out.Err)
		return fmt.Errorf("%w (%w)", out.Err, asynq.SkipRetry)
	}
}

// move enqueues task id as a new asynq task on the queue of route, to run at (zero: now), with used attempts
// behind it. A task of that id already on that queue is left as it is (it is the same task).
func (q *Queue) move(ctx context.Context, t *asynq.Task, id string, p payload, used int, route queue.Route, at time.Time) error {
	data, err := json.Marshal(payload{MaxRetries: p.MaxRetries, Attempts: used})
	if err != nil {
		return fmt.Errorf("move task %s: %w", id, err)
	}
	aopts := []asynq.Option{
		asynq.TaskID(id),
		asynq.Queue(q.redisQueue(route.Queue())),
		asynq.MaxRetry(max(p.MaxRetries-used, 0) + 1), // keeps the spare delivery (see the package comment)
		asynq.Timeout(q.cfg.taskTimeout),
	}
	if at.After(time.Now()) {
		aopts = append(aopts, asynq.ProcessAt(queue.CeilTime(at, time.Second)))
	}
	mctx, cancel := queue.Detach(ctx, 10*time.Second)
	defer cancel()
	_, err = q.client.EnqueueContext(mctx, asynq.NewTask(t.Type(), data), aopts...)
	if err != nil && !errors.Is(err, asynq.ErrTaskIDConflict) {
		return fmt.Errorf("move task %s to %s: %w", id, route.Queue(), err)
	}
	return nil
}

// Stop stops taking tasks and waits for the running ones until ctx ends. Then it cancels the handlers still
// running, waits up to the abort grace for them to put their rows back to pending, and has asynq push their tasks
// back to the queues. Stop returns an error wrapping ctx.Err() when it had to interrupt tasks. A stopped queue
// cannot be started again; Close releases the Redis connection.
func (q *Queue) Stop(ctx context.Context) error {
	q.mu.Lock()
	switch q.state {
	case stateNew:
		q.state = stateStopped
		q.mu.Unlock()
		return nil
	case stateStopping, stateStopped:
		q.mu.Unlock()
		return nil
	}
	q.state = stateStopping
	srv := q.server
	q.mu.Unlock()

	idle := q.beginStopping()
	srv.Stop() // no more dequeues
	var err error
	select {
	case <-idle:
	case <-ctx.Done():
		if isClosed(idle) { // both ready: select picked at random
			break
		}
		q.aborting.Store(true)
		q.abortCancel()
		err = fmt.Errorf("stop queue: tasks still running were interrupted and requeued: %w", ctx.Err())
		select {
		case <-idle:
		case <-time.After(q.cfg.abortGrace):
			q.log.Error("task handlers ignored cancellation; requeueing their tasks anyway", "grace", q.cfg.abortGrace)
		}
	}
	srv.Shutdown() // pushes back the tasks of parked calls, after requeueTimeout
	close(q.released)
	q.abortCancel()

	q.mu.Lock()
	q.state = stateStopped
	q.mu.Unlock()
	q.log.Info("queue stopped")
	return err
}

// Close stops the queue if it runs (giving in-flight tasks up to 10 s) and closes the Redis connection.
func (q *Queue) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stopErr := q.Stop(ctx)
	return errors.Join(stopErr, q.rdb.Close())
}

// Stats reports the shared queues, this worker's own and any other worker's queue of the namespace that exists in
// Redis. Scheduled counts both delayed tasks and retries waiting for their time. An error means Redis is unusable.
func (q *Queue) Stats(ctx context.Context) (queue.Stats, error) {
	if err := q.rdb.Ping(ctx).Err(); err != nil {
		return queue.Stats{}, fmt.Errorf("queue stats: redis: %w", err)
	}
	all, err := q.inspector.Queues()
	if err != nil {
		return queue.Stats{}, fmt.Errorf("queue stats: %w", err)
	}
	exists := make(map[string]bool, len(all))
	names := make(map[string]bool)
	for _, rq := range all {
		exists[rq] = true
		if name, ok := strings.CutPrefix(rq, q.prefix); ok && (q.prefix != "" || isOurs(name)) {
			names[name] = true
		}
	}
	for _, p := range model.Priorities {
		names[queue.QueueName("", p)] = true
		if q.opts.WorkerID != "" {
			names[queue.QueueName(q.opts.WorkerID, p)] = true
		}
	}
	st := queue.Stats{Queues: make([]queue.QueueStats, 0, len(names))}
	for name := range names {
		s := queue.QueueStats{Name: name}
		if rq := q.redisQueue(name); exists[rq] {
			info, err := q.inspector.GetQueueInfo(rq)
			if err != nil {
				return queue.Stats{}, fmt.Errorf("queue stats: %s: %w", name, err)
			}
			s.Pending, s.Active, s.Scheduled = info.Pending, info.Active, info.Scheduled+info.Retry
		}
		st.Queues = append(st.Queues, s)
	}
	queue.SortStats(st.Queues)
	return st, nil
}

// isOurs reports whether an asynq queue name outside any namespace is one of Aetherium's.
func isOurs(name string) bool {
	if model.Priority(name).Valid() {
		return true
	}
	return strings.HasPrefix(name, "worker:")
}

// PurgeNamespace deletes every asynq key of the namespace ns (its queues, tasks and statistics) and forgets its
// queues. It refuses the empty namespace, which would mean every queue of the database.
func PurgeNamespace(ctx context.Context, rdb redis.UniversalClient, ns string) error {
	if ns == "" {
		return errors.New("purge namespace: empty namespace")
	}
	pattern := "asynq:{" + globEscape(ns+":") + "*"
	var keys []string
	iter := rdb.Scan(ctx, 0, pattern, 500).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("purge namespace %s: %w", ns, err)
	}
	for len(keys) > 0 {
		n := min(len(keys), 500)
		if err := rdb.Unlink(ctx, keys[:n]...).Err(); err != nil {
			return fmt.Errorf("purge namespace %s: %w", ns, err)
		}
		keys = keys[n:]
	}
	queues, err := rdb.SMembers(ctx, "asynq:queues").Result()
	if err != nil {
		return fmt.Errorf("purge namespace %s: %w", ns, err)
	}
	var mine []any
	for _, qn := range queues {
		if strings.HasPrefix(qn, ns+":") {
			mine = append(mine, qn)
		}
	}
	if len(mine) > 0 {
		if err := rdb.SRem(ctx, "asynq:queues", mine...).Err(); err != nil {
			return fmt.Errorf("purge namespace %s: %w", ns, err)
		}
	}
	return nil
}

func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// logAdapter routes asynq's logs to slog. Asynq's info messages (start, stop) are routine, so they go to debug.
type logAdapter struct{ l *slog.Logger }

func (a logAdapter) Debug(args ...any) { a.l.Debug(fmt.Sprint(args...)) }
func (a logAdapter) Info(args ...any)  { a.l.Debug(fmt.Sprint(args...)) }
func (a logAdapter) Warn(args ...any)  { a.l.Warn(fmt.Sprint(args...)) }
func (a logAdapter) Error(args ...any) { a.l.Error(fmt.Sprint(args...)) }

// Fatal: with a custom logger asynq does not exit the process, so this is only a loud error.
func (a logAdapter) Fatal(args ...any) { a.l.Error("asynq fatal: " + fmt.Sprint(args...)) }

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
