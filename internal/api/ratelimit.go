package api

import (
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"time"

	"github.com/go-chi/chi/v5"

	"github.com/aetherium/aetherium/internal/ratelimit"
	"github.com/aetherium/aetherium/pkg/client"
)

// RateLimits configures the API's rate limits: token buckets per API key, one for cheap routes (Key) and one for
// expensive ones (Expensive: they create VMs, runs and jobs, or install tools), and one per source address for
// what comes without a valid key (Addr: webhooks, the OpenAPI document and every failed authentication). A nil
// Limiter turns them off. Health and readiness probes are never limited.
type RateLimits struct {
	Limiter   ratelimit.Limiter
	Key       ratelimit.Limit
	Expensive ratelimit.Limit
	Addr      ratelimit.Limit
}

// expensiveRoutes are the routes whose work is out of proportion to the request: each starts a VM, a run, a
// job or a tool installation on a worker.
var expensiveRoutes = map[string]bool{
	"POST /api/v1/vms":            true,
	"POST /api/v1/runs":           true,
	"POST /api/v1/jobs":           true,
	"POST /api/v1/vms/{id}/tools": true,
}

// Names of the policies in the RateLimit-Policy and RateLimit headers.
const (
	policyKey       = "key"
	policyExpensive = "key-expensive"
	policyAddr      = "addr"
)

// limitKey charges the request to its API key's bucket, cheap or expensive by route. It reports whether the
// request may go on; when not, the 429 is written.
func (s *server) limitKey(w http.ResponseWriter, r *http.Request, keyID string) bool {
	if s.limits.Limiter == nil {
		return true
	}
	policy, l := policyKey, s.limits.Key
	if rctx := chi.RouteContext(r.Context()); rctx != nil && expensiveRoutes[r.Method+" "+rctx.RoutePattern()] {
		policy, l = policyExpensive, s.limits.Expensive
	}
	return s.take(w, r, policy, policy+":"+keyID, l)
}

// limitAddr charges the request to its source address's bucket (requests without a valid key).
func (s *server) limitAddr(w http.ResponseWriter, r *http.Request) bool {
	if s.limits.Limiter == nil {
		return true
	}
	return s.take(w, r, policyAddr, policyAddr+":"+sourceAddr(r), s.limits.Addr)
}

// limitByAddr is limitAddr as middleware, for the routes that take no API key.
func (s *server) limitByAddr(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.limitAddr(w, r) {
			next.ServeHTTP(w, r)
		}
	})
}

// take takes a token from bucket and writes the RateLimit headers (draft-ietf-httpapi-ratelimit-headers-10 and
// later: structured fields, RateLimit-Policy: "key";q=100;w=2 and RateLimit: "key";r=57;t=1). An exhausted bucket
// is answered 429 with Retry-After. A limiter error is the limiter's to handle (ratelimit.Fallback); should one
// reach here the request goes on, logged: a broken limiter must not take the API down.
func (s *server) take(w http.ResponseWriter, r *http.Request, policy, bucket string, l ratelimit.Limit) bool {
	res, err := s.limits.Limiter.Take(r.Context(), bucket, l)
	if err != nil {
		s.log.WarnContext(r.Context(), "rate limiter failed; request let through", "err", err,
			"request_id", requestIDFrom(r.Context()))
		return true
	}
	h := w.Header()
	h.Set("RateLimit-Policy", `"`+policy+`";q=`+strconv.Itoa(l.Burst)+";w="+strconv.Itoa(seconds(l.Window())))
	h.Set("RateLimit", `"`+policy+`";r=`+strconv.Itoa(res.Remaining)+";t="+strconv.Itoa(seconds(res.Reset)))
	if res.Allowed {
		return true
	}
	retry := seconds(res.RetryAfter)
	h.Set("Retry-After", strconv.Itoa(retry))
	s.writeError(w, r, http.StatusTooManyRequests, client.CodeRateLimited,
		"rate limit exceeded ("+describeLimit(policy, l)+"); retry in "+strconv.Itoa(retry)+" s")
	return false
}

func describeLimit(policy string, l ratelimit.Limit) string {
	who := "this API key"
	switch policy {
	case policyExpensive:
		who = "this API key on routes that create VMs, runs, jobs or tools"
	case policyAddr:
		who = "this address without a valid API key"
	}
	return strconv.FormatFloat(l.Rate, 'g', -1, 64) + " requests/s, bursts of " + strconv.Itoa(l.Burst) + " for " + who
}

// seconds rounds d up to whole seconds, at least 1 (headers count in seconds; 0 would mean "now" and invite a
// busy retry).
func seconds(d time.Duration) int {
	if d <= 0 {
		return 0
	}
	return max(1, int(math.Ceil(d.Seconds())))
}

// sourceAddr is the bucket of a request's source: the TCP peer (forwarding headers are not trusted, anyone can
// send them), an IPv6 address by its /64, since a host usually has a whole /64 to pick addresses from.
func sourceAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	ip, err := netip.ParseAddr(host)
	if err != nil {
		return host
	}
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}
