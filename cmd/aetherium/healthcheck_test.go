package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/workerapi"
)

type noVMs struct{}

func (noVMs) Agent(context.Context, string) (*agentclient.Client, error) { return nil, vmm.ErrNotFound }

func runHealthcheck(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(append([]string{"healthcheck"}, args...), strings.NewReader(""), &out, &errb)
	return code, out.String() + errb.String()
}

// TestHealthcheckGateway probes a gateway's /api/v1/ready at the port of listen, over loopback.
func TestHealthcheckGateway(t *testing.T) {
	t.Setenv("AETHERIUM_DATA_DIR", t.TempDir())
	status := http.StatusOK
	var paths []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths = append(paths, r.URL.Path)
		if r.Header.Get("Authorization") != "" {
			t.Errorf("the gateway probe sent credentials: %q", r.Header.Get("Authorization"))
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	t.Setenv("AETHERIUM_LISTEN", ":"+port) // every interface: probed on 127.0.0.1
	if code, out := runHealthcheck(t); code != 0 || !strings.Contains(out, "/api/v1/ready answered 200") {
		t.Fatalf("healthy gateway: exit %d: %s", code, out)
	}
	status = http.StatusServiceUnavailable
	if code, out := runHealthcheck(t, "--role", "serve"); code == 0 || !strings.Contains(out, "answered 503") {
		t.Fatalf("unready gateway: exit %d: %s", code, out)
	}
	if len(paths) != 2 || paths[0] != "/api/v1/ready" {
		t.Errorf("probed %v, want /api/v1/ready twice", paths)
	}
	srv.Close()
	if code, out := runHealthcheck(t); code == 0 || !strings.Contains(out, "connection refused") {
		t.Fatalf("gateway down: exit %d: %s", code, out)
	}
	if code, out := runHealthcheck(t, "--role", "nope"); code == 0 || !strings.Contains(out, "--role must be") {
		t.Fatalf("bad role: exit %d: %s", code, out)
	}
	if code, out := runHealthcheck(t, "--url", "ftp://x"); code == 0 || !strings.Contains(out, "--url must be") {
		t.Fatalf("bad url: exit %d: %s", code, out)
	}
}

// TestHealthcheckWorker probes the real worker API handler, which wants the cluster token.
func TestHealthcheckWorker(t *testing.T) {
	t.Setenv("AETHERIUM_DATA_DIR", t.TempDir())
	const token = "healthcheck-test-token-0123456789"
	h, err := workerapi.New(workerapi.Config{Agents: noVMs{}, Token: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	t.Setenv("AETHERIUM_WORKER_API_LISTEN", "0.0.0.0:"+port)
	if code, out := runHealthcheck(t, "--role", "worker"); code == 0 || !strings.Contains(out, "cluster token") {
		t.Fatalf("worker without a cluster token: exit %d: %s", code, out)
	}
	t.Setenv("AETHERIUM_CLUSTER_TOKEN", token)
	if code, out := runHealthcheck(t, "--role", "worker"); code != 0 || !strings.Contains(out, "/internal/v1/health answered 200") {
		t.Fatalf("healthy worker: exit %d: %s", code, out)
	}
	t.Setenv("AETHERIUM_CLUSTER_TOKEN", token+"-wrong")
	if code, out := runHealthcheck(t, "--role", "worker"); code == 0 || !strings.Contains(out, "answered 401") {
		t.Fatalf("wrong token: exit %d: %s", code, out)
	}
	t.Setenv("AETHERIUM_WORKER_API_LISTEN", "127.0.0.1:0")
	if code, out := runHealthcheck(t, "--role", "worker"); code == 0 || !strings.Contains(out, "fixed port") {
		t.Fatalf("worker on a random port: exit %d: %s", code, out)
	}
}
