package api

import (
	"context"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"

	"github.com/aetherium/aetherium/internal/metrics"
)

// routeMark travels in the request context of a request the metrics middleware sees, so that the router's 404 and
// 405 handlers can say the request matched no route.
type routeMark struct{ unmatched bool }

// markUnmatched tells the metrics middleware, if it runs, that r matched no route.
func markUnmatched(r *http.Request) {
	if m, ok := r.Context().Value(routeMarkKey).(*routeMark); ok {
		m.unmatched = true
	}
}

// observe records every request in the HTTP metrics by its route pattern ("/api/v1/vms/{id}/execute"), never its
// path, so that VM and execution ids add no series; a request that matched no route counts as
// metrics.RouteUnmatched. It sits inside the access log, whose response writer tells the status, and outside the
// recoverer, whose 500 it counts. A response cut short (http.ErrAbortHandler) is counted too.
func (s *server) observe(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		ww, ok := w.(middleware.WrapResponseWriter)
		if !ok {
			ww = middleware.NewWrapResponseWriter(w, r.ProtoMajor)
		}
		mark := &routeMark{}
		r = r.WithContext(context.WithValue(r.Context(), routeMarkKey, mark))
		defer func() {
			s.metrics.Observe(routeLabel(r, mark), r.Method, ww.Status(), time.Since(start))
		}()
		next.ServeHTTP(ww, r)
	})
}

// routeLabel is the route label of a request that has been routed.
func routeLabel(r *http.Request, mark *routeMark) string {
	if mark.unmatched {
		return metrics.RouteUnmatched
	}
	rctx := chi.RouteContext(r.Context())
	if rctx == nil {
		return metrics.RouteUnmatched
	}
	p := rctx.RoutePattern()
	if p == "" || p == "/*" {
		return metrics.RouteUnmatched
	}
	return p
}
