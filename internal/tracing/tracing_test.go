package tracing_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/tracing"
	"github.com/aetherium/aetherium/internal/tracing/tracingtest"
)

// TestExportAndPayloadPropagation: with an endpoint, spans reach an OTLP/HTTP receiver; a span continued from a
// task payload is in the producer's trace, as its child.
func TestExportAndPayloadPropagation(t *testing.T) {
	rcv := tracingtest.New(t)
	tp, err := tracing.New(t.Context(), tracing.Config{Endpoint: rcv.URL, Role: "gateway", Version: "t1"})
	if err != nil {
		t.Fatal(err)
	}
	if !tp.Enabled() || tp.TracerOrNil() == nil {
		t.Fatal("a provider with an endpoint is not enabled")
	}
	ctx, root := tp.Tracer("test").Start(context.Background(), "request")
	pctx, producer := tracing.Start(ctx, "enqueue vm:execute", trace.WithSpanKind(trace.SpanKindProducer))
	payload := tracing.InjectPayload(pctx, json.RawMessage(`{"vm_id":"v1","execution_id":"e1"}`))
	producer.End()
	root.End()
	var p struct {
		VMID  string            `json:"vm_id"`
		Trace map[string]string `json:"trace_context"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || p.VMID != "v1" || p.Trace["traceparent"] == "" {
		t.Fatalf("payload with the trace context: %s (%v)", payload, err)
	}
	// The worker side: another provider (another process), continuing from the payload.
	wtp, err := tracing.New(t.Context(), tracing.Config{Endpoint: rcv.URL + "/v1/traces", Role: "worker"})
	if err != nil {
		t.Fatal(err)
	}
	wctx, consumer := wtp.Tracer("test").Start(tracing.ExtractPayload(context.Background(), payload), "task vm:execute",
		trace.WithSpanKind(trace.SpanKindConsumer))
	_, step := tracing.Start(wctx, "exec")
	tracing.End(step, context.DeadlineExceeded)
	consumer.End()
	for _, p := range []*tracing.Provider{tp, wtp} {
		if err := p.Shutdown(t.Context()); err != nil {
			t.Fatalf("shutdown: %v", err)
		}
	}
	spans, ok := rcv.Wait(5*time.Second, func(s []tracingtest.Span) bool { return len(s) == 4 })
	if !ok {
		t.Fatalf("received %d spans, want 4: %+v", len(spans), spans)
	}
	by := map[string]tracingtest.Span{}
	for _, s := range spans {
		by[s.Name] = s
	}
	req, enq, task, exec := by["request"], by["enqueue vm:execute"], by["task vm:execute"], by["exec"]
	if enq.TraceID != req.TraceID || task.TraceID != req.TraceID || exec.TraceID != req.TraceID {
		t.Fatalf("not one trace: %+v", spans)
	}
	if enq.ParentSpanID != req.SpanID || task.ParentSpanID != enq.SpanID || exec.ParentSpanID != task.SpanID {
		t.Fatalf("parents: enqueue<-%s task<-%s exec<-%s; want %s, %s, %s", enq.ParentSpanID, task.ParentSpanID,
			exec.ParentSpanID, req.SpanID, enq.SpanID, task.SpanID)
	}
	if req.Resource["aetherium.role"] != "gateway" || task.Resource["aetherium.role"] != "worker" ||
		req.Resource["service.name"] != "aetherium" || req.Resource["service.version"] != "t1" {
		t.Fatalf("resources: %v / %v", req.Resource, task.Resource)
	}
	if !exec.StatusError || exec.StatusError == req.StatusError {
		t.Fatalf("the failed step is not marked failed, or the request is: %+v %+v", exec, req)
	}
}

func TestPayloadLeftAlone(t *testing.T) {
	ctx := context.Background() // no span
	for _, p := range []string{`{"a":1}`, `[1,2]`, `null`, `"x"`} {
		if got := string(tracing.InjectPayload(ctx, json.RawMessage(p))); got != p {
			t.Errorf("InjectPayload without a span changed %s to %s", p, got)
		}
	}
	tp, _ := tracing.New(ctx, tracing.Config{Endpoint: "http://127.0.0.1:1"})
	sctx, span := tp.Tracer("t").Start(ctx, "x")
	defer span.End()
	if got := string(tracing.InjectPayload(sctx, json.RawMessage(`[1,2]`))); got != `[1,2]` {
		t.Errorf("a payload that is no object was changed: %s", got)
	}
	if c := tracing.ExtractPayload(ctx, json.RawMessage(`{"trace_context":{"traceparent":"garbage"}}`)); trace.SpanContextFromContext(c).IsValid() {
		t.Error("a malformed traceparent was taken")
	}
	_ = tp.Shutdown(ctx)
}

func TestOffAndBadEndpoint(t *testing.T) {
	tp, err := tracing.New(t.Context(), tracing.Config{})
	if err != nil || tp.Enabled() || tp.TracerOrNil() != nil || tp.Shutdown(t.Context()) != nil {
		t.Fatalf("no endpoint: %+v %v; want a provider that is off", tp, err)
	}
	for _, bad := range []string{"collector:4318", "ftp://x", "http://"} {
		if _, err := tracing.New(t.Context(), tracing.Config{Endpoint: bad}); err == nil {
			t.Errorf("endpoint %q was taken", bad)
		}
	}
}
