package api

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestWebServesOnlyOutsideAPI: Config.Web answers what is outside /api/; the API's paths keep their JSON 404s and
// 405s, and its routes are untouched.
func TestWebServesOnlyOutsideAPI(t *testing.T) {
	web := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Web", "1")
		_, _ = w.Write([]byte("dashboard"))
	})
	h := newServer(Config{Web: web}).router
	for _, c := range []struct {
		method, path string
		web          bool
		status       int
	}{
		{"GET", "/", true, 200},
		{"GET", "/vms/123", true, 200},
		{"GET", "/assets/app.js", true, 200},
		{"HEAD", "/runs", true, 200},
		{"POST", "/", true, 200}, // the web handler answers its own 405
		{"GET", "/api", false, 404},
		{"GET", "/api/", false, 404},
		{"GET", "/api/v1/nope", false, 404},
		{"GET", "/api/v2/vms", false, 404},
		{"GET", "/api/v1/vms", false, 401},
		{"PATCH", "/api/v1/vms", false, 405},
		{"GET", "/api/v1/health", false, 200},
	} {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(c.method, c.path, nil))
		if (w.Header().Get("X-Web") == "1") != c.web || w.Code != c.status {
			t.Errorf("%s %s: %d web=%v, want %d web=%v", c.method, c.path, w.Code, w.Header().Get("X-Web") == "1", c.status, c.web)
		}
		if !c.web && w.Code >= 400 && !strings.Contains(w.Body.String(), `"error"`) {
			t.Errorf("%s %s: not the API's JSON error: %s", c.method, c.path, w.Body.String())
		}
	}
}
