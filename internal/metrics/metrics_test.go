package metrics_test

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

func openStore(t *testing.T) store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aetherium.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

func storeTask(t *testing.T, st store.Store, typ model.TaskType, p model.Priority, retries int) queue.Message {
	t.Helper()
	task := &model.Task{ID: uuid.NewString(), OwnerID: "owner", Type: typ, Status: model.TaskPending, Priority: p,
		MaxRetries: retries, Payload: json.RawMessage(`{}`)}
	if err := st.Tasks().Create(context.Background(), task); err != nil {
		t.Fatal(err)
	}
	return queue.Message{TaskID: task.ID, Type: typ, Priority: p, MaxRetries: retries}
}

// eventually polls cond: the queue tells its observer right after it has recorded the outcome in the row, so a
// test that waited for the row may look a moment too early.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTaskMetricsCountWhatRan drives the embedded queue with handlers that complete, fail for good, fail once and
// then succeed, and wait for a busy VM: each delivery is counted once under its result, and only the attempts that
// ran have a duration and a queue wait.
func TestTaskMetricsCountWhatRan(t *testing.T) {
	st := openStore(t)
	bus := inproc.New()
	t.Cleanup(func() { _ = bus.Close() })
	ms := metrics.New("test")
	tm := ms.Tasks()
	q := tm.WrapQueue(embedded.New(st.Tasks(), bus, queue.Options{WorkerID: "w1", Concurrency: 4, Observer: tm.Observer(),
		RetryDelay: func(int, error) time.Duration { return time.Millisecond }}, nil))
	var toolsRuns, createRuns atomic.Int32
	q.RegisterHandler(model.TaskVMExecute, func(context.Context, *model.Task) (json.RawMessage, error) {
		time.Sleep(20 * time.Millisecond)
		return json.RawMessage(`{}`), nil
	})
	q.RegisterHandler(model.TaskVMDelete, func(context.Context, *model.Task) (json.RawMessage, error) {
		return nil, queue.Permanent(errors.New("no such vm"))
	})
	q.RegisterHandler(model.TaskVMTools, func(context.Context, *model.Task) (json.RawMessage, error) {
		if toolsRuns.Add(1) == 1 {
			return nil, errors.New("mirror down")
		}
		return json.RawMessage(`{}`), nil
	})
	q.RegisterHandler(model.TaskVMCreate, func(context.Context, *model.Task) (json.RawMessage, error) {
		if createRuns.Add(1) == 1 {
			return nil, queue.Defer(time.Millisecond, errors.New("busy"))
		}
		return json.RawMessage(`{}`), nil
	})
	ctx := context.Background()
	for _, m := range []queue.Message{
		storeTask(t, st, model.TaskVMExecute, model.PriorityDefault, 0),
		storeTask(t, st, model.TaskVMDelete, model.PriorityHigh, 3),
		storeTask(t, st, model.TaskVMTools, "", 1),
		storeTask(t, st, model.TaskVMCreate, model.PriorityDefault, 0),
	} {
		if err := q.Enqueue(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if err := q.Enqueue(ctx, queue.Message{TaskID: "x", Priority: "urgent"}); err == nil {
		t.Fatal("enqueue with an unknown priority succeeded")
	}
	if err := q.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Stop(context.Background()) })

	const processed = "aetherium_tasks_processed_total"
	want := []struct {
		typ, result string
		n           float64
	}{
		{"vm:execute", metrics.ResultCompleted, 1},
		{"vm:delete", metrics.ResultFailed, 1},
		{"vm:tools", metrics.ResultRetried, 1},
		{"vm:tools", metrics.ResultCompleted, 1},
		{"vm:create", metrics.ResultDeferred, 1},
		{"vm:create", metrics.ResultCompleted, 1},
	}
	eventually(t, "all six deliveries counted", func() bool {
		return metricstest.Render(t, ms).Value(processed, nil) == 6
	})
	s := metricstest.Render(t, ms)
	for _, w := range want {
		if got := s.Value(processed, metricstest.Labels{"type": w.typ, "result": w.result}); got != w.n {
			t.Errorf("%s{type=%q,result=%q} = %v, want %v", processed, w.typ, w.result, got, w.n)
		}
	}
	for _, c := range []struct {
		typ, priority string
	}{{"vm:execute", "default"}, {"vm:delete", "high"}, {"vm:tools", "default"}, {"vm:create", "default"}} {
		if got := s.Value("aetherium_tasks_enqueued_total", metricstest.Labels{"type": c.typ, "priority": c.priority}); got != 1 {
			t.Errorf("enqueued{type=%q,priority=%q} = %v, want 1", c.typ, c.priority, got)
		}
	}
	if got := s.Value("aetherium_tasks_enqueued_total", nil); got != 4 {
		t.Errorf("enqueued in all = %v, want 4 (a refused enqueue is not counted)", got)
	}
	// Durations and waits: one per attempt that ran; the deferred delivery ran nothing of its task.
	for typ, n := range map[string]uint64{"vm:execute": 1, "vm:delete": 1, "vm:tools": 2, "vm:create": 1} {
		if got := s.Count("aetherium_task_duration_seconds", metricstest.Labels{"type": typ}); got != n {
			t.Errorf("duration observations of %s = %d, want %d", typ, got, n)
		}
		if got := s.Count("aetherium_task_queue_wait_seconds", metricstest.Labels{"type": typ}); got != n {
			t.Errorf("queue wait observations of %s = %d, want %d", typ, got, n)
		}
	}
	if sum := s.Sum("aetherium_task_duration_seconds", metricstest.Labels{"type": "vm:execute"}); sum < 0.020 {
		t.Errorf("vm:execute ran for %vs, less than the handler's 20 ms sleep", sum)
	}
}

// TestQueueDepthIsReadAtScrape: the depth gauges are the queue's Stats at the moment of the scrape.
func TestQueueDepthIsReadAtScrape(t *testing.T) {
	st := openStore(t)
	ms := metrics.New("test")
	q := ms.Tasks().WrapQueue(embedded.New(st.Tasks(), nil, queue.Options{WorkerID: "w1"}, nil))
	if err := ms.Tasks().WatchQueue(q); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		if err := q.Enqueue(ctx, storeTask(t, st, model.TaskVMCreate, model.PriorityDefault, 0)); err != nil {
			t.Fatal(err)
		}
	}
	m := storeTask(t, st, model.TaskVMExecute, model.PriorityHigh, 0)
	m.TargetWorker = "w1"
	if err := q.Enqueue(ctx, m); err != nil {
		t.Fatal(err)
	}
	later := storeTask(t, st, model.TaskVMCreate, model.PriorityLow, 0)
	later.ProcessAt = time.Now().Add(time.Hour)
	if err := q.Enqueue(ctx, later); err != nil {
		t.Fatal(err)
	}
	s := metricstest.Render(t, ms)
	const depth = "aetherium_queue_tasks"
	for _, c := range []struct {
		queue, state string
		n            float64
	}{
		{"default", "pending", 3}, {"default", "active", 0}, {"worker:w1:high", "pending", 1},
		{"low", "scheduled", 1}, {"low", "pending", 0}, {"critical", "pending", 0},
	} {
		if got := s.Value(depth, metricstest.Labels{"queue": c.queue, "state": c.state}); got != c.n {
			t.Errorf("%s{queue=%q,state=%q} = %v, want %v", depth, c.queue, c.state, got, c.n)
		}
	}
	// A queue whose store is gone leaves its gauges out of the scrape; the rest is still served.
	_ = st.Close()
	s = metricstest.Render(t, ms)
	if _, ok := s[depth]; ok {
		t.Errorf("%s served although the queue's stats failed", depth)
	}
	if _, ok := s["aetherium_tasks_enqueued_total"]; !ok {
		t.Error("a failing collector took the other metrics with it")
	}
}

func storeVM(t *testing.T, st store.Store, worker string, status model.VMStatus) {
	t.Helper()
	id := uuid.NewString()
	if err := st.VMs().Create(context.Background(), &model.VM{ID: id, OwnerID: "owner-" + id, Name: "vm-" + id,
		Status: status, WorkerID: worker, VCPUCount: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
}

// TestVMStatesAreReadAtScrape counts a worker's VMs by state from the store, other workers' and deleted VMs left
// out, and a hundred more VMs change the values, not the series.
func TestVMStatesAreReadAtScrape(t *testing.T) {
	st := openStore(t)
	ms := metrics.New("test")
	if err := ms.Worker().WatchVMs(st.VMs(), "w1", "docker"); err != nil {
		t.Fatal(err)
	}
	storeVM(t, st, "w1", model.VMRunning)
	storeVM(t, st, "w1", model.VMRunning)
	storeVM(t, st, "w1", model.VMFailed)
	storeVM(t, st, "w1", model.VMDeleted)
	storeVM(t, st, "w2", model.VMRunning)
	s := metricstest.Render(t, ms)
	before := s.Series("aetherium_vms")
	check := func(s metricstest.Scrape, state string, n float64) {
		t.Helper()
		if got := s.Value("aetherium_vms", metricstest.Labels{"state": state, "backend": "docker"}); got != n {
			t.Errorf("aetherium_vms{state=%q} = %v, want %v", state, got, n)
		}
	}
	check(s, "running", 2)
	check(s, "failed", 1)
	check(s, "creating", 0)
	if got := s.LabelValues("aetherium_vms", "state"); !slices.Equal(got, []string{"creating", "failed", "paused", "running", "stopped", "stopping"}) {
		t.Errorf("states = %v", got)
	}
	for range 100 {
		storeVM(t, st, "w1", model.VMRunning)
	}
	s = metricstest.Render(t, ms)
	check(s, "running", 102)
	if after := s.Series("aetherium_vms"); !slices.Equal(before, after) {
		t.Fatalf("series changed with 100 VMs: %v -> %v", before, after)
	}
}

// TestRecordingKeepsSeriesBounded drives every recording function with a hundred distinct VMs and tasks: values
// move, series do not, and no id reaches a label.
func TestRecordingKeepsSeriesBounded(t *testing.T) {
	ms := metrics.New("v1.2.3")
	var ids []string
	round := func() {
		id := uuid.NewString()
		ids = append(ids, id)
		ms.Network().Attached(nil)
		ms.Network().Attached(errors.New("no address left"))
		ms.Network().Detached(nil)
		w := ms.Worker()
		w.ObserveBoot("docker", 300*time.Millisecond)
		w.ObserveReady("docker", time.Second)
		w.ObserveExec("docker", 5*time.Millisecond)
		w.TransportError("docker", metrics.OpExec)
		created := time.Now().Add(-time.Second)
		for _, o := range []queue.OutcomeKind{queue.Completed, queue.Failed, queue.Retrying, queue.Deferred, queue.Rerouted, queue.Released, queue.Skipped} {
			ms.Tasks().TaskRan(&model.Task{ID: id, OwnerID: "owner-" + id, Type: model.TaskVMExecute, CreatedAt: created}, time.Now(), time.Millisecond, o)
		}
		ms.HTTP().Observe("/api/v1/vms/{id}", "GET", 200, time.Millisecond)
		ms.Webhooks().Delivery("github", metrics.WebhookDelivered)
	}
	round()
	before := metricstest.Render(t, ms).Series("aetherium_")
	for range 99 {
		round()
	}
	s := metricstest.Render(t, ms)
	after := s.Series("aetherium_")
	if !slices.Equal(before, after) {
		t.Fatalf("series grew: %d -> %d\n%v", len(before), len(after), after)
	}
	for _, series := range after {
		for _, id := range ids {
			if strings.Contains(series, id) {
				t.Fatalf("an id reached a label: %s", series)
			}
		}
	}
	for name, want := range map[string]float64{
		"aetherium_network_attachments_total":    200,
		"aetherium_network_detachments_total":    100,
		"aetherium_agent_transport_errors_total": 100,
		"aetherium_tasks_processed_total":        600, // Skipped ran nothing and is not counted
		"aetherium_webhook_deliveries_total":     100,
	} {
		if got := s.Value(name, nil); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if got := s.Value("aetherium_network_attachments_total", metricstest.Labels{"result": "error"}); got != 100 {
		t.Errorf("failed attachments = %v, want 100", got)
	}
	if got := s.Count("aetherium_task_duration_seconds", nil); got != 300 {
		t.Errorf("task durations = %d, want 300 (completed, failed and retried attempts)", got)
	}
	if got := s.Sum("aetherium_task_queue_wait_seconds", nil); got < 300 {
		t.Errorf("queue waits add up to %vs, want at least 300 (300 waits of a second or more)", got)
	}
	for name, n := range map[string]uint64{"aetherium_vm_boot_duration_seconds": 100, "aetherium_vm_create_to_ready_seconds": 100,
		"aetherium_exec_round_trip_seconds": 100} {
		if got := s.Count(name, metricstest.Labels{"backend": "docker"}); got != n {
			t.Errorf("%s count = %d, want %d", name, got, n)
		}
	}
	if got := s.Value("aetherium_build_info", metricstest.Labels{"version": "v1.2.3"}); got != 1 {
		t.Errorf("build_info{version=v1.2.3} = %v", got)
	}
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if _, ok := s[name]; !ok {
			t.Errorf("%s (runtime and process collectors) missing", name)
		}
	}
}

// TestNilSetRecordsNothing: with metrics off every part is nil, and every recording call is a no-op that leaves
// what it wraps as it is.
func TestNilSetRecordsNothing(t *testing.T) {
	var ms *metrics.Set
	if ms.Registry() != nil || ms.HTTP() != nil || ms.Tasks() != nil || ms.Worker() != nil || ms.Network() != nil || ms.Webhooks() != nil {
		t.Fatal("a nil Set has parts")
	}
	q := embedded.New(openStore(t).Tasks(), nil, queue.Options{}, nil)
	if got := ms.Tasks().WrapQueue(q); got != queue.Queue(q) {
		t.Fatal("a nil Tasks wrapped the queue")
	}
	if ms.Tasks().Observer() != nil {
		t.Fatal("a nil Tasks is a non-nil observer")
	}
	if err := ms.Tasks().WatchQueue(q); err != nil {
		t.Fatal(err)
	}
	if err := ms.Worker().WatchVMs(nil, "w", "docker"); err != nil {
		t.Fatal(err)
	}
	ms.HTTP().Observe("/x", "GET", 200, time.Second)
	ms.Tasks().TaskRan(&model.Task{}, time.Now(), time.Second, queue.Completed)
	ms.Worker().ObserveBoot("docker", time.Second)
	ms.Worker().ObserveReady("docker", time.Second)
	ms.Worker().ObserveExec("docker", time.Second)
	ms.Worker().TransportError("docker", metrics.OpExec)
	ms.Webhooks().Delivery("github", metrics.WebhookError)
	ms.Network().Attached(nil)
	ms.Network().Detached(errors.New("gone"))
	if err := ms.WatchLogs(func() metrics.LogStats { panic("read") }); err != nil {
		t.Fatal(err)
	}
}

// TestLogStatsAreReadAtScrape: the log shipping metrics are the client's counters as they are at each scrape, with
// the types their names promise.
func TestLogStatsAreReadAtScrape(t *testing.T) {
	ms := metrics.New("test")
	var st atomic.Pointer[metrics.LogStats]
	st.Store(&metrics.LogStats{Sent: 10, Dropped: 2, Queued: 5, Rejected: 1})
	if err := ms.WatchLogs(func() metrics.LogStats { return *st.Load() }); err != nil {
		t.Fatal(err)
	}
	check := func(want metrics.LogStats) {
		t.Helper()
		s := metricstest.Render(t, ms)
		for _, c := range []struct {
			name    string
			want    int64
			counter bool
		}{
			{"aetherium_log_entries_sent_total", want.Sent, true},
			{"aetherium_log_entries_dropped_total", want.Dropped, true},
			{"aetherium_log_entries_queued", want.Queued, false},
			{"aetherium_log_batches_rejected_total", want.Rejected, true},
		} {
			f, ok := s[c.name]
			if !ok {
				t.Fatalf("%s is not exposed", c.name)
			}
			if isCounter := f.GetType().String() == "COUNTER"; isCounter != c.counter {
				t.Errorf("%s has type %s", c.name, f.GetType())
			}
			if got := s.Value(c.name, nil); got != float64(c.want) {
				t.Errorf("%s = %v, want %d", c.name, got, c.want)
			}
		}
	}
	check(*st.Load())
	st.Store(&metrics.LogStats{Sent: 1000, Dropped: 77, Queued: 0, Rejected: 3})
	check(*st.Load())
	check(*st.Load()) // a scrape reads, never adds
	if err := ms.WatchLogs(func() metrics.LogStats { return metrics.LogStats{} }); err == nil {
		t.Fatal("a second log collector was registered")
	}
}

// BenchmarkRecordRequest is what the API's middleware adds to a request: one counter and one histogram.
func BenchmarkRecordRequest(b *testing.B) {
	h := metrics.New("bench").HTTP()
	for b.Loop() {
		h.Observe("/api/v1/vms/{id}/execute", "POST", 200, 3*time.Millisecond)
	}
}

// BenchmarkRecordTask is what the queue's observer adds to a delivery.
func BenchmarkRecordTask(b *testing.B) {
	tm := metrics.New("bench").Tasks()
	task := &model.Task{Type: model.TaskVMExecute, CreatedAt: time.Now()}
	for b.Loop() {
		tm.TaskRan(task, time.Now(), time.Millisecond, queue.Completed)
	}
}
