package api

import (
	"net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/ratelimit"
	"github.com/aetherium/aetherium/pkg/client"
)

func limitedEnv(t testing.TB, key, expensive, addr ratelimit.Limit) *testEnv {
	return newEnv(t, func(c *Config) {
		c.RateLimits = RateLimits{Limiter: ratelimit.NewMemory(nil), Key: key, Expensive: expensive, Addr: addr}
	})
}

var rateLimitHeader = regexp.MustCompile(`^"([a-z-]+)";r=(\d+);t=(\d+)$`)

// TestRateLimitPerKey: a burst over a key's limit gets 429 with Retry-After and the RateLimit headers, and
// neither another key nor the key's expensive bucket is touched by it.
func TestRateLimitPerKey(t *testing.T) {
	// Rates so low that no token comes back during the test: the counts are exact.
	e := limitedEnv(t, ratelimit.Limit{Rate: 0.01, Burst: 5}, ratelimit.Limit{Rate: 0.01, Burst: 2},
		ratelimit.Limit{Rate: 0.01, Burst: 3})
	for i := range 5 {
		r := e.call("GET", "/api/v1/vms", e.keyA, "")
		if r.status != http.StatusOK {
			t.Fatalf("request %d of the burst: %d %s", i, r.status, r.body)
		}
		if got := r.header.Get("RateLimit-Policy"); got != `"key";q=5;w=500` {
			t.Fatalf("RateLimit-Policy %q", got)
		}
		m := rateLimitHeader.FindStringSubmatch(r.header.Get("RateLimit"))
		if m == nil || m[1] != "key" || m[2] != strconv.Itoa(4-i) {
			t.Fatalf("request %d: RateLimit %q, want %d remaining", i, r.header.Get("RateLimit"), 4-i)
		}
	}
	r := e.call("GET", "/api/v1/vms", e.keyA, "")
	retry, _ := strconv.Atoi(r.header.Get("Retry-After"))
	if r.status != http.StatusTooManyRequests || r.errCode() != client.CodeRateLimited || retry < 99 || retry > 100 ||
		!strings.Contains(r.errMessage(), "rate limit exceeded") {
		t.Fatalf("over the burst: %d Retry-After %q %s", r.status, r.header.Get("Retry-After"), r.body)
	}
	if m := rateLimitHeader.FindStringSubmatch(r.header.Get("RateLimit")); m == nil || m[2] != "0" {
		t.Fatalf("RateLimit of a refused request: %q", r.header.Get("RateLimit"))
	}
	// Other routes of the key share its cheap bucket; the other key and the expensive bucket are untouched.
	if r := e.call("GET", "/api/v1/status", e.keyA, ""); r.status != http.StatusTooManyRequests {
		t.Fatalf("another cheap route of the same key: %d", r.status)
	}
	if r := e.call("GET", "/api/v1/vms", e.keyB, ""); r.status != http.StatusOK {
		t.Fatalf("another key is limited by the first: %d %s", r.status, r.body)
	}
	before := e.counts()
	for i := range 2 {
		if r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"v`+strconv.Itoa(i)+`"}`); r.status != http.StatusAccepted ||
			r.header.Get("RateLimit-Policy") != `"key-expensive";q=2;w=200` {
			t.Fatalf("create %d within the expensive burst: %d %q %s", i, r.status, r.header.Get("RateLimit-Policy"), r.body)
		}
	}
	r = e.call("POST", "/api/v1/vms", e.keyA, `{"name":"v3"}`)
	if r.status != http.StatusTooManyRequests || r.header.Get("Retry-After") == "" {
		t.Fatalf("create over the expensive burst: %d %s", r.status, r.body)
	}
	if after := e.counts(); after.vms != before.vms+2 {
		t.Fatalf("vms %d -> %d: the refused create changed the store", before.vms, after.vms)
	}
	// Probes are never limited.
	for range 10 {
		if r := e.call("GET", "/api/v1/health", "", ""); r.status != http.StatusOK {
			t.Fatalf("health: %d", r.status)
		}
	}
}

// TestRateLimitPerAddress: requests without a valid key are charged to their source address; once it is
// exhausted they get 429 instead of 401, and a valid key from the same address is not affected.
func TestRateLimitPerAddress(t *testing.T) {
	e := limitedEnv(t, ratelimit.Limit{Rate: 0.01, Burst: 50}, ratelimit.Limit{Rate: 0.01, Burst: 5},
		ratelimit.Limit{Rate: 0.01, Burst: 3})
	codes := []int{}
	for _, key := range []string{"", "wrong", "", "wrong"} {
		codes = append(codes, e.call("GET", "/api/v1/vms", key, "").status)
	}
	if codes[0] != 401 || codes[1] != 401 || codes[2] != 401 || codes[3] != 429 {
		t.Fatalf("failed authentications answered %v, want 401 401 401 429", codes)
	}
	if r := e.call("GET", "/api/v1/openapi.json", "", ""); r.status != http.StatusTooManyRequests ||
		r.header.Get("RateLimit-Policy") != `"addr";q=3;w=300` {
		t.Fatalf("public route from the exhausted address: %d %q", r.status, r.header.Get("RateLimit-Policy"))
	}
	if r := e.call("GET", "/api/v1/vms", e.keyA, ""); r.status != http.StatusOK {
		t.Fatalf("a valid key from the same address: %d %s", r.status, r.body)
	}
}

func TestSourceAddr(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7:1234":             "192.0.2.7",
		"[::ffff:192.0.2.7]:1":       "192.0.2.7",
		"[2001:db8:1:2:3:4:5:6]:443": "2001:db8:1:2::/64",
		"[2001:db8:1:2:ffff::1]:443": "2001:db8:1:2::/64",
		"@":                          "@",
	} {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = in
		if got := sourceAddr(r); got != want {
			t.Errorf("sourceAddr(%q) = %q, want %q", in, got, want)
		}
	}
}

// BenchmarkRateLimitOverhead is BenchmarkGetVM's request with the limiter on (a limit never reached), to be
// compared with BenchmarkGetVM: the difference is the middleware's cost.
func BenchmarkRateLimitOverhead(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run("limits="+strconv.FormatBool(on), func(b *testing.B) {
			e := newEnv(b, nil)
			if on {
				e = limitedEnv(b, ratelimit.Limit{Rate: 1e6, Burst: 1e6}, ratelimit.Limit{Rate: 1e6, Burst: 1e6},
					ratelimit.Limit{Rate: 1e6, Burst: 1e6})
			}
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
		})
	}
}

// BenchmarkLimitKey is the rate limit step alone: bucket choice by route, a Take from the in-memory limiter and
// the two headers.
func BenchmarkLimitKey(b *testing.B) {
	s := newServer(Config{RateLimits: RateLimits{Limiter: ratelimit.NewMemory(nil),
		Key: ratelimit.Limit{Rate: 1e9, Burst: 1 << 30}, Expensive: ratelimit.Limit{Rate: 1e9, Burst: 1 << 30}}})
	r := httptest.NewRequest("GET", "/api/v1/vms", nil)
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		if !s.limitKey(w, r, "key-1") {
			b.Fatal("limited")
		}
	}
}
