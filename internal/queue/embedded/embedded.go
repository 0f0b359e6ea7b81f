// Package embedded is the in-process task queue of `aetherium serve`: no broker, the tasks table is the durable
// queue. Enqueue only records a task's routing in memory (its row was stored, pending, before it was enqueued);
// Start reloads every pending task from the store, so a restart loses nothing, and counts a task that was
// processing when the process died as an interrupted attempt.
//
// Scheduling matches the asynq queue: weighted random choice among the non-empty queues of queue.WorkerQueues
// (critical 6, high 3, default 2, low 1; a worker's pinned queues twice that), retries with Options.RetryDelay,
// delayed first attempts (ProcessAt). Idle workers sleep on a condition variable and a timer drives delayed
// tasks, so there is no polling and pickup takes microseconds.
package embedded

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
)

// ErrInterruptedByRestart is the error of a task that was processing when the process stopped and had no retry left.
var ErrInterruptedByRestart = errors.New("interrupted by a restart")

// DefaultAbortGrace is how long Stop waits, after cancelling the handlers that outlived its context, for them to
// return and put their tasks back to pending.
const DefaultAbortGrace = 5 * time.Second

// Option configures the embedded queue beyond queue.Options.
type Option func(*Queue)

// WithAbortGrace sets how long Stop waits for cancelled handlers to return (default DefaultAbortGrace). A handler
// still running after that is abandoned; its row stays processing and the next Start treats it as interrupted.
func WithAbortGrace(d time.Duration) Option {
	return func(q *Queue) {
		if d > 0 {
			q.abortGrace = d
		}
	}
}

type state int

const (
	stateNew state = iota
	stateRunning
	stateStopping
	stateStopped
)

// entry is one task held by the queue: ready in a FIFO, waiting in the delay heap, or running.
type entry struct {
	id         string
	queue      string
	attempt    int
	maxRetries int
	readyAt    time.Time
	index      int // in the delay heap
}

// Queue is the embedded queue.Queue. It is safe for concurrent use.
type Queue struct {
	tasks      store.TaskStore
	opts       queue.Options
	log        *slog.Logger
	runner     *queue.Runner
	abortGrace time.Duration

	mu       sync.Mutex
	cond     *sync.Cond // signalled when an entry becomes ready or the state changes
	state    state
	handlers map[model.TaskType]queue.Handler
	known    map[string]*entry   // every task held, by id: enqueueing it again is a no-op
	ready    map[string][]*entry // FIFO per queue name
	delayed  delayHeap           // ordered by readyAt
	active   map[string]int      // running tasks per queue name
	weights  map[string]int      // consumed queues (set by Start)
	names    []string            // consumed queue names in a fixed order, for a reproducible weighted choice
	wakeTime chan struct{}       // tells the timer goroutine that the earliest delayed entry changed
	stopping chan struct{}       // closed when Stop begins
	runCtx   context.Context     // parent of handler contexts; cancelled when Stop gives up waiting
	cancel   context.CancelFunc
	aborting atomic.Bool
	wg       sync.WaitGroup // workers and the timer goroutine
}

var _ queue.Queue = (*Queue)(nil)

// New returns an embedded queue over tasks. bus (may be nil) receives the end of every task; log may be nil.
func New(tasks store.TaskStore, bus events.Bus, opts queue.Options, log *slog.Logger, extra ...Option) *Queue {
	if log == nil {
		log = slog.Default()
	}
	opts = opts.WithDefaults()
	q := &Queue{
		tasks:      tasks,
		opts:       opts,
		log:        log.With("component", "queue", "queue", "embedded", "worker_id", opts.WorkerID),
		abortGrace: DefaultAbortGrace,
		handlers:   make(map[model.TaskType]queue.Handler),
		known:      make(map[string]*entry),
		ready:      make(map[string][]*entry),
		active:     make(map[string]int),
		wakeTime:   make(chan struct{}, 1),
		stopping:   make(chan struct{}),
	}
	q.cond = sync.NewCond(&q.mu)
	q.runCtx, q.cancel = context.WithCancel(context.Background())
	for _, o := range extra {
		o(q)
	}
	q.runner = &queue.Runner{
		Tracker:    queue.NewTracker(tasks, bus, q.log),
		Handler:    q.handler,
		RetryDelay: opts.RetryDelay,
		Aborting:   q.aborting.Load,
		Observer:   opts.Observer,
	}
	return q
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

// Enqueue records m in memory. The task's row must already be stored (pending): it is what survives a restart.
// A ProcessAt in the future is also written to the row's scheduled_at so that a restart keeps the delay.
// Enqueueing a task the queue already holds is a no-op. After Stop the message is not held; its row stays pending
// for the next Start.
func (q *Queue) Enqueue(ctx context.Context, m queue.Message) error {
	if m.TaskID == "" {
		return fmt.Errorf("enqueue: %w: empty task id", model.ErrInvalidInput)
	}
	if m.Priority != "" && !m.Priority.Valid() {
		return fmt.Errorf("enqueue task %s: %w: unknown priority %q", m.TaskID, model.ErrInvalidInput, m.Priority)
	}
	delayed := m.ProcessAt.After(time.Now())
	if delayed {
		at := m.ProcessAt.UTC()
		if _, err := q.tasks.Update(ctx, m.TaskID, func(t *model.Task) error {
			t.ScheduledAt = &at
			return nil
		}); err != nil {
			return fmt.Errorf("enqueue task %s: record its schedule: %w", m.TaskID, err)
		}
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state >= stateStopping {
		return nil
	}
	if _, ok := q.known[m.TaskID]; ok {
		return nil
	}
	q.addLocked(&entry{
		id:         m.TaskID,
		queue:      queue.QueueName(m.TargetWorker, m.Priority),
		attempt:    1,
		maxRetries: max(m.MaxRetries, 0),
		readyAt:    m.ProcessAt,
	})
	return nil
}

// addLocked holds e and makes it ready or schedules it. q.mu must be held.
func (q *Queue) addLocked(e *entry) {
	q.known[e.id] = e
	q.scheduleLocked(e)
}

// scheduleLocked puts a held entry in its FIFO, or in the delay heap when its time has not come.
func (q *Queue) scheduleLocked(e *entry) {
	if e.readyAt.After(time.Now()) {
		heap.Push(&q.delayed, e)
		if q.delayed[0] == e {
			select {
			case q.wakeTime <- struct{}{}:
			default:
			}
		}
		return
	}
	q.ready[e.queue] = append(q.ready[e.queue], e)
	q.cond.Signal()
}

// Start loads the pending tasks of this worker (pinned to it or to no worker) from the store and starts
// Concurrency workers.
func (q *Queue) Start(ctx context.Context) error {
	if q.opts.WorkerID == "" {
		return fmt.Errorf("start queue: %w: a worker id is required", model.ErrInvalidInput)
	}
	q.mu.Lock()
	if q.state != stateNew {
		q.mu.Unlock()
		return errors.New("start queue: already started or stopped")
	}
	q.weights = queue.WorkerQueues(q.opts.WorkerID)
	q.names = make([]string, 0, len(q.weights))
	for name := range q.weights {
		q.names = append(q.names, name)
	}
	slices.Sort(q.names)
	q.mu.Unlock()

	if err := q.load(ctx); err != nil {
		return fmt.Errorf("start queue: %w", err)
	}

	q.mu.Lock()
	defer q.mu.Unlock()
	if q.state != stateNew { // stopped while loading
		return errors.New("start queue: stopped while starting")
	}
	q.state = stateRunning
	q.wg.Add(1 + q.opts.Concurrency)
	go q.timer()
	for range q.opts.Concurrency {
		go q.work()
	}
	q.log.InfoContext(ctx, "queue started", "concurrency", q.opts.Concurrency, "held", len(q.known))
	return nil
}

// load reads the unfinished tasks this worker may run. A row this worker left processing was interrupted by the end
// of the previous process: that attempt counts, and the task is retried now if it has retries left, else failed.
func (q *Queue) load(ctx context.Context) error {
	tr := q.runner.Tracker
	for _, target := range []string{store.AnyWorker, q.opts.WorkerID} {
		page := store.Page{Limit: 500}
		for {
			ts, err := q.tasks.List(ctx, store.TaskFilter{
				Statuses:     []model.TaskStatus{model.TaskPending, model.TaskProcessing},
				TargetWorker: target,
				Page:         page,
			})
			if err != nil {
				return fmt.Errorf("load unfinished tasks: %w", err)
			}
			for _, t := range ts {
				e := &entry{
					id:         t.ID,
					queue:      queue.QueueName(t.TargetWorker, t.Priority),
					attempt:    t.RetryCount + 1,
					maxRetries: max(t.MaxRetries, 0),
				}
				if t.ScheduledAt != nil {
					e.readyAt = *t.ScheduledAt
				}
				if t.Status == model.TaskProcessing && t.WorkerID != "" && t.WorkerID != q.opts.WorkerID {
					// Another worker (another process on this store) is running it; only its own restart can
					// tell that it was interrupted.
					q.log.WarnContext(ctx, "leaving a task that another worker is processing", "task_id", t.ID, "holder", t.WorkerID)
					continue
				}
				if t.Status == model.TaskProcessing {
					if t.RetryCount >= e.maxRetries {
						q.log.WarnContext(ctx, "task interrupted by a restart on its last attempt; failing it", "task_id", t.ID)
						if err := tr.Fail(ctx, t.ID, ErrInterruptedByRestart); err != nil {
							return err
						}
						continue
					}
					q.log.WarnContext(ctx, "task interrupted by a restart; retrying it", "task_id", t.ID, "attempt", e.attempt)
					if err := tr.Retry(ctx, t.ID, e.attempt, ErrInterruptedByRestart, time.Now()); err != nil {
						return err
					}
					e.attempt++
					e.readyAt = time.Time{}
				}
				q.mu.Lock()
				if _, ok := q.known[e.id]; !ok {
					q.addLocked(e)
				}
				q.mu.Unlock()
			}
			if len(ts) < page.Limit {
				break
			}
			page.After = ts[len(ts)-1].ID
		}
	}
	return nil
}

// work is one worker: it takes the next ready entry (weighted by queue) and runs it, until Stop.
func (q *Queue) work() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		var e *entry
		for {
			if q.state != stateRunning {
				q.mu.Unlock()
				return
			}
			if e = q.pickLocked(); e != nil {
				break
			}
			q.cond.Wait()
		}
		q.active[e.queue]++
		attempt := e.attempt
		q.mu.Unlock()

		out := q.runner.Run(q.runCtx, queue.Delivery{
			TaskID: e.id, WorkerID: q.opts.WorkerID, Attempt: attempt, MaxRetries: e.maxRetries,
		})

		q.mu.Lock()
		q.active[e.queue]--
		switch out.Kind {
		case queue.Retrying:
			e.attempt++
			e.readyAt = out.RetryAt
			if out.Route != nil {
				e.queue = out.Route.Queue() // the attempt may have pinned the task to this worker
			}
			q.scheduleLocked(e)
		case queue.Deferred:
			// The same attempt again later (nothing of it ran).
			e.readyAt = out.RetryAt
			if out.Route != nil {
				e.queue = out.Route.Queue()
			}
			q.scheduleLocked(e)
		case queue.Rerouted:
			// The same attempt, on the queue of the worker the task is pinned to (here: one nobody else consumes in
			// this process; it waits there, visible in Stats, and the row says where it belongs).
			e.queue = out.Route.Queue()
			e.readyAt = time.Time{}
			q.scheduleLocked(e)
		default:
			delete(q.known, e.id)
		}
		q.mu.Unlock()
		if out.Kind == queue.Rerouted {
			q.log.Info("task rerouted", "task_id", e.id, "attempt", attempt, "to", out.Route.Worker)
		}
		if out.Kind == queue.Retrying || out.Kind == queue.Failed {
			q.log.Info("task attempt failed", "task_id", e.id, "attempt", attempt, "outcome", out.Kind.String(), "err", out.Err)
		}
	}
}

// pickLocked removes and returns the next entry: a queue is chosen among the non-empty consumed ones with
// probability proportional to its weight, so busy high-priority queues cannot starve the others.
func (q *Queue) pickLocked() *entry {
	total := 0
	for _, name := range q.names {
		if len(q.ready[name]) > 0 {
			total += q.weights[name]
		}
	}
	if total == 0 {
		return nil
	}
	n := rand.IntN(total)
	for _, name := range q.names {
		fifo := q.ready[name]
		if len(fifo) == 0 {
			continue
		}
		if n -= q.weights[name]; n < 0 {
			e := fifo[0]
			fifo[0] = nil
			if len(fifo) == 1 {
				delete(q.ready, name)
			} else {
				q.ready[name] = fifo[1:]
			}
			return e
		}
	}
	return nil // unreachable: n < total
}

// timer moves delayed entries to their FIFOs when their time comes.
func (q *Queue) timer() {
	defer q.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		q.mu.Lock()
		now := time.Now()
		for len(q.delayed) > 0 && !q.delayed[0].readyAt.After(now) {
			e := heap.Pop(&q.delayed).(*entry)
			q.ready[e.queue] = append(q.ready[e.queue], e)
			q.cond.Signal()
		}
		wait := time.Hour
		if len(q.delayed) > 0 {
			wait = q.delayed[0].readyAt.Sub(now)
		}
		q.mu.Unlock()

		t.Reset(wait)
		select {
		case <-t.C:
		case <-q.wakeTime:
		case <-q.stopping:
			return
		}
	}
}

// Stop stops taking tasks and waits for the running ones until ctx ends. Then it cancels the handlers still
// running and waits up to the abort grace for them to return: their tasks go back to pending in the store, where
// the next Start finds them. Stop returns an error wrapping ctx.Err() when it had to interrupt tasks.
// A stopped queue cannot be started again.
func (q *Queue) Stop(ctx context.Context) error {
	q.mu.Lock()
	switch q.state {
	case stateNew:
		q.state = stateStopped
		q.mu.Unlock()
		q.cancel()
		return nil
	case stateStopping, stateStopped:
		q.mu.Unlock()
		return nil
	}
	q.state = stateStopping
	close(q.stopping)
	q.cond.Broadcast()
	q.mu.Unlock()

	done := make(chan struct{})
	go func() {
		q.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		if isClosed(done) { // both ready: select picked at random
			break
		}
		q.aborting.Store(true)
		q.cancel()
		err = fmt.Errorf("stop queue: tasks still running were interrupted and left pending: %w", ctx.Err())
		select {
		case <-done:
		case <-time.After(q.abortGrace):
			q.log.Error("task handlers ignored cancellation; abandoning them", "grace", q.abortGrace)
		}
	}
	q.cancel()

	q.mu.Lock()
	q.state = stateStopped
	// What is still held is pending in the store; the next Start reloads it.
	clear(q.known)
	clear(q.ready)
	q.delayed = nil
	q.mu.Unlock()
	q.log.Info("queue stopped")
	return err
}

// Stats counts the held tasks per queue: the shared queues and this worker's own always, plus any other queue that
// holds tasks (pinned to other workers, which this one never runs). It also checks that the store answers.
func (q *Queue) Stats(ctx context.Context) (queue.Stats, error) {
	if _, err := q.tasks.List(ctx, store.TaskFilter{Page: store.Page{Limit: 1}}); err != nil {
		return queue.Stats{}, fmt.Errorf("queue stats: store: %w", err)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	byName := make(map[string]*queue.QueueStats)
	get := func(name string) *queue.QueueStats {
		s, ok := byName[name]
		if !ok {
			s = &queue.QueueStats{Name: name}
			byName[name] = s
		}
		return s
	}
	for _, p := range model.Priorities {
		get(queue.QueueName("", p))
		if q.opts.WorkerID != "" {
			get(queue.QueueName(q.opts.WorkerID, p))
		}
	}
	for name, fifo := range q.ready {
		get(name).Pending += len(fifo)
	}
	for _, e := range q.delayed {
		get(e.queue).Scheduled++
	}
	for name, n := range q.active {
		if n > 0 {
			get(name).Active += n
		}
	}
	st := queue.Stats{Queues: make([]queue.QueueStats, 0, len(byName))}
	for _, s := range byName {
		st.Queues = append(st.Queues, *s)
	}
	queue.SortStats(st.Queues)
	return st, nil
}

// delayHeap is a min-heap of entries by readyAt.
type delayHeap []*entry

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].readyAt.Before(h[j].readyAt) }
func (h delayHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *delayHeap) Push(x any) {
	e := x.(*entry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *delayHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil
	*h = old[:n-1]
	e.index = -1
	return e
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
