// Package queuetest is the conformance suite of the queue seam: the asynq queue and the embedded queue both run
// Run (and BenchmarkPickup), so "embedded" never drifts from "production".
//
// The suite plays a small deployment on one backend: a gateway queue that only enqueues (never started) and one or
// two worker queues with their own worker ids, all over one tasks table and one event bus. Task rows are created
// pending before they are enqueued, as the task service does. Backlogs are enqueued before the workers start: an
// embedded queue holds what its own Enqueue gave it and, at Start, what the store says is pending for it, so that is
// how a backlog reaches an embedded worker other than the gateway.
package queuetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
)

// Backend is one isolated set of backing services (a real store and bus; for asynq, a Redis namespace).
type Backend struct {
	Tasks store.TaskStore
	Bus   events.Bus
	// NewQueue builds a queue over the backend. The suite sets opts (worker id, concurrency, retry delay) and stops
	// the queue before the test ends; NewQueue registers any further cleanup (closing connections) with t.Cleanup.
	// Queues built with the same WorkerID act as one worker restarted.
	NewQueue func(t testing.TB, opts queue.Options) queue.Queue
}

// Factory returns a new, isolated Backend, with its cleanup registered on t.
type Factory func(t testing.TB) *Backend

// TaskType is the type of the suite's tasks.
const TaskType model.TaskType = "test:task"

const (
	waitFor = 15 * time.Second // bound of every wait; reaching it is a failure
	owner   = "owner-1"
)

// retryUnit scales the suite's retry delays: short, to keep the suite fast, yet long enough to be seen.
const retryUnit = 20 * time.Millisecond

func shortRetry(n int, _ error) time.Duration { return time.Duration(n) * retryUnit }

// Run runs the conformance suite against the backends newBackend builds; each test gets a new backend.
func Run(t *testing.T, newBackend Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, *Backend)
	}{
		{"RunsStoredTask", testRunsStoredTask},
		{"RetriesWithBackoffThenFails", testRetriesThenFails},
		{"RetryKeepsErrorAndSchedule", testRetryState},
		{"RetryThenSucceeds", testRetryThenSucceeds},
		{"PermanentErrorFailsAtOnce", testPermanent},
		{"PanicIsAFailedAttempt", testPanic},
		{"UnknownTypeFails", testUnknownType},
		{"MissingRowIsNotRun", testMissingRow},
		{"DuplicateEnqueueRunsOnce", testDuplicateEnqueue},
		{"NeverRunsTwiceAcrossWorkers", testNeverTwice},
		{"WeightedPriorities", testPriorities},
		{"PinnedTasksRunOnTheirWorker", testPinned},
		{"RetryFollowsThePinOfItsAttempt", testRetryFollowsPin},
		{"TaskPinnedElsewhereIsRerouted", testPinnedElsewhere},
		{"HandlerReroutesWithoutCountingTheAttempt", testHandlerReroute},
		{"DeferredTaskWaitsWithoutUsingItsRetries", testHandlerDefer},
		{"ProcessAtDelaysFirstAttempt", testProcessAt},
		{"StopDrainsInFlight", testStopDrains},
		{"StopRequeuesUnfinished", testStopRequeues},
		{"CompletionPublishesEvents", testEvents},
		{"StatsCountsPending", testStats},
		{"RestartResumesPending", testRestart},
		{"EnqueueRejectsBadInput", testBadInput},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newBackend(t)) })
	}
}

// ---- helpers ----

type taskOpt func(*model.Task)

func withPriority(p model.Priority) taskOpt { return func(t *model.Task) { t.Priority = p } }
func pinnedTo(w string) taskOpt             { return func(t *model.Task) { t.TargetWorker = w } }
func withRetries(n int) taskOpt             { return func(t *model.Task) { t.MaxRetries = n } }
func withType(typ model.TaskType) taskOpt   { return func(t *model.Task) { t.Type = typ } }
func withPayload(p string) taskOpt          { return func(t *model.Task) { t.Payload = json.RawMessage(p) } }

// create stores a pending task, as the task service does before it enqueues it.
func create(t testing.TB, b *Backend, opts ...taskOpt) *model.Task {
	t.Helper()
	task := &model.Task{
		ID:       uuid.NewString(),
		OwnerID:  owner,
		Type:     TaskType,
		Status:   model.TaskPending,
		Priority: model.PriorityDefault,
		Payload:  json.RawMessage(`{"n":1}`),
	}
	for _, o := range opts {
		o(task)
	}
	if err := b.Tasks.Create(context.Background(), task); err != nil {
		t.Fatalf("create task: %v", err)
	}
	return task
}

func message(task *model.Task) queue.Message {
	return queue.Message{
		TaskID: task.ID, Type: task.Type, Priority: task.Priority, TargetWorker: task.TargetWorker,
		MaxRetries: task.MaxRetries,
	}
}

func enqueue(t testing.TB, q queue.Queue, m queue.Message) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := q.Enqueue(ctx, m); err != nil {
		t.Fatalf("enqueue %s: %v", m.TaskID, err)
	}
}

// newQueue builds a queue and makes sure it is stopped when the test ends.
func newQueue(t testing.TB, b *Backend, worker string, concurrency int) queue.Queue {
	t.Helper()
	q := b.NewQueue(t, queue.Options{WorkerID: worker, Concurrency: concurrency, RetryDelay: shortRetry})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := q.Stop(ctx); err != nil {
			t.Errorf("stop queue %q: %v", worker, err)
		}
	})
	return q
}

func start(t testing.TB, q queue.Queue) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := q.Start(ctx); err != nil {
		t.Fatalf("start queue: %v", err)
	}
}

func get(t testing.TB, b *Backend, id string) *model.Task {
	t.Helper()
	task, err := b.Tasks.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get task %s: %v", id, err)
	}
	return task
}

// waitDone polls the task's row until it has ended.
func waitDone(t testing.TB, b *Backend, id string) *model.Task {
	t.Helper()
	return waitRow(t, b, id, "an end", func(task *model.Task) bool { return task.Status.Done() })
}

// waitRow polls the task's row until ok accepts it.
func waitRow(t testing.TB, b *Backend, id, what string, ok func(*model.Task) bool) *model.Task {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for {
		task := get(t, b, id)
		if ok(task) {
			return task
		}
		if time.Now().After(deadline) {
			t.Fatalf("task %s: no %s within %v; row: status=%s retry_count=%d error=%q", id, what, waitFor, task.Status, task.RetryCount, task.Error)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// run is one execution of a handler.
type run struct {
	TaskID  string
	Worker  string
	Task    model.Task // as the handler received it
	Started time.Time
	Ended   time.Time
}

// recorder counts handler executions.
type recorder struct {
	mu      sync.Mutex
	runs    []run
	started chan run
}

func newRecorder() *recorder { return &recorder{started: make(chan run, 4096)} }

type behaviour func(ctx context.Context, t *model.Task, attempt int) (json.RawMessage, error)

func succeed(_ context.Context, t *model.Task, _ int) (json.RawMessage, error) {
	return json.RawMessage(fmt.Sprintf(`{"done":%q}`, t.ID)), nil
}

// handler records every execution on worker and then behaves as do. attempt is 1 + the runs seen for the task.
func (r *recorder) handler(worker string, do behaviour) queue.Handler {
	return func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		rn := run{TaskID: t.ID, Worker: worker, Task: *t, Started: time.Now()}
		r.mu.Lock()
		attempt := 1
		for _, x := range r.runs {
			if x.TaskID == t.ID {
				attempt++
			}
		}
		idx := len(r.runs)
		r.runs = append(r.runs, rn)
		r.mu.Unlock()
		r.started <- rn
		res, err := do(ctx, t, attempt)
		r.mu.Lock()
		r.runs[idx].Ended = time.Now()
		r.mu.Unlock()
		return res, err
	}
}

func (r *recorder) of(id string) []run {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []run
	for _, x := range r.runs {
		if x.TaskID == id {
			out = append(out, x)
		}
	}
	return out
}

func (r *recorder) all() []run {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.runs)
}

// waitStarted returns the next execution that starts.
func (r *recorder) waitStarted(t testing.TB) run {
	t.Helper()
	select {
	case rn := <-r.started:
		return rn
	case <-time.After(waitFor):
		t.Fatalf("no handler started within %v", waitFor)
	}
	return run{}
}

func worker(q queue.Queue, r *recorder, name string, do behaviour) queue.Queue {
	q.RegisterHandler(TaskType, r.handler(name, do))
	return q
}

// ---- tests ----

func testRunsStoredTask(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 2), rec, "w1", succeed)
	start(t, q)
	task := create(t, b, withRetries(2))
	enqueue(t, q, message(task))
	done := waitDone(t, b, task.ID)

	runs := rec.of(task.ID)
	if len(runs) != 1 {
		t.Fatalf("handler ran %d times, want 1", len(runs))
	}
	got := runs[0].Task
	var payload struct{ N int }
	if err := json.Unmarshal(got.Payload, &payload); err != nil || payload.N != 1 {
		t.Errorf("handler got payload %s (%v), want the stored {\"n\":1}", got.Payload, err)
	}
	if got.ID != task.ID || got.Type != TaskType || got.OwnerID != owner {
		t.Errorf("handler got task %+v, want the stored one", got)
	}
	if got.Status != model.TaskProcessing || got.WorkerID != "w1" || got.StartedAt == nil || got.RetryCount != 0 {
		t.Errorf("handler got status=%s worker=%q started_at=%v retry_count=%d; want processing, w1, set, 0",
			got.Status, got.WorkerID, got.StartedAt, got.RetryCount)
	}
	if done.Status != model.TaskCompleted || done.Error != "" || done.CompletedAt == nil || done.WorkerID != "w1" {
		t.Errorf("row after success: status=%s error=%q completed_at=%v worker=%q", done.Status, done.Error, done.CompletedAt, done.WorkerID)
	}
	var res struct{ Done string }
	if err := json.Unmarshal(done.Result, &res); err != nil || res.Done != task.ID {
		t.Errorf("stored result %s (%v), want the handler's", done.Result, err)
	}
}

func testRetriesThenFails(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 2), rec, "w1", func(_ context.Context, _ *model.Task, attempt int) (json.RawMessage, error) {
		return nil, fmt.Errorf("boom %d", attempt)
	})
	start(t, q)
	task := create(t, b, withRetries(2))
	enqueue(t, q, message(task))
	done := waitDone(t, b, task.ID)

	if done.Status != model.TaskFailed || done.Error != "boom 3" || done.RetryCount != 2 || done.CompletedAt == nil {
		t.Errorf("row: status=%s error=%q retry_count=%d completed_at=%v; want failed, %q, 2, set",
			done.Status, done.Error, done.RetryCount, done.CompletedAt, "boom 3")
	}
	runs := rec.of(task.ID)
	if len(runs) != 3 {
		t.Fatalf("handler ran %d times, want 3 (1 + MaxRetries)", len(runs))
	}
	for i, rn := range runs {
		if rn.Task.RetryCount != i {
			t.Errorf("attempt %d saw retry_count %d, want %d", i+1, rn.Task.RetryCount, i)
		}
		if i > 0 {
			// Backoff: retry n waits at least RetryDelay(n) after attempt n ended.
			if gap, min := rn.Started.Sub(runs[i-1].Ended), shortRetry(i, nil); gap < min {
				t.Errorf("retry %d started %v after the previous attempt ended, want >= %v", i, gap, min)
			}
		}
	}
}

func testRetryState(t *testing.T, b *Backend) {
	rec := newRecorder()
	// A long delay keeps the task waiting for its retry while the test looks at it.
	q := b.NewQueue(t, queue.Options{WorkerID: "w1", Concurrency: 1, RetryDelay: func(int, error) time.Duration { return time.Hour }})
	t.Cleanup(func() { _ = q.Stop(context.Background()) })
	worker(q, rec, "w1", func(context.Context, *model.Task, int) (json.RawMessage, error) {
		return nil, errors.New("vm host unreachable")
	})
	start(t, q)
	task := create(t, b, withRetries(3), withPriority(model.PriorityHigh))
	before := time.Now()
	enqueue(t, q, message(task))
	row := waitRow(t, b, task.ID, "scheduled retry", func(r *model.Task) bool {
		return r.Status == model.TaskPending && r.RetryCount == 1
	})
	if row.Error != "vm host unreachable" {
		t.Errorf("pending row keeps error %q, want the attempt's", row.Error)
	}
	if row.ScheduledAt == nil || row.ScheduledAt.Before(before.Add(59*time.Minute)) {
		t.Errorf("scheduled_at %v, want about an hour from now", row.ScheduledAt)
	}
	// The row is written before the queue files the task for its retry: poll until it has.
	deadline := time.Now().Add(waitFor)
	for {
		s := find(stats(t, q), "high")
		if s.Scheduled == 1 && s.Pending == 0 && s.Active == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats of queue high: %+v; want 1 scheduled, nothing pending or active", s)
		}
		time.Sleep(2 * time.Millisecond)
	}
	if n := len(rec.of(task.ID)); n != 1 {
		t.Errorf("handler ran %d times, want 1", n)
	}
}

func testRetryThenSucceeds(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 2), rec, "w1", func(ctx context.Context, task *model.Task, attempt int) (json.RawMessage, error) {
		if attempt == 1 {
			return nil, errors.New("transient")
		}
		return succeed(ctx, task, attempt)
	})
	start(t, q)
	task := create(t, b, withRetries(3))
	enqueue(t, q, message(task))
	done := waitDone(t, b, task.ID)
	if done.Status != model.TaskCompleted || done.Error != "" || done.RetryCount != 1 {
		t.Errorf("row: status=%s error=%q retry_count=%d; want completed, no error, 1", done.Status, done.Error, done.RetryCount)
	}
	if n := len(rec.of(task.ID)); n != 2 {
		t.Errorf("handler ran %d times, want 2", n)
	}
}

func testPermanent(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 2), rec, "w1", func(context.Context, *model.Task, int) (json.RawMessage, error) {
		return nil, fmt.Errorf("validate: %w", queue.Permanent(errors.New("image does not exist")))
	})
	start(t, q)
	task := create(t, b, withRetries(5))
	sub := subscribe(t, b, events.TaskTopic(task.ID))
	enqueue(t, q, message(task))
	done := waitDone(t, b, task.ID)
	if done.Status != model.TaskFailed || done.RetryCount != 0 || !strings.Contains(done.Error, "image does not exist") {
		t.Errorf("row: status=%s retry_count=%d error=%q; want failed after one attempt with the error", done.Status, done.RetryCount, done.Error)
	}
	if n := len(rec.of(task.ID)); n != 1 {
		t.Errorf("handler ran %d times, want exactly 1", n)
	}
	e := nextEvent(t, sub)
	if e.Type != queue.EventTaskFailed || e.Subject != task.ID || e.OwnerID != owner {
		t.Errorf("event %+v, want %s of %s for %s", e, queue.EventTaskFailed, task.ID, owner)
	}
}

func testPanic(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", func(context.Context, *model.Task, int) (json.RawMessage, error) {
		panic("handler bug")
	})
	start(t, q)
	task := create(t, b, withRetries(1))
	enqueue(t, q, message(task))
	done := waitDone(t, b, task.ID)
	if done.Status != model.TaskFailed || !strings.Contains(done.Error, "handler bug") || done.RetryCount != 1 {
		t.Errorf("row: status=%s error=%q retry_count=%d; want failed with the panic after 2 attempts", done.Status, done.Error, done.RetryCount)
	}
	if n := len(rec.of(task.ID)); n != 2 {
		t.Errorf("handler ran %d times, want 2", n)
	}
}

func testUnknownType(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, q)
	task := create(t, b, withRetries(3), withType("test:nobody-handles-this"))
	enqueue(t, q, message(task))
	done := waitDone(t, b, task.ID)
	if done.Status != model.TaskFailed || !strings.Contains(done.Error, "test:nobody-handles-this") || done.RetryCount != 0 {
		t.Errorf("row: status=%s error=%q retry_count=%d; want failed at once, naming the type", done.Status, done.Error, done.RetryCount)
	}
}

func testMissingRow(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	missing := queue.Message{TaskID: uuid.NewString(), Type: TaskType, MaxRetries: 3}
	marker := create(t, b)
	// Same queue, concurrency 1, enqueued in this order before Start: once the marker is done, the missing task's
	// delivery has been dealt with.
	enqueue(t, q, missing)
	enqueue(t, q, message(marker))
	start(t, q)
	waitDone(t, b, marker.ID)
	if n := len(rec.of(missing.TaskID)); n != 0 {
		t.Errorf("handler ran %d times for a task without a row, want 0", n)
	}
}

func testDuplicateEnqueue(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	task := create(t, b)
	for range 3 {
		enqueue(t, q, message(task))
	}
	start(t, q)
	waitDone(t, b, task.ID)
	// Once more after it ended, then a marker behind it on the same queue (concurrency 1).
	enqueue(t, q, message(task))
	marker := create(t, b)
	enqueue(t, q, message(marker))
	waitDone(t, b, marker.ID)
	if n := len(rec.of(task.ID)); n != 1 {
		t.Errorf("handler ran %d times for a task enqueued 4 times, want 1", n)
	}
}

func testNeverTwice(t *testing.T, b *Backend) {
	rec := newRecorder()
	gw := newQueue(t, b, "", 1)
	var tasks []*model.Task
	for i := range 30 {
		task := create(t, b, withPriority(model.Priorities[i%len(model.Priorities)]))
		tasks = append(tasks, task)
		enqueue(t, gw, message(task))
		enqueue(t, gw, message(task))
	}
	w1 := worker(newQueue(t, b, "w1", 4), rec, "w1", succeed)
	w2 := worker(newQueue(t, b, "w2", 4), rec, "w2", succeed)
	start(t, w1)
	start(t, w2)
	for _, task := range tasks {
		if done := waitDone(t, b, task.ID); done.Status != model.TaskCompleted {
			t.Errorf("task %s: %s (%s)", task.ID, done.Status, done.Error)
		}
	}
	for _, task := range tasks {
		if n := len(rec.of(task.ID)); n != 1 {
			t.Errorf("task %s ran %d times, want 1", task.ID, n)
		}
	}
}

func testPriorities(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	const each = 50
	prio := make(map[string]model.Priority)
	var tasks []*model.Task
	// Low first, so that plain FIFO order would fail the test.
	for i := range 2 * each {
		p := model.PriorityLow
		if i >= each {
			p = model.PriorityCritical
		}
		task := create(t, b, withPriority(p))
		prio[task.ID] = p
		tasks = append(tasks, task)
		enqueue(t, q, message(task))
	}
	start(t, q)
	for _, task := range tasks {
		waitDone(t, b, task.ID)
	}
	runs := rec.all()
	if len(runs) != 2*each {
		t.Fatalf("%d executions, want %d", len(runs), 2*each)
	}
	// Critical weighs 6 against low's 1: while both have work, each pick is critical with probability 6/7, so
	// about 34 of the first 40 are critical. 26 or fewer is a failure of the weighting (chance < 1e-4 otherwise);
	// at least one low task among them shows the weighting is not strict priority (a strict order would run all
	// 40 critical first; chance that weighting does that: (6/7)^40 < 0.3%).
	critical := 0
	for _, rn := range runs[:40] {
		if prio[rn.TaskID] == model.PriorityCritical {
			critical++
		}
	}
	if critical < 27 {
		t.Errorf("%d of the first 40 tasks handled were critical, want >= 27 (weights 6:1)", critical)
	}
	if critical == 40 {
		t.Logf("all of the first 40 were critical: weighting looks strict (possible, chance < 0.3%%)")
	}
}

func testPinned(t *testing.T, b *Backend) {
	rec := newRecorder()
	gw := newQueue(t, b, "", 1)
	want := make(map[string]string)
	var tasks []*model.Task
	for i := range 16 {
		w := []string{"w1", "w2"}[i%2]
		task := create(t, b, pinnedTo(w), withPriority(model.Priorities[i%len(model.Priorities)]))
		want[task.ID] = w
		tasks = append(tasks, task)
		enqueue(t, gw, message(task))
	}
	w1 := worker(newQueue(t, b, "w1", 2), rec, "w1", succeed)
	w2 := worker(newQueue(t, b, "w2", 2), rec, "w2", succeed)
	start(t, w1)
	start(t, w2)
	for _, task := range tasks {
		done := waitDone(t, b, task.ID)
		if done.WorkerID != want[task.ID] {
			t.Errorf("pinned task %s was processed by %q, want %q", task.ID, done.WorkerID, want[task.ID])
		}
		runs := rec.of(task.ID)
		if len(runs) != 1 || runs[0].Worker != want[task.ID] {
			t.Errorf("pinned task %s ran %d times (%v), want once on %s", task.ID, len(runs), runs, want[task.ID])
		}
	}
}

// pin writes the row's target worker, as a handler does once it made the task's VM on its worker.
func pin(ctx context.Context, b *Backend, id, w string) error {
	_, err := b.Tasks.Update(ctx, id, func(t *model.Task) error { t.TargetWorker = w; return nil })
	return err
}

// testRetryFollowsPin: an attempt that pins its (shared) task to its worker and fails has its retry run on that
// worker, never on the other one consuming the same shared queue.
func testRetryFollowsPin(t *testing.T, b *Backend) {
	rec := newRecorder()
	gw := newQueue(t, b, "", 1)
	var tasks []*model.Task
	for range 8 {
		task := create(t, b, withRetries(2))
		tasks = append(tasks, task)
		enqueue(t, gw, message(task))
	}
	do := func(name string) behaviour {
		return func(ctx context.Context, task *model.Task, attempt int) (json.RawMessage, error) {
			if attempt > 1 {
				return succeed(ctx, task, attempt)
			}
			if err := pin(ctx, b, task.ID, name); err != nil {
				return nil, err
			}
			return nil, errors.New("made its vm here, then failed")
		}
	}
	w1 := worker(newQueue(t, b, "w1", 2), rec, "w1", do("w1"))
	w2 := worker(newQueue(t, b, "w2", 2), rec, "w2", do("w2"))
	start(t, w1)
	start(t, w2)
	for _, task := range tasks {
		done := waitDone(t, b, task.ID)
		runs := rec.of(task.ID)
		if done.Status != model.TaskCompleted || len(runs) != 2 {
			t.Errorf("task %s: %s after %d runs (%q), want completed after 2", task.ID, done.Status, len(runs), done.Error)
			continue
		}
		if runs[1].Worker != runs[0].Worker || done.WorkerID != runs[0].Worker || done.TargetWorker != runs[0].Worker {
			t.Errorf("task %s: attempt 1 on %s pinned it there, attempt 2 ran on %s (row: worker %q, target %q)",
				task.ID, runs[0].Worker, runs[1].Worker, done.WorkerID, done.TargetWorker)
		}
		if done.RetryCount != 1 {
			t.Errorf("task %s: retry_count %d, want 1", task.ID, done.RetryCount)
		}
	}
}

// waitQueued waits until q reports a pending task on the named queue.
func waitQueued(t testing.TB, q queue.Queue, name string) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for find(stats(t, q), name).Pending == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("nothing pending on queue %s within %v: %+v", name, waitFor, stats(t, q))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// testPinnedElsewhere: a task whose row was pinned to w1 after it was queued on a shared queue is not run by w2,
// which hands it to w1's own queue; w1 runs it as its first attempt.
func testPinnedElsewhere(t *testing.T, b *Backend) {
	rec := newRecorder()
	task := create(t, b, withRetries(1))
	w2 := worker(newQueue(t, b, "w2", 1), rec, "w2", succeed)
	enqueue(t, w2, message(task)) // on a shared queue (through w2: an embedded queue runs what it was given)
	if err := pin(context.Background(), b, task.ID, "w1"); err != nil {
		t.Fatal(err)
	}
	start(t, w2)
	waitQueued(t, w2, queue.QueueName("w1", model.PriorityDefault))
	if runs := rec.of(task.ID); len(runs) != 0 {
		t.Fatalf("w2 ran a task pinned to w1: %v", runs)
	}
	w1 := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, w1)
	done := waitDone(t, b, task.ID)
	runs := rec.of(task.ID)
	if done.Status != model.TaskCompleted || len(runs) != 1 || runs[0].Worker != "w1" || done.RetryCount != 0 {
		t.Fatalf("task: %s retry_count=%d runs=%v; want completed once on w1, the reroute not counted", done.Status, done.RetryCount, runs)
	}
}

// testHandlerReroute: a handler that finds its task belongs to another worker returns queue.Reroute; the task is
// pinned there and runs there, and the rerouted attempt is not counted.
func testHandlerReroute(t *testing.T, b *Backend) {
	rec := newRecorder()
	gw := newQueue(t, b, "", 1)
	task := create(t, b) // no retries: a counted reroute would fail it
	enqueue(t, gw, message(task))
	w2 := worker(newQueue(t, b, "w2", 1), rec, "w2", func(context.Context, *model.Task, int) (json.RawMessage, error) {
		return nil, queue.Reroute("w1")
	})
	start(t, w2)
	waitQueued(t, w2, queue.QueueName("w1", model.PriorityDefault))
	if row := get(t, b, task.ID); row.TargetWorker != "w1" || row.Status != model.TaskPending || row.RetryCount != 0 {
		t.Fatalf("rerouted row: target=%q status=%s retry_count=%d; want pending, pinned to w1, no retry used", row.TargetWorker, row.Status, row.RetryCount)
	}
	w1 := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, w1)
	done := waitDone(t, b, task.ID)
	runs := rec.of(task.ID)
	if done.Status != model.TaskCompleted || done.WorkerID != "w1" || len(runs) != 2 || runs[1].Worker != "w1" {
		t.Fatalf("task: %s on %q, runs=%v; want completed on w1 after w2 rerouted it", done.Status, done.WorkerID, runs)
	}
}

// testHandlerDefer: a handler that defers its task (what it needs is busy) more often than the task has retries
// gets the same attempt delivered again after the delay each time, never failed for it, and the wait is in the
// queue, not in a slot: another task runs meanwhile on a worker of concurrency 1.
func testHandlerDefer(t *testing.T, b *Backend) {
	rec := newRecorder()
	var (
		mu       sync.Mutex
		attempts []int // the row's retry count at each deferred delivery
		deferred = map[string]int{}
	)
	const defers = 4
	busy := errors.New("vm busy")
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", func(ctx context.Context, task *model.Task, attempt int) (json.RawMessage, error) {
		mu.Lock()
		defer mu.Unlock()
		var pl struct{ N int }
		_ = json.Unmarshal(task.Payload, &pl)
		if pl.N == 1 && deferred[task.ID] < defers {
			deferred[task.ID]++
			attempts = append(attempts, task.RetryCount) // retries used before this delivery, as the row says
			return nil, queue.Defer(150*time.Millisecond, busy)
		}
		return succeed(ctx, task, attempt)
	})
	start(t, q)
	task := create(t, b, withRetries(1), pinnedTo("w1"))
	other := create(t, b, pinnedTo("w1"), withPayload(`{"n":2}`))
	start0 := time.Now()
	enqueue(t, q, message(task))
	enqueue(t, q, message(other))
	done := waitDone(t, b, task.ID)
	if done.Status != model.TaskCompleted || done.RetryCount != 0 {
		t.Fatalf("deferred task ended %s with retry_count %d (%s); want completed with no retry used", done.Status, done.RetryCount, done.Error)
	}
	if od := waitDone(t, b, other.ID); od.Status != model.TaskCompleted {
		t.Fatalf("the other task: %s", od.Status)
	}
	mu.Lock()
	defer mu.Unlock()
	for _, used := range attempts {
		if used != 0 {
			t.Fatalf("deferred deliveries saw retry counts %v; want 0 every time (a deferral is no attempt)", attempts)
		}
	}
	if len(attempts) != defers || len(rec.of(task.ID)) != defers+1 {
		t.Fatalf("%d deferrals and %d runs; want %d and %d", len(attempts), len(rec.of(task.ID)), defers, defers+1)
	}
	if el := time.Since(start0); el < defers*150*time.Millisecond {
		t.Fatalf("finished after %s: the deferrals did not wait", el)
	}
	// The other task did not wait for the deferred one to finish deferring: it ran before the last delivery.
	runs := rec.of(task.ID)
	if o := rec.of(other.ID); len(o) != 1 || !o[0].Started.Before(runs[len(runs)-1].Started) {
		t.Fatalf("the other task ran %v, after the deferred one's last delivery %v: deferral held the slot", o, runs[len(runs)-1].Started)
	}
}

func testProcessAt(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, q)
	task := create(t, b)
	m := message(task)
	m.ProcessAt = time.Now().Add(300 * time.Millisecond)
	enqueue(t, q, m)
	waitDone(t, b, task.ID)
	runs := rec.of(task.ID)
	if len(runs) != 1 {
		t.Fatalf("handler ran %d times, want 1", len(runs))
	}
	if runs[0].Started.Before(m.ProcessAt) {
		t.Errorf("task started at %v, before its ProcessAt %v", runs[0].Started, m.ProcessAt)
	}
}

func testStopDrains(t *testing.T, b *Backend) {
	rec := newRecorder()
	release := make(chan struct{})
	q := worker(newQueue(t, b, "w1", 2), rec, "w1", func(ctx context.Context, task *model.Task, attempt int) (json.RawMessage, error) {
		select {
		case <-release:
			return succeed(ctx, task, attempt)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	})
	start(t, q)
	task := create(t, b)
	enqueue(t, q, message(task))
	rec.waitStarted(t)

	stopped := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		stopped <- q.Stop(ctx)
	}()
	close(release)
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("stop while a task drains: %v", err)
		}
	case <-time.After(waitFor + time.Second):
		t.Fatal("stop did not return")
	}
	// Stop returned after the in-flight task ended, so its row is final now.
	if row := get(t, b, task.ID); row.Status != model.TaskCompleted {
		t.Errorf("in-flight task after stop: %s (%s), want completed", row.Status, row.Error)
	}
}

func testStopRequeues(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", func(ctx context.Context, task *model.Task, attempt int) (json.RawMessage, error) {
		if attempt == 1 {
			<-ctx.Done() // a handler that only ends when cancelled
			return nil, ctx.Err()
		}
		return succeed(ctx, task, attempt)
	})
	start(t, q)
	task := create(t, b, withRetries(0))
	enqueue(t, q, message(task))
	rec.waitStarted(t)

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := q.Stop(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("stop that interrupted a task returned %v, want an error wrapping context.DeadlineExceeded", err)
	}
	row := get(t, b, task.ID)
	if row.Status != model.TaskPending || row.RetryCount != 0 {
		t.Fatalf("interrupted task: status=%s retry_count=%d, want pending with the attempt not counted", row.Status, row.RetryCount)
	}

	// The same worker, restarted, runs it; the interruption did not use up its only attempt.
	q2 := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, q2)
	done := waitDone(t, b, task.ID)
	if done.Status != model.TaskCompleted || done.RetryCount != 0 {
		t.Errorf("after restart: status=%s retry_count=%d error=%q; want completed, 0", done.Status, done.RetryCount, done.Error)
	}
	if n := len(rec.of(task.ID)); n != 2 {
		t.Errorf("handler ran %d times, want 2 (interrupted, then completed)", n)
	}
}

func subscribe(t testing.TB, b *Backend, topic string) events.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := b.Bus.Subscribe(ctx, topic)
	if err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func nextEvent(t testing.TB, s events.Subscription) events.Event {
	t.Helper()
	select {
	case e, ok := <-s.C():
		if !ok {
			t.Fatal("subscription closed")
		}
		return e
	case <-time.After(waitFor):
		t.Fatalf("no event within %v", waitFor)
	}
	return events.Event{}
}

func testEvents(t *testing.T, b *Backend) {
	rec := newRecorder()
	q := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, q)
	task := create(t, b)
	one := subscribe(t, b, events.TaskTopic(task.ID))
	all := subscribe(t, b, events.TopicTasks)
	before := time.Now().Add(-time.Second)
	enqueue(t, q, message(task))
	for name, s := range map[string]events.Subscription{"task topic": one, "tasks topic": all} {
		e := nextEvent(t, s)
		if e.Type != queue.EventTaskCompleted || e.Subject != task.ID || e.OwnerID != owner || e.Time.Before(before) {
			t.Errorf("%s: event %+v, want %s of %s owned by %s", name, e, queue.EventTaskCompleted, task.ID, owner)
		}
	}
	// The event follows the write: a waiter woken by it reads the final row.
	if row := get(t, b, task.ID); row.Status != model.TaskCompleted {
		t.Errorf("row when the event arrived: %s", row.Status)
	}
}

func stats(t testing.TB, q queue.Queue) queue.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	return st
}

func find(st queue.Stats, name string) queue.QueueStats {
	for _, s := range st.Queues {
		if s.Name == name {
			return s
		}
	}
	return queue.QueueStats{Name: name + " (absent)"}
}

func testStats(t *testing.T, b *Backend) {
	gw := newQueue(t, b, "", 1)
	st := stats(t, gw)
	for _, p := range model.Priorities {
		if s := find(st, string(p)); s.Pending != 0 || s.Active != 0 || s.Scheduled != 0 || strings.HasSuffix(s.Name, "(absent)") {
			t.Errorf("empty backend: queue %s: %+v, want listed and empty", p, s)
		}
	}
	for range 3 {
		enqueue(t, gw, message(create(t, b)))
	}
	for range 2 {
		enqueue(t, gw, message(create(t, b, withPriority(model.PriorityHigh))))
	}
	enqueue(t, gw, message(create(t, b, pinnedTo("w9"))))
	later := message(create(t, b, withPriority(model.PriorityLow)))
	later.ProcessAt = time.Now().Add(time.Hour)
	enqueue(t, gw, later)

	st = stats(t, gw)
	for name, want := range map[string]queue.QueueStats{
		"default":           {Pending: 3},
		"high":              {Pending: 2},
		"critical":          {},
		"low":               {Scheduled: 1},
		"worker:w9:default": {Pending: 1},
	} {
		got := find(st, name)
		if got.Pending != want.Pending || got.Active != want.Active || got.Scheduled != want.Scheduled {
			t.Errorf("queue %s: %+v, want pending=%d active=%d scheduled=%d", name, got, want.Pending, want.Active, want.Scheduled)
		}
	}
	if st.Queues[0].Name != "critical" {
		t.Errorf("stats start with %q, want the highest priority first", st.Queues[0].Name)
	}
}

func testRestart(t *testing.T, b *Backend) {
	rec := newRecorder()
	first := newQueue(t, b, "w1", 1)
	task := create(t, b, withPriority(model.PriorityHigh))
	pinned := create(t, b, pinnedTo("w1"))
	enqueue(t, first, message(task))
	enqueue(t, first, message(pinned))
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := first.Stop(ctx); err != nil { // never started: the process ends before its worker ran
		t.Fatalf("stop: %v", err)
	}

	second := worker(newQueue(t, b, "w1", 1), rec, "w1", succeed)
	start(t, second)
	for _, id := range []string{task.ID, pinned.ID} {
		if done := waitDone(t, b, id); done.Status != model.TaskCompleted {
			t.Errorf("task %s after restart: %s (%s)", id, done.Status, done.Error)
		}
		if n := len(rec.of(id)); n != 1 {
			t.Errorf("task %s ran %d times, want 1", id, n)
		}
	}
}

func testBadInput(t *testing.T, b *Backend) {
	gw := newQueue(t, b, "", 1)
	ctx := context.Background()
	if err := gw.Enqueue(ctx, queue.Message{Type: TaskType}); !errors.Is(err, model.ErrInvalidInput) {
		t.Errorf("enqueue without a task id: %v, want ErrInvalidInput", err)
	}
	if err := gw.Enqueue(ctx, queue.Message{TaskID: uuid.NewString(), Type: TaskType, Priority: "urgent"}); !errors.Is(err, model.ErrInvalidInput) {
		t.Errorf("enqueue with an unknown priority: %v, want ErrInvalidInput", err)
	}
	if err := gw.Start(ctx); !errors.Is(err, model.ErrInvalidInput) {
		t.Errorf("start without a worker id: %v, want ErrInvalidInput", err)
	}
}

// BenchmarkPickup measures pickup latency: from Enqueue to the start of the handler, on an idle worker with the
// default concurrency. It reports the median and 99th percentile as "p50-µs" and "p99-µs". The time includes the
// store write that marks the task processing (Tracker.Begin); "take-p50-µs" is the part before it: from Enqueue
// until the worker took the task (the started_at that Begin records).
func BenchmarkPickup(b *testing.B, newBackend Factory) {
	be := newBackend(b)
	type pickup struct{ handler, taken time.Time }
	started := make(chan pickup, 1)
	q := be.NewQueue(b, queue.Options{WorkerID: "bench", RetryDelay: shortRetry})
	b.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		_ = q.Stop(ctx)
	})
	q.RegisterHandler(TaskType, func(_ context.Context, t *model.Task) (json.RawMessage, error) {
		now := time.Now()
		var taken time.Time
		if t.StartedAt != nil {
			taken = *t.StartedAt
		}
		started <- pickup{handler: now, taken: taken}
		return json.RawMessage(`{}`), nil
	})
	start(b, q)

	lat := make([]time.Duration, 0, b.N)
	take := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		task := create(b, be)
		// A random pause puts the enqueue at a random point of a polling worker's cycle.
		time.Sleep(time.Duration(rand.Int64N(int64(2 * time.Millisecond))))
		b.StartTimer()
		t0 := time.Now()
		enqueue(b, q, message(task))
		st := <-started
		b.StopTimer()
		lat = append(lat, st.handler.Sub(t0))
		// started_at carries no monotonic clock reading: compare wall clocks.
		take = append(take, st.taken.Sub(t0.Round(0)))
		waitDone(b, be, task.ID) // idle again before the next iteration
		b.StartTimer()
	}
	b.StopTimer()
	pct := func(ds []time.Duration, p float64) float64 {
		slices.Sort(ds)
		return float64(ds[min(len(ds)-1, int(p*float64(len(ds))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(pct(lat, 0.50), "p50-µs")
	b.ReportMetric(pct(lat, 0.99), "p99-µs")
	b.ReportMetric(pct(take, 0.50), "take-p50-µs")
}
