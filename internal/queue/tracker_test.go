package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

type fixture struct {
	tasks store.TaskStore
	bus   *inproc.Bus
	tr    *queue.Tracker
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aetherium.db"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	bus := inproc.New()
	t.Cleanup(func() { _ = bus.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	return &fixture{tasks: st.Tasks(), bus: bus, tr: queue.NewTracker(st.Tasks(), bus, log)}
}

func (f *fixture) task(t *testing.T, maxRetries int) *model.Task {
	t.Helper()
	task := &model.Task{ID: uuid.NewString(), OwnerID: "owner-1", Type: "test:task", Status: model.TaskPending,
		Priority: model.PriorityDefault, MaxRetries: maxRetries}
	if err := f.tasks.Create(context.Background(), task); err != nil {
		t.Fatalf("create: %v", err)
	}
	return task
}

func (f *fixture) get(t *testing.T, id string) *model.Task {
	t.Helper()
	task, err := f.tasks.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	return task
}

func TestBegin(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	task := f.task(t, 3)

	got, skip, err := f.tr.Begin(ctx, task.ID, "w1", 1)
	if err != nil || skip {
		t.Fatalf("begin: skip=%v err=%v", skip, err)
	}
	if got.Status != model.TaskProcessing || got.WorkerID != "w1" || got.RetryCount != 0 || got.StartedAt == nil {
		t.Fatalf("after begin: %+v", got)
	}
	first := *got.StartedAt

	// The same attempt delivered to another worker while w1 holds it: not run.
	if _, skip, err := f.tr.Begin(ctx, task.ID, "w2", 1); err != nil || !skip {
		t.Errorf("duplicate of a held attempt on another worker: skip=%v err=%v, want skip", skip, err)
	}
	// w1 lost (lease expired): the next attempt goes to w2, keeping the first start time.
	got, skip, err = f.tr.Begin(ctx, task.ID, "w2", 2)
	if err != nil || skip {
		t.Fatalf("redelivery after a lost worker: skip=%v err=%v", skip, err)
	}
	if got.WorkerID != "w2" || got.RetryCount != 1 || !got.StartedAt.Equal(first) {
		t.Errorf("after redelivery: worker=%q retry_count=%d started_at=%v (first %v)", got.WorkerID, got.RetryCount, got.StartedAt, first)
	}
	// The same worker coming back (restart) takes its own attempt again.
	if _, skip, err := f.tr.Begin(ctx, task.ID, "w2", 2); err != nil || skip {
		t.Errorf("same worker, same attempt: skip=%v err=%v, want to proceed", skip, err)
	}

	if err := f.tr.Succeed(ctx, task.ID, json.RawMessage(`{"ok":true}`)); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"w1", "w2", "w3"} {
		if _, skip, err := f.tr.Begin(ctx, task.ID, w, 3); err != nil || !skip {
			t.Errorf("begin of a completed task on %s: skip=%v err=%v, want skip", w, skip, err)
		}
	}
	if row := f.get(t, task.ID); row.Status != model.TaskCompleted {
		t.Errorf("a skipped begin changed the row: %s", row.Status)
	}
}

func TestBeginMissingRow(t *testing.T) {
	f := setup(t)
	_, skip, err := f.tr.Begin(context.Background(), uuid.NewString(), "w1", 1)
	if skip || !queue.IsPermanent(err) || !errors.Is(err, queue.ErrTaskMissing) || !errors.Is(err, model.ErrNotFound) {
		t.Errorf("begin of a missing row: skip=%v err=%v; want a permanent error wrapping ErrTaskMissing and ErrNotFound", skip, err)
	}
}

func TestRetryFailRelease(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	task := f.task(t, 2)
	if _, _, err := f.tr.Begin(ctx, task.ID, "w1", 1); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(time.Minute).UTC().Truncate(time.Millisecond)
	if err := f.tr.Retry(ctx, task.ID, 1, errors.New("disk full"), at); err != nil {
		t.Fatal(err)
	}
	row := f.get(t, task.ID)
	if row.Status != model.TaskPending || row.RetryCount != 1 || row.Error != "disk full" || row.ScheduledAt == nil || !row.ScheduledAt.Equal(at) {
		t.Errorf("after retry: status=%s retry_count=%d error=%q scheduled_at=%v (want %v)", row.Status, row.RetryCount, row.Error, row.ScheduledAt, at)
	}

	if _, _, err := f.tr.Begin(ctx, task.ID, "w1", 2); err != nil {
		t.Fatal(err)
	}
	// Release only touches the row as the releasing worker left it.
	if err := f.tr.Release(ctx, task.ID, "w9", 2); err != nil {
		t.Fatal(err)
	}
	if err := f.tr.Release(ctx, task.ID, "w1", 1); err != nil {
		t.Fatal(err)
	}
	if row := f.get(t, task.ID); row.Status != model.TaskProcessing {
		t.Errorf("release by another worker or for another attempt changed the row: %s", row.Status)
	}
	if err := f.tr.Release(ctx, task.ID, "w1", 2); err != nil {
		t.Fatal(err)
	}
	if row := f.get(t, task.ID); row.Status != model.TaskPending || row.RetryCount != 1 {
		t.Errorf("after release: status=%s retry_count=%d, want pending, 1 (attempt not counted)", row.Status, row.RetryCount)
	}

	sub, err := f.bus.Subscribe(ctx, events.TopicTasks)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.tr.Fail(ctx, task.ID, errors.New("gave up")); err != nil {
		t.Fatal(err)
	}
	row = f.get(t, task.ID)
	if row.Status != model.TaskFailed || row.Error != "gave up" || row.CompletedAt == nil {
		t.Errorf("after fail: %+v", row)
	}
	e := <-sub.C()
	if e.Type != queue.EventTaskFailed || e.Subject != task.ID || e.OwnerID != "owner-1" || e.Time.IsZero() {
		t.Errorf("fail event %+v", e)
	}
	// Failing or retrying an ended task changes nothing and announces nothing.
	if err := f.tr.Fail(ctx, task.ID, errors.New("again")); err != nil {
		t.Fatal(err)
	}
	if err := f.tr.Retry(ctx, task.ID, 2, errors.New("again"), at); err != nil {
		t.Fatal(err)
	}
	if row := f.get(t, task.ID); row.Status != model.TaskFailed || row.Error != "gave up" {
		t.Errorf("an ended task was changed: %s %q", row.Status, row.Error)
	}
	select {
	case e := <-sub.C():
		t.Errorf("unexpected second event %+v", e)
	default:
	}
}

func TestSucceedAnnouncesOnBothTopics(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	task := f.task(t, 0)
	one, _ := f.bus.Subscribe(ctx, events.TaskTopic(task.ID))
	all, _ := f.bus.Subscribe(ctx, events.TopicTasks)
	if err := f.tr.Succeed(ctx, task.ID, json.RawMessage(`{"x":1}`)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []events.Subscription{one, all} {
		select {
		case e := <-s.C():
			if e.Type != queue.EventTaskCompleted || e.Subject != task.ID || e.OwnerID != "owner-1" {
				t.Errorf("event %+v", e)
			}
		default:
			t.Error("no completion event")
		}
	}
	if row := f.get(t, task.ID); row.Status != model.TaskCompleted || string(row.Result) != `{"x":1}` || row.CompletedAt == nil {
		t.Errorf("after succeed: %+v", row)
	}
	// A nil bus is allowed.
	if err := queue.NewTracker(f.tasks, nil, nil).Succeed(ctx, task.ID, nil); err != nil {
		t.Errorf("succeed without a bus: %v", err)
	}
}

func runner(f *fixture, h queue.Handler, aborting bool) *queue.Runner {
	return &queue.Runner{
		Tracker:    f.tr,
		Handler:    func(model.TaskType) (queue.Handler, bool) { return h, h != nil },
		RetryDelay: func(n int, _ error) time.Duration { return time.Duration(n) * time.Second },
		Aborting:   func() bool { return aborting },
	}
}

func TestRunnerOutcomes(t *testing.T) {
	f := setup(t)
	ctx := context.Background()
	calls := 0
	fail := func(context.Context, *model.Task) (json.RawMessage, error) { calls++; return nil, errors.New("nope") }

	task := f.task(t, 1)
	out := runner(f, fail, false).Run(ctx, queue.Delivery{TaskID: task.ID, WorkerID: "w1", Attempt: 1, MaxRetries: 1})
	if out.Kind != queue.Retrying || out.Delay <= 0 || out.Delay > time.Second {
		t.Errorf("first failure: %+v, want retrying after ~1s", out)
	}
	out = runner(f, fail, false).Run(ctx, queue.Delivery{TaskID: task.ID, WorkerID: "w1", Attempt: 2, MaxRetries: 1})
	if out.Kind != queue.Failed || f.get(t, task.ID).Status != model.TaskFailed {
		t.Errorf("last failure: %+v", out)
	}

	// A delivery beyond the last attempt (asynq's spare, after a lost worker) fails the task without running it.
	task = f.task(t, 1)
	before := calls
	out = runner(f, fail, false).Run(ctx, queue.Delivery{TaskID: task.ID, WorkerID: "w1", Attempt: 3, MaxRetries: 1})
	if out.Kind != queue.Failed || calls != before || f.get(t, task.ID).Status != model.TaskFailed {
		t.Errorf("spare delivery: %+v, handler calls %d", out, calls-before)
	}

	// Cancelled while the queue aborts: released, not counted.
	task = f.task(t, 0)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	out = runner(f, func(ctx context.Context, _ *model.Task) (json.RawMessage, error) { return nil, ctx.Err() }, true).
		Run(cctx, queue.Delivery{TaskID: task.ID, WorkerID: "w1", Attempt: 1})
	if row := f.get(t, task.ID); out.Kind != queue.Released || row.Status != model.TaskPending || row.RetryCount != 0 {
		t.Errorf("aborted: %+v, row %s/%d", out, row.Status, row.RetryCount)
	}

	// No handler: failed at once.
	task = f.task(t, 3)
	if out := runner(f, nil, false).Run(ctx, queue.Delivery{TaskID: task.ID, WorkerID: "w1", Attempt: 1, MaxRetries: 3}); out.Kind != queue.Failed {
		t.Errorf("no handler: %+v", out)
	}

	// Granularity rounds the retry time up.
	task = f.task(t, 3)
	r := runner(f, fail, false)
	r.Granularity = time.Second
	out = r.Run(ctx, queue.Delivery{TaskID: task.ID, WorkerID: "w1", Attempt: 1, MaxRetries: 3})
	if out.Kind != queue.Retrying || out.RetryAt.Nanosecond() != 0 || !f.get(t, task.ID).ScheduledAt.Equal(out.RetryAt) {
		t.Errorf("granular retry at %v (row %v)", out.RetryAt, f.get(t, task.ID).ScheduledAt)
	}
}

func TestDefaultRetryDelay(t *testing.T) {
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 5: 16 * time.Second, 7: time.Minute, 100: time.Minute} {
		for range 50 {
			d := queue.DefaultRetryDelay(n, nil)
			if d > want || d < want*4/5 {
				t.Fatalf("DefaultRetryDelay(%d) = %v, want within [%v, %v]", n, d, want*4/5, want)
			}
		}
	}
	o := queue.Options{}.WithDefaults()
	if o.Concurrency != queue.DefaultConcurrency || o.RetryDelay == nil {
		t.Errorf("defaults: %+v", o)
	}
}

func TestSortStats(t *testing.T) {
	qs := []queue.QueueStats{{Name: "worker:b:low"}, {Name: "low"}, {Name: "worker:a:critical"}, {Name: "critical"}, {Name: "default"}, {Name: "high"}}
	queue.SortStats(qs)
	var names []string
	for _, q := range qs {
		names = append(names, q.Name)
	}
	want := []string{"critical", "high", "default", "low", "worker:a:critical", "worker:b:low"}
	if !slices.Equal(names, want) {
		t.Errorf("sorted %v, want %v", names, want)
	}
}

func TestCeilTime(t *testing.T) {
	base := time.Date(2024, 1, 1, 0, 0, 10, 0, time.UTC)
	if got := queue.CeilTime(base, time.Second); !got.Equal(base) {
		t.Errorf("whole second moved: %v", got)
	}
	if got := queue.CeilTime(base.Add(time.Nanosecond), time.Second); !got.Equal(base.Add(time.Second)) {
		t.Errorf("rounded to %v", got)
	}
	if got := queue.CeilTime(base.Add(time.Millisecond), 0); !got.Equal(base.Add(time.Millisecond)) {
		t.Errorf("zero granularity changed the time: %v", got)
	}
}

// BenchmarkBegin measures the store write that starts every attempt: it is part of every queue's pickup latency.
func BenchmarkBegin(b *testing.B) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "aetherium.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	tr := queue.NewTracker(st.Tasks(), nil, slog.New(slog.NewTextHandler(io.Discard, nil)))
	lat := make([]time.Duration, 0, b.N)
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		task := &model.Task{ID: uuid.NewString(), OwnerID: "o", Type: "test:task", Status: model.TaskPending, Priority: model.PriorityDefault}
		if err := st.Tasks().Create(ctx, task); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		if _, _, err := tr.Begin(ctx, task.ID, "w1", 1); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[min(len(lat)-1, len(lat)*99/100)].Microseconds()), "p99-µs")
}
