package embedded_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/queue/queuetest"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

func logger() *slog.Logger {
	if os.Getenv("AETHERIUM_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// backend is a fresh SQLite database and in-process bus: what `aetherium serve` runs on.
func backend(t testing.TB) *queuetest.Backend {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aetherium.db"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate sqlite: %v", err)
	}
	bus := inproc.New()
	t.Cleanup(func() { _ = bus.Close() })
	log := logger()
	return &queuetest.Backend{
		Tasks: st.Tasks(),
		Bus:   bus,
		NewQueue: func(t testing.TB, opts queue.Options) queue.Queue {
			return embedded.New(st.Tasks(), bus, opts, log, embedded.WithAbortGrace(2*time.Second))
		},
	}
}

func TestConformance(t *testing.T) { queuetest.Run(t, backend) }

func BenchmarkPickup(b *testing.B) { queuetest.BenchmarkPickup(b, backend) }

// A row left processing by this worker was interrupted by a crash: the attempt counts, so the task is retried if
// it has retries left and failed otherwise; the handler never runs for the latter.
func TestStartRecoversInterruptedTasks(t *testing.T) {
	b := backend(t)
	ctx := context.Background()
	mk := func(retryCount, maxRetries int, worker, target string) *model.Task {
		task := &model.Task{
			ID: uuid.NewString(), OwnerID: "o", Type: queuetest.TaskType, Status: model.TaskProcessing,
			Priority: model.PriorityDefault, WorkerID: worker, TargetWorker: target,
			RetryCount: retryCount, MaxRetries: maxRetries,
		}
		if err := b.Tasks.Create(ctx, task); err != nil {
			t.Fatalf("create: %v", err)
		}
		return task
	}
	retried := mk(0, 2, "w1", "")
	exhausted := mk(2, 2, "w1", "")
	othersWork := mk(0, 2, "w2", "")   // another live worker holds it
	othersPinned := mk(0, 2, "", "w2") // pinned elsewhere: not ours to judge

	ran := make(chan string, 10)
	q := embedded.New(b.Tasks, b.Bus, queue.Options{WorkerID: "w1", Concurrency: 2}, logger())
	q.RegisterHandler(queuetest.TaskType, func(_ context.Context, task *model.Task) (json.RawMessage, error) {
		ran <- task.ID
		return json.RawMessage(`{}`), nil
	})
	if err := q.Start(ctx); err != nil {
		t.Fatalf("start: %v", err)
	}
	defer q.Stop(ctx)

	select {
	case id := <-ran:
		if id != retried.ID {
			t.Fatalf("ran task %s, want only %s", id, retried.ID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the interrupted task was not retried")
	}
	row := waitDone(t, b, retried.ID)
	if row.Status != model.TaskCompleted || row.RetryCount != 1 {
		t.Errorf("retried task: status=%s retry_count=%d, want completed, 1 (the interrupted attempt counts)", row.Status, row.RetryCount)
	}
	row = waitDone(t, b, exhausted.ID)
	if row.Status != model.TaskFailed || row.Error != embedded.ErrInterruptedByRestart.Error() {
		t.Errorf("task interrupted on its last attempt: status=%s error=%q, want failed, %q", row.Status, row.Error, embedded.ErrInterruptedByRestart)
	}
	for _, id := range []string{othersWork.ID, othersPinned.ID} {
		if row, _ := b.Tasks.Get(ctx, id); row.Status != model.TaskProcessing || row.RetryCount != 0 {
			t.Errorf("task %s of another worker was touched: %s, retry_count %d", id, row.Status, row.RetryCount)
		}
	}
	st, err := q.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st.Queues {
		if s.Pending+s.Active+s.Scheduled != 0 {
			t.Errorf("queue %s holds %+v after loading, want nothing", s.Name, s)
		}
	}
}

func waitDone(t *testing.T, b *queuetest.Backend, id string) *model.Task {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		row, err := b.Tasks.Get(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		if row.Status.Done() || time.Now().After(deadline) {
			return row
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// A queue whose store cannot be read does not start, and Stats reports it.
func TestStartFailsWhenStoreIsDown(t *testing.T) {
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aetherium.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	_ = st.Close()
	q := embedded.New(st.Tasks(), nil, queue.Options{WorkerID: "w1"}, logger())
	if err := q.Start(ctx); err == nil {
		t.Error("start over a closed store succeeded")
	}
	if _, err := q.Stats(ctx); err == nil {
		t.Error("stats over a closed store succeeded")
	}
}
