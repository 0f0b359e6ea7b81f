package api

import (
	"net/http"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/tracing"
)

// traceRequests starts a server span per request, continuing the caller's trace when it sent a traceparent. The
// span is named by the route pattern once the router has matched it (never by the path, which holds ids), and
// carries the request id of the access log.
func (s *server) traceRequests(next http.Handler) http.Handler {
	tracer := s.tracer.Tracer(tracing.ScopeName)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx := tracing.Propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
		ctx, span := tracer.Start(ctx, r.Method, trace.WithSpanKind(trace.SpanKindServer),
			trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
		defer span.End()
		if ri, ok := ctx.Value(infoKey).(*reqInfo); ok {
			span.SetAttributes(attribute.String("aetherium.request_id", ri.id))
		}
		ww, ok := w.(middleware.WrapResponseWriter)
		if !ok {
			ww = middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		}
		r = r.WithContext(ctx)
		next.ServeHTTP(ww, r)
		if rctx := chi.RouteContext(r.Context()); rctx != nil {
			if p := rctx.RoutePattern(); p != "" && p != "/*" {
				span.SetName(r.Method + " " + p)
				span.SetAttributes(attribute.String("http.route", p))
			}
		}
		status := ww.Status()
		if status == 0 {
			status = http.StatusOK
		}
		span.SetAttributes(attribute.Int("http.response.status_code", status))
		if ri, ok := ctx.Value(infoKey).(*reqInfo); ok && ri.ownerID != "" {
			span.SetAttributes(attribute.String("aetherium.key_id", ri.keyID))
		}
		if status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(status))
		}
	})
}
