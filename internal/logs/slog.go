package logs

import (
	"bytes"
	"context"
	"log/slog"
	"sync/atomic"
	"time"
)

// metadataAttrs are the slog attributes copied into structured metadata (besides staying in the line), so the
// servers' own records can be found by the ids they mention.
var metadataAttrs = map[string]bool{MetaVMID: true, MetaTaskID: true, MetaExecutionID: true, MetaRunID: true,
	MetaOwnerID: true, "vm": true, "task": true, "execution": true, "run": true}

// TeeHandler is a slog.Handler that hands each record to next (stdout, as before) and to a Sink as an Entry of kind
// "server": so every existing slog call ships without changes. The entry's line is the record in logfmt without
// time and level (those are the entry's timestamp and level label).
type TeeHandler struct {
	next   slog.Handler
	sink   Sink
	labels Labels
	ops    []teeOp // WithAttrs and WithGroup calls, replayed on the line formatter
	meta   map[string]string
}

type teeOp struct {
	group string
	attrs []slog.Attr
}

// NewTeeHandler tees next into sink; labels give service, role and worker (level and kind are set per record).
func NewTeeHandler(next slog.Handler, sink Sink, labels Labels) *TeeHandler {
	labels.Kind = KindServer
	return &TeeHandler{next: next, sink: sink, labels: labels}
}

// Enabled follows next: the sink gets the records stdout gets.
func (h *TeeHandler) Enabled(ctx context.Context, l slog.Level) bool { return h.next.Enabled(ctx, l) }

// Handle writes to next, then pushes the entry (Push never blocks on the network).
func (h *TeeHandler) Handle(ctx context.Context, r slog.Record) error {
	err := h.next.Handle(ctx, r)
	var buf bytes.Buffer
	var f slog.Handler = slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug,
		ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && (a.Key == slog.TimeKey || a.Key == slog.LevelKey) {
				return slog.Attr{}
			}
			return a
		}})
	for _, op := range h.ops {
		if op.group != "" {
			f = f.WithGroup(op.group)
		} else {
			f = f.WithAttrs(op.attrs)
		}
	}
	_ = f.Handle(ctx, r)
	line := bytes.TrimRight(buf.Bytes(), "\n")
	meta := make(map[string]string, len(h.meta)+2)
	for k, v := range h.meta {
		meta[k] = v
	}
	if !hasGroup(h.ops) {
		r.Attrs(func(a slog.Attr) bool {
			addMeta(meta, a)
			return true
		})
	}
	labels := h.labels
	labels.Level = levelName(r.Level)
	t := r.Time
	if t.IsZero() {
		t = time.Now()
	}
	_ = h.sink.Push(ctx, Entry{Time: t, Line: string(line), Labels: labels, Metadata: meta})
	return err
}

func addMeta(meta map[string]string, a slog.Attr) {
	if !metadataAttrs[a.Key] {
		return
	}
	key := a.Key
	switch key { // the short names some call sites use
	case "vm", "task", "execution", "run":
		key += "_id"
	}
	if v := a.Value.Resolve(); v.Kind() != slog.KindGroup {
		meta[key] = v.String()
	}
}

// WithAttrs returns a handler whose records carry attrs.
func (h *TeeHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	c := h.clone()
	c.next = h.next.WithAttrs(attrs)
	c.ops = append(c.ops, teeOp{attrs: attrs})
	if !hasGroup(h.ops) { // attributes inside a group are not the ids they may be named like
		for _, a := range attrs {
			addMeta(c.meta, a)
		}
	}
	return c
}

// WithGroup returns a handler that nests later attributes under name.
func (h *TeeHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	c := h.clone()
	c.next = h.next.WithGroup(name)
	c.ops = append(c.ops, teeOp{group: name})
	return c
}

func (h *TeeHandler) clone() *TeeHandler {
	c := *h
	c.ops = append([]teeOp(nil), h.ops...)
	c.meta = make(map[string]string, len(h.meta))
	for k, v := range h.meta {
		c.meta[k] = v
	}
	return &c
}

func hasGroup(ops []teeOp) bool {
	for _, op := range ops {
		if op.group != "" {
			return true
		}
	}
	return false
}

func levelName(l slog.Level) string {
	switch {
	case l < slog.LevelInfo:
		return "debug"
	case l < slog.LevelWarn:
		return "info"
	case l < slog.LevelError:
		return "warn"
	default:
		return "error"
	}
}

// Stdout is the default Sink: entries go to a slog.Logger (the process's stderr, text or JSON). Executions' output
// and consoles are logged at debug level, since the store keeps them and stdout is for operators; everything else
// at the level of its label.
type Stdout struct {
	log    *slog.Logger
	closed atomic.Bool
}

// NewStdout returns a Sink writing to log.
func NewStdout(log *slog.Logger) *Stdout { return &Stdout{log: log} }

// Push logs each entry.
func (s *Stdout) Push(ctx context.Context, entries ...Entry) error {
	if s.closed.Load() {
		return ErrClosed
	}
	for _, e := range entries {
		level := slog.LevelInfo
		switch {
		case e.Labels.Kind == KindExec || e.Labels.Kind == KindConsole || e.Labels.Level == "debug":
			level = slog.LevelDebug
		case e.Labels.Level == "warn":
			level = slog.LevelWarn
		case e.Labels.Level == "error":
			level = slog.LevelError
		}
		if !s.log.Enabled(ctx, level) {
			continue
		}
		attrs := make([]slog.Attr, 0, len(e.Metadata)+1)
		attrs = append(attrs, slog.String("kind", e.Labels.Kind))
		for k, v := range e.Metadata {
			attrs = append(attrs, slog.String(k, v))
		}
		s.log.LogAttrs(ctx, level, e.Line, attrs...)
	}
	return nil
}

// Health is always fine: stdout has no backend.
func (s *Stdout) Health(context.Context) error { return nil }

// Close has nothing to flush; later pushes fail, as with every Sink.
func (s *Stdout) Close(context.Context) error {
	s.closed.Store(true)
	return nil
}
