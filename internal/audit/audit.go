// Package audit records who changed what: every mutating API call and every token exchange, in the store's audit
// log and on the log stream (a record "audit"). Entries are queued in memory and written in batches off the request
// path; Close writes what is queued, so a graceful shutdown loses none.
package audit

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/store"
)

// Defaults of Recorder.
const (
	DefaultFlushEvery = time.Second
	DefaultBatch      = 200
	DefaultRetention  = 90 * 24 * time.Hour
	// maxQueued bounds the memory a store outage can take; past it entries are still logged, but not stored.
	maxQueued = 100_000
)

// Recorder queues audit entries and writes them in batches.
type Recorder struct {
	st        store.AuditStore
	log       *slog.Logger
	every     time.Duration
	retention time.Duration

	mu      sync.Mutex
	queue   []*store.AuditEntry
	dropped int
	kick    chan struct{}
	done    chan struct{}
	stop    chan struct{}
	once    sync.Once
}

// Options of NewRecorder.
type Options struct {
	FlushEvery time.Duration // default DefaultFlushEvery
	// Retention is how long entries are kept (default DefaultRetention; negative: forever). The recorder prunes
	// once an hour.
	Retention time.Duration
	Logger    *slog.Logger
}

// NewRecorder returns a recorder over st and starts its writer; Close stops it.
func NewRecorder(st store.AuditStore, o Options) *Recorder {
	if o.FlushEvery <= 0 {
		o.FlushEvery = DefaultFlushEvery
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	r := &Recorder{st: st, log: o.Logger, every: o.FlushEvery, retention: o.Retention,
		kick: make(chan struct{}, 1), done: make(chan struct{}), stop: make(chan struct{})}
	go r.run()
	return r
}

// Record queues e (and logs it at once).
func (r *Recorder) Record(ctx context.Context, e *store.AuditEntry) {
	if e.At.IsZero() {
		e.At = time.Now().UTC()
	}
	attrs := []slog.Attr{slog.String("key_id", e.KeyID), slog.String("owner_id", e.OwnerID),
		slog.String("role", e.Role), slog.String("method", e.Method), slog.String("route", e.Route),
		slog.Int("status", e.Status), slog.String("source", e.Source), slog.String("request_id", e.RequestID)}
	for k, v := range e.Params {
		attrs = append(attrs, slog.String("param_"+k, v))
	}
	r.log.LogAttrs(ctx, slog.LevelInfo, "audit", attrs...)
	r.mu.Lock()
	if len(r.queue) >= maxQueued {
		r.dropped++
	} else {
		r.queue = append(r.queue, e)
	}
	n := len(r.queue)
	r.mu.Unlock()
	if n >= DefaultBatch {
		select {
		case r.kick <- struct{}{}:
		default:
		}
	}
}

// Flush writes every queued entry now.
func (r *Recorder) Flush(ctx context.Context) {
	for {
		r.mu.Lock()
		batch := r.queue
		if len(batch) > DefaultBatch {
			batch = batch[:DefaultBatch]
		}
		r.queue = r.queue[len(batch):]
		dropped := r.dropped
		r.dropped = 0
		r.mu.Unlock()
		if dropped > 0 {
			r.log.Error("audit entries not stored: the queue was full", "dropped", dropped)
		}
		if len(batch) == 0 {
			return
		}
		if err := r.st.Append(ctx, batch); err != nil {
			r.log.Error("store audit entries; they stay queued", "err", err, "entries", len(batch))
			r.mu.Lock()
			r.queue = append(batch, r.queue...)
			r.mu.Unlock()
			return
		}
	}
}

func (r *Recorder) run() {
	defer close(r.done)
	t := time.NewTicker(r.every)
	defer t.Stop()
	var lastPrune time.Time
	for {
		select {
		case <-r.stop:
			return
		case <-t.C:
		case <-r.kick:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		r.Flush(ctx)
		if r.retention > 0 && time.Since(lastPrune) > time.Hour {
			lastPrune = time.Now()
			if n, err := r.st.Prune(ctx, time.Now().Add(-r.retention)); err != nil {
				r.log.Warn("prune audit log", "err", err)
			} else if n > 0 {
				r.log.Info("pruned audit log", "deleted", n)
			}
		}
		cancel()
	}
}

// Close stops the writer and writes what is still queued (bounded by ctx).
func (r *Recorder) Close(ctx context.Context) {
	r.once.Do(func() { close(r.stop) })
	<-r.done
	r.Flush(ctx)
}
