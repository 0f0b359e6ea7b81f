package server

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
)

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *logBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func get(t *testing.T, method, url, auth string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// TestMetricsTokenIsEnforced: with metrics_token set, /metrics answers 401 to a scraper without it or with another
// one, and the metrics to the one that sends it.
func TestMetricsTokenIsEnforced(t *testing.T) {
	const token = "0123456789abcdef-metrics"
	logs := &logBuffer{}
	stop, addr, err := startMetrics("127.0.0.1:0", token, metrics.New("test"), slog.New(slog.NewTextHandler(logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	url := "http://" + addr + "/metrics"
	for _, auth := range []string{"", "Bearer", "Bearer wrong-token-of-some-length", "Basic " + token, "Bearer " + token + "x", token} {
		resp, body := get(t, http.MethodGet, url, auth)
		if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
			t.Errorf("Authorization %q: %d %.80s, want 401 with WWW-Authenticate", auth, resp.StatusCode, body)
		}
		if strings.Contains(body, "aetherium_") || strings.Contains(body, token) {
			t.Errorf("Authorization %q: the 401 shows metrics or the token: %.200s", auth, body)
		}
	}
	s := metricstest.Get(t, url, token)
	if got := s.Value("aetherium_build_info", metricstest.Labels{"version": "test"}); got != 1 {
		t.Fatalf("build_info = %v", got)
	}
	if resp, _ := get(t, http.MethodGet, "http://"+addr+"/other", "Bearer "+token); resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /other: %d, want 404", resp.StatusCode)
	}
	if resp, _ := get(t, http.MethodPost, url, "Bearer "+token); resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /metrics: %d, want 405", resp.StatusCode)
	}
	if strings.Contains(logs.String(), "without a token") {
		t.Errorf("warned about a missing token that is set:\n%s", logs.String())
	}
}

// TestMetricsListenOffServesNothing: an empty metrics_listen opens no listener at all.
func TestMetricsListenOffServesNothing(t *testing.T) {
	stop, addr, err := startMetrics("", "", metrics.New("test"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil || addr != "" {
		t.Fatalf("off: addr %q, err %v", addr, err)
	}
	stop()
}

// TestMetricsWithoutTokenOffLoopbackWarns: metrics on every interface without a token are served, with a warning;
// on loopback without one, quietly.
func TestMetricsWithoutTokenOffLoopbackWarns(t *testing.T) {
	for _, c := range []struct {
		addr string
		warn bool
	}{{"127.0.0.1:0", false}, {"0.0.0.0:0", true}} {
		logs := &logBuffer{}
		stop, addr, err := startMetrics(c.addr, "", metrics.New("test"), slog.New(slog.NewTextHandler(logs, nil)))
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(addr)
		metricstest.Get(t, "http://127.0.0.1:"+port+"/metrics", "")
		stop()
		if got := strings.Contains(logs.String(), "without a token"); got != c.warn {
			t.Errorf("%s: warned %v, want %v:\n%s", c.addr, got, c.warn, logs.String())
		}
	}
}

// TestMetricsListenInUseSaysWhat: a port already taken (another aetherium process on the host) fails the start
// with a message naming the setting.
func TestMetricsListenInUseSaysWhat(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	_, _, err = startMetrics(ln.Addr().String(), "", metrics.New("test"), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err == nil || !strings.Contains(err.Error(), "metrics_listen") {
		t.Fatalf("err = %v, want one naming metrics_listen", err)
	}
}

func TestIsLoopback(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:9464": true, "[::1]:9464": true, "localhost:9464": true, "127.0.0.2:1": true,
		":9464": false, "0.0.0.0:9464": false, "10.0.0.5:9464": false, "metrics.example:9464": false, "junk": false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%q) = %v, want %v", addr, got, want)
		}
	}
}
