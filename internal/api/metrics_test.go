package api

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
)

func newMetricsEnv(t *testing.T, configure func(*Config)) (*testEnv, *metrics.Set) {
	t.Helper()
	ms := metrics.New("test")
	e := newEnv(t, func(c *Config) {
		c.Metrics = ms.HTTP()
		if configure != nil {
			configure(c)
		}
	})
	return e, ms
}

// TestMetricsLabelRequestsByRoutePattern: requests are counted by the route they matched, with its {id}
// placeholders, never by their path; requests that match no route (404, 405) share one fixed label.
func TestMetricsLabelRequestsByRoutePattern(t *testing.T) {
	e, ms := newMetricsEnv(t, nil)
	idA, idB := uuid.NewString(), uuid.NewString()
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", "/api/v1/vms/" + idA, 404}, // matched route, unknown VM
		{"GET", "/api/v1/vms/" + idB, 404},
		{"GET", "/api/v1/vms", 200},
		{"POST", "/api/v1/vms/" + idA + "/execute", 404},
		{"GET", "/api/v1/health", 200},
		{"GET", "/api/v1/executions/" + idB + "/stream", 404},
		{"GET", "/api/v1/nothing/" + idA, 404}, // no route
		{"GET", "/", 404},
		{"PATCH", "/api/v1/vms/" + idA, 405},
		{"BREW", "/api/v1/vms", 405}, // a method of the client's invention
	} {
		body := ""
		if c.method == "POST" {
			body = `{"command":"echo"}`
		}
		if r := e.call(c.method, c.path, e.keyA, body); r.status != c.status {
			t.Fatalf("%s %s: %d %s, want %d", c.method, c.path, r.status, r.body, c.status)
		}
	}
	s := metricstest.Render(t, ms)
	const reqs = "aetherium_http_requests_total"
	for _, c := range []struct {
		route, method, code string
		want                float64
	}{
		{"/api/v1/vms/{id}", "GET", "404", 2},
		{"/api/v1/vms", "GET", "200", 1},
		{"/api/v1/vms/{id}/execute", "POST", "404", 1},
		{"/api/v1/health", "GET", "200", 1},
		{"/api/v1/executions/{id}/stream", "GET", "404", 1},
		{metrics.RouteUnmatched, "GET", "404", 2},
		{metrics.RouteUnmatched, "PATCH", "405", 1},
		{metrics.RouteUnmatched, "other", "405", 1},
	} {
		if got := s.Value(reqs, metricstest.Labels{"route": c.route, "method": c.method, "code": c.code}); got != c.want {
			t.Errorf("%s{route=%q,method=%q,code=%q} = %v, want %v", reqs, c.route, c.method, c.code, got, c.want)
		}
	}
	if got := s.Value(reqs, nil); got != 10 {
		t.Errorf("%s in all = %v, want 10 (one per request)", reqs, got)
	}
	if got := s.Count("aetherium_http_request_duration_seconds", metricstest.Labels{"route": "/api/v1/vms/{id}", "method": "GET"}); got != 2 {
		t.Errorf("latency observations of GET /api/v1/vms/{id} = %d, want 2", got)
	}
	for _, series := range s.Series("aetherium_http_") {
		if strings.Contains(series, idA) || strings.Contains(series, idB) || strings.Contains(series, "nothing") {
			t.Errorf("a series carries a path: %s", series)
		}
	}
}

// TestMetricsCountThePanic500: the recoverer's 500 is what the metrics see.
func TestMetricsCountThePanic500(t *testing.T) {
	e, ms := newMetricsEnv(t, func(c *Config) { c.Service = nil })
	if r := e.call("GET", "/api/v1/ready", "", ""); r.status != http.StatusInternalServerError {
		t.Fatalf("ready with no service: %d", r.status)
	}
	s := metricstest.Render(t, ms)
	if got := s.Value("aetherium_http_requests_total", metricstest.Labels{"route": "/api/v1/ready", "code": "500"}); got != 1 {
		t.Fatalf("500s of /api/v1/ready = %v, want 1; series %v", got, s.Series("aetherium_http_requests_total"))
	}
}

// TestMetricsSeriesStayBoundedOverManyIDs: a hundred VMs and a hundred random paths add no series once every
// route, method and code has been seen once.
func TestMetricsSeriesStayBoundedOverManyIDs(t *testing.T) {
	e, ms := newMetricsEnv(t, nil)
	round := func(i int) {
		id := uuid.NewString()
		e.call("GET", "/api/v1/vms/"+id, e.keyA, "")
		e.call("DELETE", "/api/v1/vms/"+id, e.keyA, "")
		e.call("GET", "/api/v1/tasks/"+id, e.keyA, "")
		e.call("GET", fmt.Sprintf("/api/v1/probe-%d/%s", i, id), e.keyA, "")
	}
	round(0)
	before := metricstest.Render(t, ms).Series("aetherium_")
	for i := 1; i <= 100; i++ {
		round(i)
	}
	s := metricstest.Render(t, ms)
	after := s.Series("aetherium_")
	if !slices.Equal(before, after) {
		t.Fatalf("series grew with the ids: %d before, %d after 100 more VMs\nbefore %v\nafter %v", len(before), len(after), before, after)
	}
	if got := s.Value("aetherium_http_requests_total", metricstest.Labels{"route": "/api/v1/vms/{id}", "method": "GET"}); got != 101 {
		t.Fatalf("GET /api/v1/vms/{id} = %v, want 101", got)
	}
}
