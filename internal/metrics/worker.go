package metrics

import (
	"context"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// Worker is the metrics of a worker's VMs: how long they take to boot and to become ready, the round trips of
// executions to the guest agent, and the transport errors on the way.
type Worker struct {
	reg             prometheus.Registerer
	boot            *prometheus.HistogramVec
	ready           *prometheus.HistogramVec
	execRoundTrip   *prometheus.HistogramVec
	transportErrors *prometheus.CounterVec
}

func newWorker(reg prometheus.Registerer) *Worker {
	w := &Worker{
		reg: reg,
		boot: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "vm", Name: "boot_duration_seconds",
			Help:    "Time the backend took to start a created VM until its agent answered (StartVM), by backend.",
			Buckets: bootBuckets,
		}, []string{"backend"}),
		ready: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "vm", Name: "create_to_ready_seconds",
			Help:    "Time from the start of a VM's creation on the worker to the VM running with its tools installed, by backend (successful creations).",
			Buckets: bootBuckets,
		}, []string{"backend"}),
		execRoundTrip: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "exec", Name: "round_trip_seconds",
			Help:    "Time from sending an execution to the guest agent to having its result back, command run time included, by backend (executions the agent answered, whatever their exit code).",
			Buckets: execBuckets,
		}, []string{"backend"}),
		transportErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "agent", Name: "transport_errors_total",
			Help: "Calls to a guest agent that failed on the way (no answer, a broken connection), not by the command's exit code, by backend and operation.",
		}, []string{"backend", "op"}),
	}
	reg.MustRegister(w.boot, w.ready, w.execRoundTrip, w.transportErrors)
	return w
}

// Agent operations, the op label of aetherium_agent_transport_errors_total.
const (
	OpExec = "exec"
)

// ObserveBoot records a successful StartVM.
func (w *Worker) ObserveBoot(backend string, took time.Duration) {
	if w == nil {
		return
	}
	w.boot.WithLabelValues(backend).Observe(took.Seconds())
}

// ObserveReady records a VM that became running, took after its creation began on this worker.
func (w *Worker) ObserveReady(backend string, took time.Duration) {
	if w == nil {
		return
	}
	w.ready.WithLabelValues(backend).Observe(took.Seconds())
}

// ObserveExec records an execution the agent answered.
func (w *Worker) ObserveExec(backend string, took time.Duration) {
	if w == nil {
		return
	}
	w.execRoundTrip.WithLabelValues(backend).Observe(took.Seconds())
}

// TransportError counts a call to an agent that failed on the way (op: OpExec).
func (w *Worker) TransportError(backend, op string) {
	if w == nil {
		return
	}
	w.transportErrors.WithLabelValues(backend, op).Inc()
}

// vmStates are the states a worker's VMs can be in; every one is reported, zero or not, so the series are fixed.
var vmStates = []model.VMStatus{model.VMCreating, model.VMRunning, model.VMPaused, model.VMStopping, model.VMStopped, model.VMFailed}

// vmListTimeout bounds the store reads of one scrape.
const vmListTimeout = 5 * time.Second

// WatchVMs reports, at every scrape, how many of workerID's VMs are in each state (aetherium_vms{state,backend}),
// read from the store. Deleted VMs are not counted; pending ones have no worker yet. A nil Worker does nothing.
func (w *Worker) WatchVMs(vms store.VMStore, workerID, backend string) error {
	if w == nil {
		return nil
	}
	c := &vmCollector{vms: vms, workerID: workerID, backend: backend, desc: prometheus.NewDesc(Namespace+"_vms",
		"VMs of this worker by state and backend, read from the store at each scrape (deleted VMs are not counted).",
		[]string{"state", "backend"}, nil)}
	if err := w.reg.Register(c); err != nil {
		return fmt.Errorf("metrics: vm states: %w", err)
	}
	return nil
}

type vmCollector struct {
	vms      store.VMStore
	workerID string
	backend  string
	desc     *prometheus.Desc
}

func (c *vmCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *vmCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), vmListTimeout)
	defer cancel()
	counts, err := c.count(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.desc, err)
		return
	}
	for _, s := range vmStates {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(counts[s]), string(s), c.backend)
	}
}

func (c *vmCollector) count(ctx context.Context) (map[model.VMStatus]int, error) {
	counts := make(map[model.VMStatus]int, len(vmStates))
	page := store.Page{Limit: 500}
	for {
		batch, err := c.vms.List(ctx, store.VMFilter{WorkerID: c.workerID, Statuses: vmStates, Page: page})
		if err != nil {
			return nil, fmt.Errorf("list vms of worker %s: %w", c.workerID, err)
		}
		for _, vm := range batch {
			counts[vm.Status]++
		}
		if len(batch) < page.Limit {
			return counts, nil
		}
		page.After = batch[len(batch)-1].ID
	}
}
