package asynqq_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/asynqq"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

// The crash helper is this test binary run again as a worker that takes tasks and never finishes them, until the
// test kills it with SIGKILL: a worker that dies mid-task, with no chance to requeue anything.
const (
	helperEnv   = "AETHERIUM_ASYNQQ_CRASH_HELPER" // "<namespace>|<sqlite path>|<worker id>"
	helperTasks = model.TaskType("test:task")
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(helperEnv); spec != "" {
		os.Exit(crashHelper(spec))
	}
	os.Exit(m.Run())
}

func crashHelper(spec string) int {
	parts := strings.Split(spec, "|")
	if len(parts) != 3 {
		fmt.Fprintln(os.Stderr, "bad helper spec", spec)
		return 2
	}
	ctx := context.Background()
	st, err := sqlite.Open(ctx, parts[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	q, err := asynqq.NewFromURL(redisURL(), st.Tasks(), nil, queue.Options{WorkerID: parts[2], Concurrency: 4}, logger(),
		asynqq.WithNamespace(parts[0]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var mu sync.Mutex
	q.RegisterHandler(helperTasks, func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		mu.Lock()
		fmt.Printf("started %s\n", t.ID)
		mu.Unlock()
		<-ctx.Done() // until killed
		return nil, ctx.Err()
	})
	if err := q.Start(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	select {}
}

// TestReclaimAfterKill: a worker killed mid-task (SIGKILL: nothing requeued, the asynq lease still held) and
// restarted under the same id takes its tasks back at once, from its own queue and from the shared queue, instead
// of waiting a minute for asynq's lease to expire. A task another live worker holds on the shared queue is left
// alone. The rows move forward at once: the interrupted attempt counts, and the retry runs once.
func TestReclaimAfterKill(t *testing.T) {
	_, rc := redisClient(t)
	ns := "aetherium-test-" + rand.Text()[:12]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = asynqq.PurgeNamespace(ctx, rc, ns)
	})
	ctx := context.Background()
	dbPath := filepath.Join(t.TempDir(), "aetherium.db")
	st, err := sqlite.Open(ctx, dbPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	newQ := func(worker string, concurrency int) *asynqq.Queue {
		q, err := asynqq.NewFromURL(redisURL(), st.Tasks(), nil, queue.Options{WorkerID: worker, Concurrency: concurrency}, logger(),
			asynqq.WithNamespace(ns))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = q.Close() })
		return q
	}
	gw := newQ("", 1)
	mk := func(target string) *model.Task {
		tk := &model.Task{ID: uuid.NewString(), OwnerID: "o", Type: helperTasks, Status: model.TaskPending,
			Priority: model.PriorityDefault, TargetWorker: target, MaxRetries: 2, Payload: json.RawMessage(`{}`)}
		if err := st.Tasks().Create(ctx, tk); err != nil {
			t.Fatal(err)
		}
		if err := gw.Enqueue(ctx, queue.Message{TaskID: tk.ID, Type: tk.Type, Priority: tk.Priority, TargetWorker: target, MaxRetries: 2}); err != nil {
			t.Fatal(err)
		}
		return tk
	}

	// Another live worker holds a shared task throughout (and, with a concurrency of 1, takes no other).
	other := newQ("w2", 1)
	otherStarted := make(chan string, 4)
	release := make(chan struct{})
	other.RegisterHandler(helperTasks, func(ctx context.Context, tk *model.Task) (json.RawMessage, error) {
		otherStarted <- tk.ID
		select {
		case <-release:
		case <-ctx.Done():
		}
		return json.RawMessage(`{}`), nil
	})
	if err := other.Start(ctx); err != nil {
		t.Fatal(err)
	}
	held := mk("")
	select {
	case id := <-otherStarted:
		if id != held.ID {
			t.Fatalf("w2 started %s, want %s", id, held.ID)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("w2 did not start its task")
	}

	// The worker that dies: tasks on its own queue and on the shared queue, both running when it is killed.
	helper := exec.Command(os.Args[0], "-test.run=^$")
	helper.Env = append(os.Environ(), helperEnv+"="+ns+"|"+dbPath+"|w1")
	helper.Stderr = os.Stderr
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = helper.Process.Kill()
			_ = helper.Wait()
		}
	})
	pinned, shared := mk("w1"), mk("")
	started := map[string]bool{}
	sc := bufio.NewScanner(out)
	deadline := time.AfterFunc(30*time.Second, func() { _ = helper.Process.Kill() })
	for len(started) < 2 && sc.Scan() {
		if id, ok := strings.CutPrefix(sc.Text(), "started "); ok {
			started[id] = true
		}
	}
	deadline.Stop()
	if !started[pinned.ID] || !started[shared.ID] {
		t.Fatalf("the helper worker started %v, want both tasks", started)
	}
	if err := helper.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = helper.Wait()
	killed = true
	for _, tk := range []*model.Task{pinned, shared} {
		if row, _ := st.Tasks().Get(ctx, tk.ID); row.Status != model.TaskProcessing || row.WorkerID != "w1" {
			t.Fatalf("before the restart: task %s is %s on %q, want processing on w1", tk.ID, row.Status, row.WorkerID)
		}
	}

	// The same worker comes back.
	restarted := newQ("w1", 4)
	ran := make(chan string, 8)
	restarted.RegisterHandler(helperTasks, func(_ context.Context, tk *model.Task) (json.RawMessage, error) {
		ran <- tk.ID
		return json.RawMessage(`{}`), nil
	})
	begin := time.Now()
	if err := restarted.Start(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tk := range []*model.Task{pinned, shared} {
		var row *model.Task
		for {
			row, err = st.Tasks().Get(ctx, tk.ID)
			if err != nil {
				t.Fatal(err)
			}
			if row.Status.Done() {
				break
			}
			// Asynq's lease would keep it for 30 s, and its recoverer looks only 30 s past that, every minute.
			if time.Since(begin) > 20*time.Second {
				t.Fatalf("task %s still %s %s after the restart; it was not taken back", tk.ID, row.Status, time.Since(begin))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if row.Status != model.TaskCompleted || row.WorkerID != "w1" || row.RetryCount != 1 {
			t.Fatalf("task %s: %s on %q retry_count=%d (%s); want completed on w1 with the interrupted attempt counted",
				tk.ID, row.Status, row.WorkerID, row.RetryCount, row.Error)
		}
	}
	t.Logf("both interrupted tasks completed %s after the restart", time.Since(begin).Round(time.Millisecond))
	if err := restarted.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	close(ran)
	n := map[string]int{}
	for id := range ran {
		n[id]++
	}
	if n[pinned.ID] != 1 || n[shared.ID] != 1 || n[held.ID] != 0 {
		t.Fatalf("runs after the restart: %v; want each interrupted task once, and not w2's task", n)
	}
	if row, _ := st.Tasks().Get(ctx, held.ID); row.WorkerID != "w2" {
		t.Fatalf("w2's task was taken over: %+v", row)
	}
	close(release)
}
