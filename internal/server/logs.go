package server

import (
	"context"
	"log/slog"
	"time"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/logs"
)

// logCloseTimeout bounds the flush of buffered log entries at shutdown.
const logCloseTimeout = 10 * time.Second

// openLogs picks the log sink: Loki when loki_url is set, with the servers' own slog records teed into it (stdout
// keeps them too), else stdout. It returns the sink, the logger to use from now on and a close func that flushes.
func openLogs(ctx context.Context, cfg config.Config, roles Roles, log *slog.Logger) (logs.Sink, *slog.Logger, func(), error) {
	if cfg.LokiURL == "" {
		return logs.NewStdout(log), log, func() {}, nil
	}
	loki, err := logs.NewLoki(logs.LokiConfig{URL: cfg.LokiURL, Tenant: cfg.LokiTenant, Username: cfg.LokiUsername,
		Password: cfg.LokiPassword, BearerToken: cfg.LokiBearerToken,
		Logger: log}) // the plain logger: the client's own trouble must not feed back into it
	if err != nil {
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
