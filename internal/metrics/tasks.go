package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
)

// Task results, the result label of aetherium_tasks_processed_total: how a delivery whose handler ran ended.
const (
	ResultCompleted = "completed"
	ResultFailed    = "failed"   // for good: permanent error or no retry left
	ResultRetried   = "retried"  // the attempt failed and the task runs again
	ResultDeferred  = "deferred" // the task could not start yet (its VM was busy) and waits in the queue
	ResultRerouted  = "rerouted" // the task must run on the worker that hosts its VM
	ResultReleased  = "released" // a shutdown cut the attempt short; it runs again, uncounted
)

// Tasks is the metrics of the task queue: what is enqueued, what ran and how it ended, and the queues' depths.
type Tasks struct {
	reg       prometheus.Registerer
	enqueued  *prometheus.CounterVec
	processed *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	wait      *prometheus.HistogramVec
}

func newTasks(reg prometheus.Registerer) *Tasks {
	t := &Tasks{
		reg: reg,
		enqueued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "tasks", Name: "enqueued_total",
			Help: "Tasks put on the queue by this process, by task type and priority.",
		}, []string{"type", "priority"}),
		processed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "tasks", Name: "processed_total",
			Help: "Deliveries whose handler ran on this worker, by task type and result (completed, failed, retried, deferred, rerouted, released).",
		}, []string{"type", "result"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "task", Name: "duration_seconds",
			Help:    "Run time of task attempts that ran (completed, failed or retried), by task type.",
			Buckets: taskBuckets,
		}, []string{"type"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "task", Name: "queue_wait_seconds",
			Help:    "Time from a task's creation, or the time its retry or delay was due, to the start of an attempt that ran, by task type.",
			Buckets: taskBuckets,
		}, []string{"type"}),
	}
	reg.MustRegister(t.enqueued, t.processed, t.duration, t.wait)
	return t
}

// WrapQueue returns q counting what is enqueued through it (aetherium_tasks_enqueued_total). A nil Tasks returns q
// itself.
func (t *Tasks) WrapQueue(q queue.Queue) queue.Queue {
	if t == nil {
		return q
	}
	return &countingQueue{Queue: q, m: t}
}

type countingQueue struct {
	queue.Queue
	m *Tasks
}

func (q *countingQueue) Enqueue(ctx context.Context, m queue.Message) error {
	if err := q.Queue.Enqueue(ctx, m); err != nil {
		return err
	}
	p := m.Priority
	if p == "" {
		p = model.PriorityDefault
	}
	q.m.enqueued.WithLabelValues(typeLabel(m.Type), string(p)).Inc()
	return nil
}

func typeLabel(t model.TaskType) string {
	if t == "" {
		return "unknown"
	}
	return string(t)
}

// TaskRan implements queue.Observer.
func (t *Tasks) TaskRan(task *model.Task, started time.Time, took time.Duration, outcome queue.OutcomeKind) {
	if t == nil || task == nil {
		return
	}
	var result string
	ran := true
	switch outcome {
	case queue.Completed:
		result = ResultCompleted
	case queue.Failed:
		result = ResultFailed
	case queue.Retrying:
		result = ResultRetried
	case queue.Deferred:
		result, ran = ResultDeferred, false
	case queue.Rerouted:
		result, ran = ResultRerouted, false
	case queue.Released:
		result, ran = ResultReleased, false
	default:
		return // skipped: nothing ran
	}
	typ := typeLabel(task.Type)
	t.processed.WithLabelValues(typ, result).Inc()
	if !ran {
		// Nothing of the task ran (deferred, rerouted) or its run was cut short: its times would only blur those
		// of the attempts that did.
		return
	}
	t.duration.WithLabelValues(typ).Observe(took.Seconds())
	due := task.CreatedAt
	if task.ScheduledAt != nil && task.ScheduledAt.After(due) {
		due = *task.ScheduledAt
	}
	if !due.IsZero() {
		t.wait.WithLabelValues(typ).Observe(max(started.Sub(due), 0).Seconds())
	}
}

// Observer returns t as a queue.Observer, or nil (no observer) for a nil Tasks: a nil *Tasks in the interface would
// be a non-nil observer.
func (t *Tasks) Observer() queue.Observer {
	if t == nil {
		return nil
	}
	return t
}

// statsTimeout bounds the queue statistics read at each scrape.
const statsTimeout = 5 * time.Second

// WatchQueue reports the depth of q's queues at every scrape (aetherium_queue_tasks{queue,state}, from
// queue.Stats). A nil Tasks does nothing.
func (t *Tasks) WatchQueue(q queue.Queue) error {
	if t == nil {
		return nil
	}
	c := &depthCollector{q: q, desc: prometheus.NewDesc(Namespace+"_queue_tasks",
		"Tasks in each queue by state: pending (ready), active (running), scheduled (waiting for a retry or a delay). Read from the queue at each scrape.",
		[]string{"queue", "state"}, nil)}
	if err := t.reg.Register(c); err != nil {
		return fmt.Errorf("metrics: queue depth: %w", err)
	}
	return nil
}

type depthCollector struct {
	q    queue.Queue
	desc *prometheus.Desc
}

func (c *depthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *depthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
	defer cancel()
	st, err := c.q.Stats(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, fmt.Errorf("queue stats: %w", err))
		return
	}
	for _, qs := range st.Queues {
		for _, s := range []struct {
			state string
			n     int
		}{{"pending", qs.Pending}, {"active", qs.Active}, {"scheduled", qs.Scheduled}} {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(s.n), qs.Name, s.state)
		}
	}
}
