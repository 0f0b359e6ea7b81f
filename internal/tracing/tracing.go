// Package tracing sets up OpenTelemetry tracing: an OTLP/HTTP exporter when an endpoint is configured, a no-op
// provider otherwise (spans then cost a few allocations and are never recorded), and the W3C trace context carried
// across the task queue inside the task's stored payload.
//
// Only the roots of a trace need the provider (the API's request spans, the worker's task spans): everything below
// starts its spans with Start, which takes the provider from the span already in the context, so no package keeps
// a global tracer.
package tracing

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.37.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// ScopeName is the instrumentation scope of Aetherium's spans.
const ScopeName = "github.com/aetherium/aetherium"

// Config says where spans go.
type Config struct {
	// Endpoint is the OTLP/HTTP receiver, e.g. http://otel-collector:4318 (its /v1/traces is used when the URL has
	// no path). Empty: tracing is off.
	Endpoint string
	// Headers are sent with every export (e.g. an API key of a hosted backend).
	Headers map[string]string
	// SampleRatio is the share of new traces recorded (0 < r <= 1; 0 means 1). A request whose caller sent a
	// sampled traceparent is always recorded.
	SampleRatio float64
	// Service, Role and Version describe this process (service.name, aetherium.role, service.version).
	Service, Role, Version string
}

// Provider is a tracer provider and how to stop it.
type Provider struct {
	trace.TracerProvider
	shutdown func(context.Context) error
}

// Enabled reports whether spans are exported.
func (p *Provider) Enabled() bool { return p != nil && p.shutdown != nil }

// Shutdown exports what is buffered and stops the exporter (a no-op provider has nothing to do).
func (p *Provider) Shutdown(ctx context.Context) error {
	if p == nil || p.shutdown == nil {
		return nil
	}
	return p.shutdown(ctx)
}

// Off is a provider that records nothing.
func Off() *Provider { return &Provider{TracerProvider: noop.NewTracerProvider()} }

// New builds the provider cfg asks for. The exporter connects lazily: an unreachable receiver costs dropped
// spans, never a failed start.
func New(ctx context.Context, cfg Config) (*Provider, error) {
	if cfg.Endpoint == "" {
		return Off(), nil
	}
	u, err := url.Parse(cfg.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("otlp_endpoint %q: want an http(s) URL such as http://otel-collector:4318", cfg.Endpoint)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/traces"
	}
	opts := []otlptracehttp.Option{otlptracehttp.WithEndpointURL(u.String())}
	if len(cfg.Headers) > 0 {
		opts = append(opts, otlptracehttp.WithHeaders(cfg.Headers))
	}
	exp, err := otlptracehttp.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	ratio := cfg.SampleRatio
	if ratio <= 0 || ratio > 1 {
		ratio = 1
	}
	service := cfg.Service
	if service == "" {
		service = "aetherium"
	}
	res := resource.NewSchemaless(semconv.ServiceName(service), semconv.ServiceVersion(cfg.Version),
		attribute.String("aetherium.role", cfg.Role))
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp, sdktrace.WithBatchTimeout(2*time.Second)),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
	)
	return &Provider{TracerProvider: tp, shutdown: tp.Shutdown}, nil
}

// Propagator is the W3C trace context (traceparent, tracestate), used on HTTP requests and task payloads.
var Propagator propagation.TextMapPropagator = propagation.TraceContext{}

// Start starts a span as a child of the span in ctx, with that span's provider (a no-op when ctx has none).
func Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	return trace.SpanFromContext(ctx).TracerProvider().Tracer(ScopeName).Start(ctx, name, opts...)
}

// End ends span, recording err (nil: success) on it.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, firstLine(err.Error()))
	}
	span.End()
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}

// PayloadKey is the member of a task's payload object that carries the trace context of the span that queued it.
const PayloadKey = "trace_context"

// InjectPayload adds the trace context of ctx's span to a task payload (a JSON object), so that the worker's span
// continues the trace. A payload that is not an object, or a context without a sampled span, is returned as it is.
func InjectPayload(ctx context.Context, payload json.RawMessage) json.RawMessage {
	if !trace.SpanContextFromContext(ctx).IsSampled() {
		return payload
	}
	carrier := propagation.MapCarrier{}
	Propagator.Inject(ctx, carrier)
	if len(carrier) == 0 {
		return payload
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(payload, &m); err != nil || m == nil {
		return payload
	}
	b, err := json.Marshal(carrier)
	if err != nil {
		return payload
	}
	m[PayloadKey] = b
	out, err := json.Marshal(m)
	if err != nil {
		return payload
	}
	return out
}

// ExtractPayload returns ctx with the remote span context a payload carries (ctx itself when it carries none). A
// payload comes from the store and is only read for the two W3C headers, which the propagator validates.
func ExtractPayload(ctx context.Context, payload json.RawMessage) context.Context {
	var p struct {
		Trace map[string]string `json:"trace_context"`
	}
	if err := json.Unmarshal(payload, &p); err != nil || len(p.Trace) == 0 {
		return ctx
	}
	return Propagator.Extract(ctx, propagation.MapCarrier(p.Trace))
}

// TracerOrNil is the provider when it exports, nil otherwise: what the API and the worker take to mean "no
// spans", so that tracing off costs nothing at all on their paths.
func (p *Provider) TracerOrNil() trace.TracerProvider {
	if !p.Enabled() {
		return nil
	}
	return p.TracerProvider
}
