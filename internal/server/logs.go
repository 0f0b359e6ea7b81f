package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
)

// logCloseTimeout bounds the flush of buffered log entries at shutdown.
const logCloseTimeout = 10 * time.Second

// openLogs picks the log sink: Loki when loki_url is set, with the servers' own slog records teed into it (stdout
// keeps them too), else stdout. It returns the sink, the logger to use from now on and a close func that flushes.
// The Loki client's counters are reported in ms (aetherium_log_*; nil ms: not reported).
func openLogs(ctx context.Context, cfg config.Config, roles Roles, ms *metrics.Set, log *slog.Logger) (logs.Sink, *slog.Logger, func(), error) {
	if cfg.LokiURL == "" {
		return logs.NewStdout(log), log, func() {}, nil
	}
	loki, err := logs.NewLoki(logs.LokiConfig{URL: cfg.LokiURL, Format: cfg.LokiFormat, Tenant: cfg.LokiTenant,
		Username: cfg.LokiUsername, Password: cfg.LokiPassword, BearerToken: cfg.LokiBearerToken,
		Logger: log}) // the plain logger: the client's own trouble must not feed back into it
	if err != nil {
		return nil, nil, nil, err
	}
	if err := ms.WatchLogs(lokiStats(loki)); err != nil {
		_ = loki.Close(ctx)
		return nil, nil, nil, err
	}
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	if err := loki.Health(hctx); err != nil {
		// Not fatal: the client buffers and retries, and logging must not stop the servers.
		log.Warn("loki is not reachable yet; entries are buffered and retried", "err", err)
	}
	cancel()
	teed := slog.New(logs.NewTeeHandler(log.Handler(), loki, logs.Labels{Service: "aetherium", Role: roleName(roles), Worker: workerLabel(cfg, roles)}))
	closeFn := func() {
		cctx, cancel := context.WithTimeout(context.Background(), min(logCloseTimeout, cfg.ShutdownFor))
		defer cancel()
		err := loki.Close(cctx)
		st := loki.Stats()
		log.Info("log shipping stopped", "sent", st.Sent, "dropped", st.Dropped, "rejected_batches", st.Rejected, "err", err)
	}
	return loki, teed, closeFn, nil
}

// lokiStats reads the client's counters for the metrics, at each scrape.
func lokiStats(l *logs.Loki) func() metrics.LogStats {
	return func() metrics.LogStats {
		st := l.Stats()
		return metrics.LogStats{Sent: st.Sent, Dropped: st.Dropped, Queued: st.Queued, Rejected: st.Rejected}
	}
}

func roleName(r Roles) string {
	switch {
	case r.API && r.Worker:
		return "serve"
	case r.Worker:
		return "worker"
	default:
		return "gateway"
	}
}

// workerLabel is the worker id for processes that run a worker: a bounded set (the fleet's hosts).
func workerLabel(cfg config.Config, r Roles) string {
	if r.Worker {
		return cfg.WorkerID
	}
	return ""
}

// taskLogObserver ships one "task" entry per delivery whose handler ran (the queue.Runner tells every outcome, on
// both queues), after telling next (the metrics observer, or nil).
type taskLogObserver struct {
	next   queue.Observer
	sink   logs.Sink
	labels logs.Labels
}

// withTaskLogs adds task lifecycle entries to obs when logs go to Loki (stdout keeps its lines as they were).
func withTaskLogs(obs queue.Observer, sink logs.Sink, cfg config.Config, roles Roles) queue.Observer {
	if _, ok := sink.(*logs.Loki); !ok {
		return obs
	}
	return taskLogObserver{next: obs, sink: sink,
		labels: logs.Labels{Service: "aetherium", Role: roleName(roles), Worker: workerLabel(cfg, roles), Kind: logs.KindTask}}
}

func (o taskLogObserver) TaskRan(t *model.Task, started time.Time, took time.Duration, outcome queue.OutcomeKind) {
	if o.next != nil {
		o.next.TaskRan(t, started, took, outcome)
	}
	// Push only fails on a closed sink at shutdown; the store keeps the task's outcome in any case.
	_ = o.sink.Push(context.Background(), taskEntry(o.labels, t, started, took, outcome))
}

func taskEntry(labels logs.Labels, t *model.Task, started time.Time, took time.Duration, outcome queue.OutcomeKind) logs.Entry {
	labels.Level = "info"
	switch outcome {
	case queue.Failed:
		labels.Level = "error"
	case queue.Retrying:
		labels.Level = "warn"
	}
	line := fmt.Sprintf("task %s %s after %s (retries so far: %d)", t.Type, outcome, took.Round(time.Millisecond), t.RetryCount)
	if t.Error != "" && (outcome == queue.Failed || outcome == queue.Retrying) {
		line += ": " + t.Error
	}
	meta := map[string]string{logs.MetaTaskID: t.ID, logs.MetaOwnerID: t.OwnerID}
	if t.VMID != "" {
		meta[logs.MetaVMID] = t.VMID
	}
	return logs.Entry{Time: started.Add(took), Line: line, Labels: labels, Metadata: meta}
}

// logQuerier is what answers the API's log queries: Loki's query_range at loki_url, or nil (the API then answers
// from the store what it can).
func logQuerier(cfg config.Config) logs.Querier {
	if cfg.LokiURL == "" {
		return nil
	}
	return &logs.LokiQuerier{URL: cfg.LokiURL, Tenant: cfg.LokiTenant, Username: cfg.LokiUsername,
		Password: cfg.LokiPassword, BearerToken: cfg.LokiBearerToken}
}
