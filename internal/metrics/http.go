package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// RouteUnmatched is the route label of a request that matched no route (404 and 405 from the router), so that
// scanners probing random paths add no series.
const RouteUnmatched = "unmatched"

// HTTP is the metrics of the REST API.
type HTTP struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newHTTP(reg prometheus.Registerer) *HTTP {
	h := &HTTP{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "http", Name: "requests_total",
			Help: "HTTP requests answered by the API, by route pattern, method and status code.",
		}, []string{"route", "method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "http", Name: "request_duration_seconds",
			Help:    "Time from a request's arrival to the end of its answer, by route pattern and method. Streams and shells count for as long as they stay open.",
			Buckets: httpBuckets,
		}, []string{"route", "method"}),
	}
	reg.MustRegister(h.requests, h.duration)
	return h
}

// Observe records one answered request. route must be a route pattern ("/api/v1/vms/{id}") or RouteUnmatched,
// never a raw path; a status of 0 (nothing written) is counted as 200, as net/http sends.
func (h *HTTP) Observe(route, method string, status int, took time.Duration) {
	if h == nil {
		return
	}
	if status == 0 {
		status = http.StatusOK
	}
	method = methodLabel(method)
	h.requests.WithLabelValues(route, method, strconv.Itoa(status)).Inc()
	h.duration.WithLabelValues(route, method).Observe(took.Seconds())
}

// methodLabel bounds the method label: a client may send any token as a method.
func methodLabel(m string) string {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete,
		http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return m
	}
	return "other"
}
