package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// LogStats are the counters of a log shipping client (internal/logs' Loki client: logs.Stats), as the metrics
// report them. (This package does not import internal/logs, so that its tests can use these metrics.)
type LogStats struct {
	Sent     int64 // entries the log store acknowledged
	Dropped  int64 // entries lost: buffer full, refused by the store, retried too long, left at shutdown
	Queued   int64 // entries waiting or in flight
	Rejected int64 // batches the store refused with a 4xx other than 429
}

// WatchLogs reports stats, read at every scrape, as aetherium_log_entries_sent_total,
// aetherium_log_entries_dropped_total, aetherium_log_entries_queued and aetherium_log_batches_rejected_total: the
// client's own counters, so the metrics are exactly what it counted, never counted twice. A nil Set does nothing.
func (s *Set) WatchLogs(stats func() LogStats) error {
	if s == nil {
		return nil
	}
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(Namespace+"_"+name, help, nil, nil)
	}
	c := &logCollector{stats: stats,
		sent: desc("log_entries_sent_total", "Log entries shipped to the log store (loki_url) and acknowledged by it."),
		dropped: desc("log_entries_dropped_total",
			"Log entries lost on the way to the log store: the bounded buffer was full, the store refused their batch, it was retried too long, or it was left at shutdown. Stdout keeps the process's own records in any case."),
		queued:   desc("log_entries_queued", "Log entries waiting to be shipped to the log store, or in flight."),
		rejected: desc("log_batches_rejected_total", "Batches of log entries the log store refused with a 4xx other than 429 (their entries are counted as dropped)."),
	}
	if err := s.reg.Register(c); err != nil {
		return fmt.Errorf("metrics: log shipping: %w", err)
	}
	return nil
}

type logCollector struct {
	stats                           func() LogStats
	sent, dropped, queued, rejected *prometheus.Desc
}

func (c *logCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.sent
	ch <- c.dropped
	ch <- c.queued
	ch <- c.rejected
}

func (c *logCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.stats()
	ch <- prometheus.MustNewConstMetric(c.sent, prometheus.CounterValue, float64(st.Sent))
	ch <- prometheus.MustNewConstMetric(c.dropped, prometheus.CounterValue, float64(st.Dropped))
	ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(st.Queued))
	ch <- prometheus.MustNewConstMetric(c.rejected, prometheus.CounterValue, float64(st.Rejected))
}
