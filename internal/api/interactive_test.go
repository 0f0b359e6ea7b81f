package api

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/workerapi"
	"github.com/aetherium/aetherium/pkg/client"
)

const clusterToken = "gateway-test-cluster-token-0123456789"

// noVMs is the worker's view in these tests: the worker API is real, but its backend runs no VM, so every request
// that passes the gateway and the worker's token check ends in the worker's own 404 (or errSource).
type noVMs struct{ err error }

func (n noVMs) Agent(context.Context, string) (*agentclient.Client, error) { return nil, n.err }

// seenRequest is what the worker API received, recorded in front of it.
type seenRequest struct {
	method, path, query string
	header              http.Header
	bodyLen             int64
}

// workerRig runs the real worker API behind a recorder.
type workerRig struct {
	srv  *httptest.Server
	mu   sync.Mutex
	seen []seenRequest
}

func newWorkerRig(t *testing.T, token string, src workerapi.AgentSource) *workerRig {
	t.Helper()
	h, err := workerapi.New(workerapi.Config{Agents: src, Token: token, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	w := &workerRig{}
	w.srv = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 8<<20))
		r.Body = io.NopCloser(bytes.NewReader(body))
		w.mu.Lock()
		w.seen = append(w.seen, seenRequest{r.Method, r.URL.Path, r.URL.RawQuery, r.Header.Clone(), int64(len(body))})
		w.mu.Unlock()
		h.ServeHTTP(rw, r)
	}))
	t.Cleanup(w.srv.Close)
	return w
}

func (w *workerRig) last(t *testing.T) seenRequest {
	t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.seen) == 0 {
		t.Fatal("the worker received nothing")
	}
	return w.seen[len(w.seen)-1]
}

func (w *workerRig) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.seen)
}

// runningVM makes one of owner A's VMs run on worker workerID, which advertises apiURL.
func (e *testEnv) runningVM(name, workerID, apiURL string, heartbeat time.Time) string {
	e.t.Helper()
	vm := e.createVM(e.keyA, name)
	ctx := context.Background()
	for _, st := range []model.VMStatus{model.VMCreating, model.VMRunning} {
		if _, err := e.st.VMs().Update(ctx, vm.VM.ID, func(v *model.VM) error {
			v.Status, v.WorkerID = st, workerID
			return nil
		}); err != nil {
			e.t.Fatal(err)
		}
	}
	meta := map[string]string{}
	if apiURL != "" {
		meta[task.WorkerAPIURLKey] = apiURL
	}
	if err := e.st.Workers().Upsert(ctx, &model.Worker{ID: workerID, Hostname: "test", Backend: "fake", Status: "active",
		Capacity: 1, Metadata: meta, StartedAt: heartbeat, LastHeartbeat: heartbeat}); err != nil {
		e.t.Fatal(err)
	}
	return vm.VM.ID
}

func TestInteractiveRoutesProxyToTheWorker(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClusterToken = clusterToken })
	w := newWorkerRig(t, clusterToken, noVMs{err: vmm.ErrNotFound})
	id := e.runningVM("box", "w-int", w.srv.URL, time.Now())
	base := "/api/v1/vms/" + id

	// Every route reaches the worker, with the cluster token instead of the user's key, a cleaned and
	// re-encoded request, and the worker's answer passed back as it is.
	routes := []struct {
		method, path, body string
		want               string // path and query the worker must receive
	}{
		{"GET", "/files?path=/a/../b//c", "", "/files?path=%2Fb%2Fc"},
		{"PUT", "/files?path=/up&mode=755&uid=1000&gid=10&extra=1", strings.Repeat("z", 3<<20), "/files?mode=0755&overwrite=true&owner=1000%3A10&path=%2Fup"},
		{"GET", "/fs/stat?path=/etc/", "", "/fs/stat?path=%2Fetc"},
		{"GET", "/fs/list?path=/", "", "/fs/list?path=%2F"},
		{"POST", "/fs/mkdir", `{"path":"/x/./y","mode":"700"}`, "/fs/mkdir?"},
		{"DELETE", "/fs?path=/tmp/x&recursive=1", "", "/fs?path=%2Ftmp%2Fx&recursive=true"},
		{"POST", "/processes", `{"command":"sleep","args":["9"]}`, "/processes?"},
		{"GET", "/processes", "", "/processes?"},
		{"GET", "/processes/p1/output?stream=stderr&offset=5", "", "/processes/p1/output?offset=5&stream=stderr"},
		{"POST", "/processes/p1/wait?timeout=2s", "", "/processes/p1/wait?timeout=2s"},
		{"POST", "/processes/p1/signal", `{"signal":"TERM"}`, "/processes/p1/signal?"},
		{"DELETE", "/processes/p1", "", "/processes/p1?"},
	}
	for _, rt := range routes {
		var body io.Reader
		if rt.body != "" {
			body = strings.NewReader(rt.body)
		}
		r := e.do(req{method: rt.method, path: base + rt.path, key: e.keyA, body: body,
			header: map[string]string{"Cookie": "session=secret", RequestIDHeader: "req-" + rt.method}})
		if r.status != http.StatusNotFound || r.errCode() != client.CodeNotFound || !strings.Contains(r.errMessage(), "not on this worker") {
			t.Errorf("%s %s: got %d %s, want the worker's 404", rt.method, rt.path, r.status, r.body)
			continue
		}
		got := w.last(t)
		if got.method != rt.method || got.path+"?"+got.query != "/internal/v1/vms/"+id+rt.want {
			t.Errorf("%s %s reached the worker as %s %s?%s, want %s", rt.method, rt.path, got.method, got.path, got.query, rt.want)
		}
		if got.header.Get("Authorization") != "Bearer "+clusterToken || got.header.Get("Cookie") != "" {
			t.Errorf("%s %s: worker saw Authorization %q, Cookie %q", rt.method, rt.path, got.header.Get("Authorization"), got.header.Get("Cookie"))
		}
		for k, vs := range got.header {
			if strings.Contains(strings.Join(vs, ","), e.keyA) {
				t.Errorf("%s %s: the user's key reached the worker in %s", rt.method, rt.path, k)
			}
		}
		if got.header.Get(RequestIDHeader) != "req-"+rt.method {
			t.Errorf("%s %s: request id %q not passed on", rt.method, rt.path, got.header.Get(RequestIDHeader))
		}
		if rt.method == "PUT" && got.bodyLen != 3<<20 {
			t.Errorf("upload: the worker received %d body bytes, want %d (uploads have no 1 MiB limit)", got.bodyLen, 3<<20)
		}
	}
	// A body the gateway validated is sent re-encoded: only known fields, cleaned values.
	e.do(req{method: "POST", path: base + "/fs/mkdir", key: e.keyA, body: strings.NewReader(`{"path":"/x/./y","mode":"700"}`)})
	if got := w.last(t); got.bodyLen != int64(len(`{"path":"/x/y","mode":"0700"}`)) {
		t.Errorf("mkdir body of %d bytes reached the worker", got.bodyLen)
	}

	// Refused at the gateway: nothing reaches the worker.
	before := w.count()
	bad := []struct {
		name       string
		r          req
		status     int
		code, want string
	}{
		{"relative path", req{method: "GET", path: base + "/fs/stat?path=etc"}, 422, client.CodeValidation, "absolute"},
		{"missing path", req{method: "GET", path: base + "/files"}, 422, client.CodeValidation, "path"},
		{"NUL", req{method: "GET", path: base + "/fs/list?path=%2Fa%00"}, 422, client.CodeValidation, "NUL"},
		{"long path", req{method: "GET", path: base + "/fs/stat?path=/" + strings.Repeat("a", 5000)}, 422, client.CodeValidation, "longer"},
		{"path twice", req{method: "GET", path: base + "/fs/stat?path=/a&path=/b"}, 400, client.CodeBadRequest, "path"},
		{"bad mode", req{method: "PUT", path: base + "/files?path=/f&mode=rwx", body: strings.NewReader("x")}, 400, client.CodeBadRequest, "mode"},
		{"owner and uid", req{method: "PUT", path: base + "/files?path=/f&owner=a&uid=1", body: strings.NewReader("x")}, 422, client.CodeValidation, "owner"},
		{"remove /", req{method: "DELETE", path: base + "/fs?path=/"}, 422, client.CodeValidation, "/"},
		{"mkdir relative", req{method: "POST", path: base + "/fs/mkdir", body: strings.NewReader(`{"path":"x"}`)}, 422, client.CodeValidation, "path"},
		{"mkdir unknown field", req{method: "POST", path: base + "/fs/mkdir", body: strings.NewReader(`{"path":"/x","perm":1}`)}, 400, client.CodeInvalidJSON, "perm"},
		{"mkdir as text", req{method: "POST", path: base + "/fs/mkdir", body: strings.NewReader(`{"path":"/x"}`), contentType: "text/plain"}, 415, client.CodeUnsupportedMedia, ""},
		{"mkdir too large", req{method: "POST", path: base + "/fs/mkdir", body: strings.NewReader(`{"path":"/` + strings.Repeat("x", 2<<20) + `"}`)}, 413, client.CodeTooLarge, ""},
		{"start nothing", req{method: "POST", path: base + "/processes", body: strings.NewReader(`{}`)}, 422, client.CodeValidation, "command"},
		{"start both", req{method: "POST", path: base + "/processes", body: strings.NewReader(`{"command":"a","shell":"b"}`)}, 422, client.CodeValidation, "shell"},
		{"bad env", req{method: "POST", path: base + "/processes", body: strings.NewReader(`{"command":"a","env":{"1x":"y"}}`)}, 422, client.CodeValidation, "env"},
		{"bad process id", req{method: "GET", path: base + "/processes/a%20b/output"}, 404, client.CodeProcessNotFound, ""},
		{"dot-dot process id", req{method: "DELETE", path: base + "/processes/.."}, 404, "", ""},
		{"bad stream", req{method: "GET", path: base + "/processes/p1/output?stream=both"}, 422, client.CodeValidation, "stream"},
		{"wait too long", req{method: "POST", path: base + "/processes/p1/wait?timeout=1h"}, 400, client.CodeBadRequest, "timeout"},
		{"bad signal", req{method: "POST", path: base + "/processes/p1/signal", body: strings.NewReader(`{"signal":"TERM; rm -rf /"}`)}, 422, client.CodeValidation, "signal"},
		{"shell without upgrade", req{method: "GET", path: base + "/shell"}, 400, client.CodeBadRequest, "WebSocket"},
		{"no key", req{method: "GET", path: base + "/fs/stat?path=/", key: "-"}, 401, client.CodeUnauthorized, ""},
		{"upload without key", req{method: "PUT", path: base + "/files?path=/f", key: "-", body: strings.NewReader("x")}, 401, client.CodeUnauthorized, ""},
		{"other owner", req{method: "GET", path: base + "/fs/stat?path=/", key: e.keyB}, 404, client.CodeNotFound, ""},
		{"other owner's upload", req{method: "PUT", path: base + "/files?path=/f", key: e.keyB, body: strings.NewReader("x")}, 404, client.CodeNotFound, ""},
		{"other owner's shell", req{method: "GET", path: base + "/shell", key: e.keyB,
			header: map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}}, 404, client.CodeNotFound, ""},
	}
	for _, c := range bad {
		switch c.r.key {
		case "":
			c.r.key = e.keyA
		case "-":
			c.r.key = ""
		}
		r := e.do(c.r)
		if r.status != c.status || (c.code != "" && r.errCode() != c.code) || !strings.Contains(r.errMessage(), c.want) {
			t.Errorf("%s: got %d %s, want %d %s mentioning %q", c.name, r.status, r.body, c.status, c.code, c.want)
		}
	}
	if n := w.count() - before; n != 0 {
		t.Errorf("%d refused requests reached the worker", n)
	}
}

func TestInteractiveRoutesWhenTheWorkerCannotServe(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClusterToken = clusterToken })

	// A VM that is not running: 409, whatever its worker.
	pending := e.createVM(e.keyA, "pending")
	r := e.call("GET", "/api/v1/vms/"+pending.VM.ID+"/fs/stat?path=/", e.keyA, "")
	if r.status != 409 || r.errCode() != client.CodeVMNotRunning {
		t.Errorf("pending vm: %d %s", r.status, r.body)
	}

	stat := func(id string) response { return e.call("GET", "/api/v1/vms/"+id+"/fs/stat?path=/", e.keyA, "") }
	expect503 := func(name string, r response, want string) {
		t.Helper()
		// A misconfiguration is not cured by retrying, so only it comes without Retry-After.
		retry := want != "cluster token"
		if r.status != 503 || r.errCode() != client.CodeUnavailable || !strings.Contains(r.errMessage(), want) || (r.header.Get("Retry-After") != "") != retry {
			t.Errorf("%s: got %d %s %v, want 503 mentioning %q with Retry-After", name, r.status, r.body, r.header, want)
		}
		if strings.Contains(string(r.body), "w-") || strings.Contains(string(r.body), "127.0.0.1") {
			t.Errorf("%s: the answer names a worker or host: %s", name, r.body)
		}
	}

	// A worker whose heartbeat is old.
	w := newWorkerRig(t, clusterToken, noVMs{err: vmm.ErrNotFound})
	stale := e.runningVM("stale", "w-stale", w.srv.URL, time.Now().Add(-time.Hour))
	expect503("stale worker", stat(stale), "not responding")
	if w.count() != 0 {
		t.Error("a request went to a stale worker")
	}
	// A worker that advertises no API (an older version).
	old := e.runningVM("old", "w-old", "", time.Now())
	expect503("worker without api", stat(old), "older version")
	// A worker that cannot be reached.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadURL := "http://" + ln.Addr().String()
	ln.Close()
	dead := e.runningVM("dead", "w-dead", deadURL, time.Now())
	expect503("unreachable worker", stat(dead), "cannot be reached")
	// A worker with another cluster token: the gateway is misconfigured, not the user's key.
	other := newWorkerRig(t, clusterToken+"-other", noVMs{err: vmm.ErrNotFound})
	mis := e.runningVM("mis", "w-mis", other.srv.URL, time.Now())
	expect503("wrong cluster token", stat(mis), "cluster token")
	// A worker whose agent is down.
	down := newWorkerRig(t, clusterToken, noVMs{err: fmt.Errorf("%w: dial: refused", agentclient.ErrUnavailable)})
	agentDown := e.runningVM("agentdown", "w-down", down.srv.URL, time.Now())
	expect503("unreachable agent", stat(agentDown), "agent")

	// A gateway without a cluster token refuses rather than call workers without one.
	e2 := newEnv(t, nil)
	id := e2.runningVM("notoken", "w-notoken", w.srv.URL, time.Now())
	r = e2.call("GET", "/api/v1/vms/"+id+"/fs/stat?path=/", e2.keyA, "")
	if r.status != 503 || !strings.Contains(r.errMessage(), "cluster token") {
		t.Errorf("no cluster token: %d %s", r.status, r.body)
	}
}
