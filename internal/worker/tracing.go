package worker

import (
	"context"
	"encoding/json"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/tracing"
)

// traced wraps a task handler in the task's consumer span: a child of the span that queued it (its context is in
// the stored payload), preceded by a "queue wait" span from when the task was queued to when this attempt began,
// so one trace shows the request, the wait and the work. Without a tracer the handler runs as it is.
func (w *Worker) traced(h queue.Handler) queue.Handler {
	if w.cfg.Tracer == nil {
		return h
	}
	tracer := w.cfg.Tracer.Tracer(tracing.ScopeName)
	return func(ctx context.Context, t *model.Task) (json.RawMessage, error) {
		parent := tracing.ExtractPayload(ctx, t.Payload)
		attrs := []attribute.KeyValue{attribute.String("aetherium.task_id", t.ID),
			attribute.String("aetherium.task_type", string(t.Type)), attribute.String("aetherium.worker_id", w.cfg.ID),
			attribute.Int("aetherium.attempt", t.RetryCount+1)}
		if t.VMID != "" {
			attrs = append(attrs, attribute.String("aetherium.vm_id", t.VMID))
		}
		if queued := t.CreatedAt; t.RetryCount == 0 && !queued.IsZero() && t.StartedAt != nil && t.StartedAt.After(queued) {
			if t.ScheduledAt != nil && t.ScheduledAt.After(queued) && t.ScheduledAt.Before(*t.StartedAt) {
				queued = *t.ScheduledAt // delayed on purpose: the wait starts when it was due
			}
			_, wait := tracer.Start(parent, "queue wait", trace.WithTimestamp(queued), trace.WithSpanKind(trace.SpanKindInternal),
				trace.WithAttributes(attribute.String("aetherium.task_type", string(t.Type)),
					attribute.String("aetherium.priority", string(t.Priority))))
			wait.End(trace.WithTimestamp(*t.StartedAt))
		}
		opts := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...)}
		if sc := trace.SpanContextFromContext(parent); sc.IsValid() {
			opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc,
				Attributes: []attribute.KeyValue{attribute.String("aetherium.link", "producer")}}))
		}
		ctx, span := tracer.Start(parent, "task "+string(t.Type), opts...)
		// The handler's own context: its cancellation and values are the queue's, its span is the task's.
		ctx = trace.ContextWithSpan(ctx, span)
		res, err := h(ctx, t)
		if err != nil {
			span.SetAttributes(attribute.String("aetherium.outcome", outcome(err)))
		}
		tracing.End(span, err)
		return res, err
	}
}

// outcome names what the queue does with a handler's error.
func outcome(err error) string {
	if queue.IsPermanent(err) {
		return "failed"
	}
	return "retry"
}

// stepSpan starts a span for one step of a handler (disk, network, boot, agent ready, exec, ...).
func stepSpan(ctx context.Context, name string, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	return tracing.Start(ctx, name, trace.WithAttributes(attrs...))
}
