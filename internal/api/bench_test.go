package api

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkGetVM measures one authenticated read through the whole handler: middleware, key lookup and VM read in
// SQLite, conversion and encoding (no network).
func BenchmarkGetVM(b *testing.B) {
	e := newEnv(b, nil)
	vm := e.createVM(e.keyA, "bench")
	path := "/api/v1/vms/" + vm.VM.ID
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("GET", path, nil)
		r.Header.Set("Authorization", "Bearer "+e.keyA)
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != http.StatusOK {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkRejectUnknownField measures the cost of refusing a bad body after authentication.
func BenchmarkRejectUnknownField(b *testing.B) {
	e := newEnv(b, nil)
	body := `{"name":"x","vcpus":2,"memory_mb":512,"metadata":{"a":"b"},"bogus":true}`
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("POST", "/api/v1/vms", strings.NewReader(body))
		r.Header.Set("Authorization", "Bearer "+e.keyA)
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != http.StatusBadRequest {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}

// BenchmarkCreateVM measures an accepted create: validation, VM and task rows in SQLite, enqueue.
func BenchmarkCreateVM(b *testing.B) {
	e := newEnv(b, nil)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		r := httptest.NewRequest("POST", "/api/v1/vms", strings.NewReader(`{"name":"vm-`+strconv.Itoa(i)+`"}`))
		r.Header.Set("Authorization", "Bearer "+e.keyA)
		r.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code != http.StatusAccepted {
			b.Fatalf("%d %s", w.Code, w.Body)
		}
	}
}
