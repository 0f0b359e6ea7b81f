package api

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/eventlog"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// testEnv is the API over real parts: a SQLite store in a temporary directory, the embedded queue and the
// in-process event bus. No worker consumes the queue unless a test starts one.
type testEnv struct {
	t      testing.TB
	h      http.Handler
	st     store.Store
	q      *embedded.Queue
	bus    *inproc.Bus
	svc    *task.Service
	srv    *httptest.Server
	logs   *syncBuffer
	keyA   string
	keyB   string
	ownerA string
	ownerB string
	// secrets is the service's secrets, under a key of the test's.
	secrets *secrets.Manager
	// auth is the API's authenticator (JWTs enabled); jwt issues and verifies its tokens.
	auth *auth.Authenticator
	jwt  *auth.JWT
}

// syncBuffer collects log output written from the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newEnv(t testing.TB, configure func(*Config)) *testEnv {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aetherium.db"))
	if err != nil {
		t.Fatalf("open sqlite store: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate: %v", err)
	}
	return newEnvOn(t, st, configure)
}

// newEnvOn is newEnv on a migrated store of the caller's.
func newEnvOn(t testing.TB, st store.Store, configure func(*Config)) *testEnv {
	t.Helper()
	bus := inproc.New()
	t.Cleanup(func() { _ = bus.Close() })
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// As in the server: state changes announce their event-log appends on the bus (GET /events).
	st = eventlog.Wake(st, bus, log)
	q := newQueue(t, st, bus, log)
	e := &testEnv{t: t, st: st, q: q, bus: bus, logs: logs}
	key, err := secrets.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	kr, err := secrets.NewKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	e.secrets = secrets.NewManager(st.Secrets(), kr, log)
	e.svc = task.New(st, q, bus, task.DefaultLimits(), task.WithSecrets(e.secrets))
	e.keyA, e.ownerA = e.newKey("alice")
	e.keyB, e.ownerB = e.newKey("bob")
	e.jwt = auth.NewJWT(st.SigningKeys(), kr, auth.JWTConfig{})
	e.auth = auth.NewAuthenticator(st.APIKeys(), auth.WithJWT(e.jwt), auth.WithLogger(log))
	cfg := Config{Service: e.svc, Auth: e.auth, Logger: log, Version: "test-1.2.3",
		Idempotency: st.Idempotency(), Notifications: st.Notifications(), Events: st.Events(), EventBus: bus,
		APIKeys: st.APIKeys(), AuditStore: st.Audit()}
	if configure != nil {
		configure(&cfg)
	}
	e.h = New(cfg)
	e.srv = httptest.NewServer(e.h)
	t.Cleanup(e.srv.Close)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log:\n%s", logs.String())
		}
	})
	return e
}

// newAdminKey stores a key with role admin for a new owner and returns its plaintext and id.
func (e *testEnv) newAdminKey(name string) (string, string) {
	e.t.Helper()
	plain, k, err := auth.NewKey("", name, true)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.APIKeys().Create(context.Background(), k); err != nil {
		e.t.Fatalf("store api key: %v", err)
	}
	return plain, k.ID
}

// newKey stores a key for a new owner and returns its plaintext and owner.
func (e *testEnv) newKey(name string) (string, string) {
	e.t.Helper()
	plain, k, err := auth.NewKey("", name, false)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.st.APIKeys().Create(context.Background(), k); err != nil {
		e.t.Fatalf("store api key: %v", err)
	}
	return plain, k.OwnerID
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (r response) errCode() string {
	var eb client.ErrorBody
	if err := json.Unmarshal(r.body, &eb); err != nil {
		return ""
	}
	return eb.Error.Code
}

func (r response) errMessage() string {
	var eb client.ErrorBody
	_ = json.Unmarshal(r.body, &eb)
	return eb.Error.Message
}

// req describes one request. Body is sent as JSON unless ContentType says otherwise; NoType sends no Content-Type.
type req struct {
	method, path, key string
	body              io.Reader
	contentType       string
	noType            bool
	header            map[string]string
}

func (e *testEnv) do(r req) response {
	e.t.Helper()
	hr, err := http.NewRequest(r.method, e.srv.URL+r.path, r.body)
	if err != nil {
		e.t.Fatal(err)
	}
	if r.key != "" {
		hr.Header.Set("Authorization", "Bearer "+r.key)
	}
	if r.body != nil && !r.noType {
		ct := r.contentType
		if ct == "" {
			ct = "application/json"
		}
		hr.Header.Set("Content-Type", ct)
	}
	for k, v := range r.header {
		hr.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(hr)
	if err != nil {
		e.t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: b}
}

// call sends a JSON body (string) with key.
func (e *testEnv) call(method, path, key, body string) response {
	e.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	return e.do(req{method: method, path: path, key: key, body: rd})
}

// okCall is call that fails the test unless the answer is 200.
func (e *testEnv) okCall(method, path, key, body string) response {
	e.t.Helper()
	r := e.call(method, path, key, body)
	if r.status != http.StatusOK {
		e.t.Fatalf("%s %s: %d %s", method, path, r.status, r.body)
	}
	return r
}

func decodeAs[T any](t testing.TB, r response) T {
	t.Helper()
	var v T
	dec := json.NewDecoder(bytes.NewReader(r.body))
	dec.DisallowUnknownFields() // the server must not send fields the wire types do not have
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("decode %T from %s: %v", v, r.body, err)
	}
	return v
}

// counts is how many rows each table holds, across owners.
type counts struct{ vms, tasks, executions, jobs int }

func (e *testEnv) counts() counts {
	e.t.Helper()
	ctx := context.Background()
	all := store.Page{Limit: 500}
	vms, err := e.st.VMs().List(ctx, store.VMFilter{Page: all})
	if err != nil {
		e.t.Fatal(err)
	}
	tasks, err := e.st.Tasks().List(ctx, store.TaskFilter{Page: all})
	if err != nil {
		e.t.Fatal(err)
	}
	execs, err := e.st.Executions().List(ctx, store.ExecutionFilter{Page: all})
	if err != nil {
		e.t.Fatal(err)
	}
	c := counts{vms: len(vms), tasks: len(tasks), executions: len(execs)}
	for _, owner := range []string{e.ownerA, e.ownerB} {
		jobs, err := e.st.Jobs().List(ctx, owner, all)
		if err != nil {
			e.t.Fatal(err)
		}
		c.jobs += len(jobs)
	}
	return c
}

// createVM creates a VM for key through the API and returns the answer.
func (e *testEnv) createVM(key, name string) client.VMAccepted {
	e.t.Helper()
	r := e.call("POST", "/api/v1/vms", key, `{"name":"`+name+`"}`)
	if r.status != http.StatusAccepted {
		e.t.Fatalf("create vm %s: %d %s", name, r.status, r.body)
	}
	return decodeAs[client.VMAccepted](e.t, r)
}

// registerWorker records a live worker so the service accepts work pinned to it and readiness passes.
func (e *testEnv) registerWorker(id string) {
	e.t.Helper()
	now := time.Now().UTC()
	err := e.st.Workers().Upsert(context.Background(), &model.Worker{
		ID: id, Hostname: "test", Backend: "fake", Status: "active", Capacity: 10, StartedAt: now, LastHeartbeat: now,
	})
	if err != nil {
		e.t.Fatal(err)
	}
}

// testWorkerID is the worker id of the embedded queue; a test that starts it acts as that worker.
const testWorkerID = "w-test"

func newQueue(t testing.TB, st store.Store, bus *inproc.Bus, log *slog.Logger) *embedded.Queue {
	t.Helper()
	q := embedded.New(st.Tasks(), bus, queue.Options{WorkerID: testWorkerID, Concurrency: 2}, log)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := q.Stop(ctx); err != nil {
			t.Errorf("stop queue: %v", err)
		}
	})
	return q
}
