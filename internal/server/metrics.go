package server

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/metrics"
)

// startMetrics serves ms at GET /metrics on addr, behind token when it is set, and returns the address it listens
// on and a function that stops it. An empty addr (or a nil ms) serves nothing. A listen address that is not loopback, without a token, is
// allowed (a private network may be enough) but logged as a warning: the metrics show what the installation does.
func startMetrics(addr, token string, ms *metrics.Set, log *slog.Logger) (stop func(), bound string, err error) {
	if addr == "" || ms == nil {
		return func() {}, "", nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("metrics_listen %s: %w (is another aetherium process on this host using it? give "+
			"each its own metrics_listen, or set it to off)", addr, err)
	}
	if token == "" && !isLoopback(addr) {
		log.Warn("metrics are served without a token on an address that is not loopback; set metrics_token "+
			"unless only trusted hosts can reach it", "addr", ln.Addr().String())
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	srv := newHTTPServer(metricsHandler(ms.Handler(errLog), token), log, context.Background(), ReadHeaderTimeout)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("metrics server stopped", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String(), "path", "/metrics", "token", token != "")
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	}, ln.Addr().String(), nil
}

// metricsHandler serves metrics at GET /metrics only, requiring Authorization: Bearer <token> when token is set.
func metricsHandler(metrics http.Handler, token string) http.Handler {
	want := sha256.Sum256([]byte(token))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		if token != "" {
			scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
			// Hashed first, so the comparison takes the same time whatever the length of what was sent.
			sum := sha256.Sum256([]byte(strings.TrimSpace(got)))
			if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], want[:]) != 1 {
				w.Header().Set("WWW-Authenticate", `Bearer realm="aetherium-metrics"`)
				http.Error(w, "a metrics token is required: send Authorization: Bearer <metrics_token>", http.StatusUnauthorized)
				return
			}
		}
		metrics.ServeHTTP(w, r)
	})
}

// isLoopback reports whether a listen address only accepts connections from this host.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}
