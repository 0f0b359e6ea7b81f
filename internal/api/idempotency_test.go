package api

import (
	"context"
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/storetest"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/pkg/client"
)

// onStores runs test on the API over SQLite and over PostgreSQL: the idempotency table's locking differs (one
// writer; INSERT ... ON CONFLICT and FOR UPDATE).
func onStores(t *testing.T, configure func(*Config), test func(*testing.T, *testEnv)) {
	t.Run("sqlite", func(t *testing.T) { test(t, newEnv(t, configure)) })
	t.Run("postgres", func(t *testing.T) {
		st, err := postgres.Open(t.Context(), storetest.PostgresDatabase(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if err := st.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		test(t, newEnvOn(t, st, configure))
	})
}

// withKey sends body to path with an Idempotency-Key.
func (e *testEnv) withKey(method, path, key, idemKey, body string) response {
	e.t.Helper()
	var rd *strings.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	r := req{method: method, path: path, key: key, header: map[string]string{client.IdempotencyKeyHeader: idemKey}}
	if rd != nil {
		r.body = rd
	}
	return e.do(r)
}

func replayed(r response) bool { return r.header.Get(client.IdempotentReplayedHeader) == "true" }

// abandon sends a request with an Idempotency-Key and gives up on it (as a client whose timeout fires) once
// started returns: the server has it, and nobody reads the answer. It returns when the server has finished it.
func (e *testEnv) abandon(path, idemKey, body string, started func() bool) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, "POST", e.srv.URL+path, strings.NewReader(body))
	if err != nil {
		e.t.Fatal(err)
	}
	hr.Header.Set("Authorization", "Bearer "+e.keyA)
	hr.Header.Set("Content-Type", "application/json")
	hr.Header.Set(client.IdempotencyKeyHeader, idemKey)
	done := make(chan error, 1)
	go func() {
		resp, err := e.srv.Client().Do(hr)
		if err == nil {
			resp.Body.Close()
			err = context.DeadlineExceeded // the answer came; the test wanted the request pending
		}
		done <- err
	}()
	waitFor(e.t, "the request to be under way", started)
	before := strings.Count(e.logs.String(), `"msg":"http request"`)
	cancel()
	if err := <-done; err == context.DeadlineExceeded {
		e.t.Fatal("the request answered before it was abandoned")
	}
	// The server notices the client is gone, ends the wait and logs the request.
	waitFor(e.t, "the abandoned request to end", func() bool {
		return strings.Count(e.logs.String(), `"msg":"http request"`) > before
	})
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestIdempotentRetryAfterTimeout is the case keys exist for: a client times out during a ?wait, retries with the
// same key, and gets the task of its first request; nothing is created or run twice.
func TestIdempotentRetryAfterTimeout(t *testing.T) { onStores(t, nil, testIdempotentRetryAfterTimeout) }

func testIdempotentRetryAfterTimeout(t *testing.T, e *testEnv) {

	t.Run("vm create", func(t *testing.T) {
		// No worker: the wait cannot end by itself.
		e.abandon("/api/v1/vms?wait=5m", "create-1", `{"name":"once"}`, func() bool { return e.counts().vms == 1 })
		r := e.withKey("POST", "/api/v1/vms?wait=5m", e.keyA, "create-1", `{"name":"once"}`)
		if r.status != http.StatusAccepted || !replayed(r) {
			t.Fatalf("retry: %d %v %s", r.status, r.header, r.body)
		}
		acc := decodeAs[client.VMAccepted](t, r)
		if c := e.counts(); c.vms != 1 || c.tasks != 1 {
			t.Fatalf("after the retry: %+v, want one vm and one task", c)
		}
		vms, err := e.st.VMs().List(t.Context(), store.VMFilter{OwnerID: e.ownerA})
		if err != nil || len(vms) != 1 || vms[0].ID != acc.VM.ID || acc.VM.Name != "once" || acc.TaskID == "" {
			t.Fatalf("replayed %+v, stored %v %v", acc, vms, err)
		}
		// Without the key the same request is a new one: the name is taken.
		if r := e.call("POST", "/api/v1/vms", e.keyA, `{"name":"once"}`); r.status != http.StatusConflict {
			t.Fatalf("same request without key: %d %s", r.status, r.body)
		}
	})

	t.Run("execute", func(t *testing.T) {
		vmID := e.runningVM("exec-box", testWorkerID, "", time.Now())
		var runs atomic.Int32
		release := make(chan struct{})
		e.q.RegisterHandler(model.TaskVMExecute, func(ctx context.Context, tk *model.Task) (json.RawMessage, error) {
			runs.Add(1)
			<-release
			var p task.ExecutePayload
			if err := json.Unmarshal(tk.Payload, &p); err != nil {
				return nil, err
			}
			code := 0
			if _, err := e.st.Executions().Update(ctx, p.ExecutionID, func(x *model.Execution) error {
				now := time.Now().UTC()
				x.Status, x.ExitCode, x.StartedAt, x.CompletedAt, x.WorkerID = model.ExecutionCompleted, &code, &now, &now, testWorkerID
				return nil
			}); err != nil {
				return nil, err
			}
			return json.Marshal(task.ExecuteResult{ExecutionID: p.ExecutionID, ExitCode: code})
		})
		if err := e.q.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		path := "/api/v1/vms/" + vmID + "/execute?wait=5m"
		body := `{"command":"make","args":["deploy"]}`
		e.abandon(path, "exec-1", body, func() bool { return runs.Load() == 1 })
		r := e.withKey("POST", path, e.keyA, "exec-1", body)
		if r.status != http.StatusAccepted || !replayed(r) {
			t.Fatalf("retry: %d %s", r.status, r.body)
		}
		acc := decodeAs[client.ExecuteAccepted](t, r)
		close(release)
		waitFor(t, "the execution to end", func() bool {
			x, err := e.st.Executions().Get(t.Context(), acc.ExecutionID)
			return err == nil && x.Status == model.ExecutionCompleted
		})
		// Still the first answer, also once the command has ended; the command ran once.
		r2 := e.withKey("POST", path, e.keyA, "exec-1", body)
		if r2.status != http.StatusAccepted || !replayed(r2) || string(r2.body) != string(r.body) {
			t.Fatalf("second retry: %d %s, want %s", r2.status, r2.body, r.body)
		}
		es, err := e.st.Executions().List(t.Context(), store.ExecutionFilter{VMID: vmID})
		if err != nil || len(es) != 1 || runs.Load() != 1 {
			t.Fatalf("%d executions (%v), %d runs; want 1 and 1", len(es), err, runs.Load())
		}
	})
}

func TestIdempotencyKeySemantics(t *testing.T) { onStores(t, nil, testIdempotencyKeySemantics) }

func testIdempotencyKeySemantics(t *testing.T, e *testEnv) {

	// First request answered: a retry gets the same answer byte for byte, marked as replayed.
	first := e.withKey("POST", "/api/v1/vms", e.keyA, "k-vm", `{"name":"a"}`)
	if first.status != http.StatusAccepted || replayed(first) {
		t.Fatalf("first: %d %v %s", first.status, first.header, first.body)
	}
	again := e.withKey("POST", "/api/v1/vms", e.keyA, "k-vm", `{"name":"a"}`)
	if again.status != first.status || string(again.body) != string(first.body) || !replayed(again) ||
		again.header.Get("Content-Type") != "application/json" {
		t.Fatalf("replay: %d %v %s, want %s", again.status, again.header, again.body, first.body)
	}
	// ?wait is how long to hold the answer, not part of the request.
	if r := e.withKey("POST", "/api/v1/vms?wait=1ms", e.keyA, "k-vm", `{"name":"a"}`); !replayed(r) || r.status != http.StatusAccepted {
		t.Fatalf("replay with another wait: %d %s", r.status, r.body)
	}
	if c := e.counts(); c.vms != 1 || c.tasks != 1 {
		t.Fatalf("counts %+v, want one vm", c)
	}

	// The same key for another request: 422, nothing done.
	for name, r := range map[string]response{
		"other body":   e.withKey("POST", "/api/v1/vms", e.keyA, "k-vm", `{"name":"b"}`),
		"other path":   e.withKey("POST", "/api/v1/jobs", e.keyA, "k-vm", `{"vm":{"name":"c"},"commands":[{"command":"true"}]}`),
		"other method": e.withKey("DELETE", "/api/v1/vms/"+decodeAs[client.VMAccepted](t, first).VM.ID, e.keyA, "k-vm", ""),
		"other query":  e.withKey("POST", "/api/v1/vms?x=1", e.keyA, "k-vm", `{"name":"a"}`),
	} {
		if r.status != http.StatusUnprocessableEntity || r.errCode() != client.CodeIdempotencyKeyReused {
			t.Errorf("%s: %d %s", name, r.status, r.body)
		}
	}
	if c := e.counts(); c.vms != 1 || c.tasks != 1 || c.jobs != 0 {
		t.Fatalf("counts %+v after mismatches", c)
	}

	// Keys are per owner: bob's "k-vm" is his own.
	if r := e.withKey("POST", "/api/v1/vms", e.keyB, "k-vm", `{"name":"a"}`); r.status != http.StatusAccepted || replayed(r) {
		t.Fatalf("another owner's key: %d %s", r.status, r.body)
	}

	// Error answers (not 5xx) are answers too: the retry gets the same 422, and the request is not evaluated again.
	bad := e.withKey("POST", "/api/v1/vms", e.keyA, "k-bad", `{"name":"x","vcpus":999}`)
	if bad.status != http.StatusUnprocessableEntity {
		t.Fatalf("bad request: %d %s", bad.status, bad.body)
	}
	if r := e.withKey("POST", "/api/v1/vms", e.keyA, "k-bad", `{"name":"x","vcpus":999}`); r.status != 422 || !replayed(r) || string(r.body) != string(bad.body) {
		t.Fatalf("replayed 422: %d %s", r.status, r.body)
	}

	// Bad keys: 400 before anything runs.
	for name, k := range map[string]string{"empty": "", "too long": strings.Repeat("k", 256), "not ascii": "clé"} {
		r := e.withKey("POST", "/api/v1/vms", e.keyA, k, `{"name":"never"}`)
		if r.status != http.StatusBadRequest || r.errCode() != client.CodeIdempotencyKeyInvalid {
			t.Errorf("%s key: %d %s", name, r.status, r.body)
		}
	}
	if r := e.withKey("POST", "/api/v1/vms", e.keyA, strings.Repeat("k", 255), `{"name":"longest"}`); r.status != http.StatusAccepted {
		t.Errorf("255-character key: %d %s", r.status, r.body)
	}
	// GETs ignore the header.
	if r := e.withKey("GET", "/api/v1/vms", e.keyA, "", ""); r.status != http.StatusOK {
		t.Errorf("GET with an empty key: %d %s", r.status, r.body)
	}
	if c := e.counts(); c.vms != 3 {
		t.Fatalf("counts %+v, want 3 vms (a, bob's a, longest)", c)
	}
}

// TestIdempotencyInProgressAndConcurrency: a key whose first request has not answered gets 409; of many requests
// with one key at once, one runs and the others get 409 or its answer.
func TestIdempotencyInProgressAndConcurrency(t *testing.T) {
	onStores(t, nil, testIdempotencyInProgressAndConcurrency)
}

func testIdempotencyInProgressAndConcurrency(t *testing.T, e *testEnv) {
	body := `{"name":"racer"}`

	var wg sync.WaitGroup
	const n = 8
	answers := make([]response, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = e.withKey("POST", "/api/v1/vms", e.keyA, "race", body)
		}()
	}
	wg.Wait()
	var won, replays, busy int
	var taskID string
	for _, r := range answers {
		switch {
		case r.status == http.StatusAccepted && !replayed(r):
			won++
			taskID = decodeAs[client.VMAccepted](t, r).TaskID
		case r.status == http.StatusAccepted:
			replays++
		case r.status == http.StatusConflict && r.errCode() == client.CodeIdempotencyInProgress && r.header.Get("Retry-After") != "":
			busy++
		default:
			t.Errorf("concurrent request: %d %s", r.status, r.body)
		}
	}
	if won != 1 || won+replays+busy != n {
		t.Fatalf("%d won, %d replayed, %d in progress; want exactly one winner", won, replays, busy)
	}
	for _, r := range answers {
		if r.status == http.StatusAccepted && decodeAs[client.VMAccepted](t, r).TaskID != taskID {
			t.Errorf("a replay names another task: %s", r.body)
		}
	}
	if c := e.counts(); c.vms != 1 || c.tasks != 1 {
		t.Fatalf("counts %+v, want one vm", c)
	}

	// A claim in progress (its request still running, here held in the store) answers 409 deterministically.
	hr, _ := http.NewRequest("POST", "/api/v1/vms", nil)
	rec := &store.IdempotencyRecord{OwnerID: e.ownerA, Key: "held", Fingerprint: fingerprint(hr, []byte(`{"name":"held"}`)),
		CreatedAt: time.Now(), ExpiresAt: time.Now().Add(time.Hour)}
	if cur, err := e.st.Idempotency().Begin(t.Context(), rec, time.Now().Add(-time.Hour)); err != nil || cur != nil {
		t.Fatal(cur, err)
	}
	r := e.withKey("POST", "/api/v1/vms", e.keyA, "held", `{"name":"held"}`)
	if r.status != http.StatusConflict || r.errCode() != client.CodeIdempotencyInProgress {
		t.Fatalf("in progress: %d %s", r.status, r.body)
	}
	if c := e.counts(); c.vms != 1 {
		t.Fatalf("a request in progress ran again: %+v", c)
	}
}

// TestIdempotencyExpiryAndServerErrors: an expired key is free again; a 5xx answer is not kept, so the retry runs.
func TestIdempotencyExpiryAndServerErrors(t *testing.T) {
	onStores(t, func(c *Config) { c.ClusterToken = clusterToken }, testIdempotencyExpiryAndServerErrors)
}

func testIdempotencyExpiryAndServerErrors(t *testing.T, e *testEnv) {

	// A key used 25 hours ago (its row not purged yet) is a new key now.
	hr, _ := http.NewRequest("POST", "/api/v1/vms", nil)
	body := `{"name":"late"}`
	old := time.Now().Add(-25 * time.Hour)
	rec := &store.IdempotencyRecord{OwnerID: e.ownerA, Key: "yesterday", Fingerprint: fingerprint(hr, []byte(body)),
		CreatedAt: old, ExpiresAt: old.Add(IdempotencyTTL)}
	if _, err := e.st.Idempotency().Begin(t.Context(), rec, old.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	rec.Status, rec.Body = http.StatusAccepted, []byte(`{"stale":"answer"}`)
	if err := e.st.Idempotency().Complete(t.Context(), rec); err != nil {
		t.Fatal(err)
	}
	r := e.withKey("POST", "/api/v1/vms", e.keyA, "yesterday", body)
	if r.status != http.StatusAccepted || replayed(r) || strings.Contains(string(r.body), "stale") {
		t.Fatalf("expired key: %d %v %s", r.status, r.header, r.body)
	}
	if r := e.withKey("POST", "/api/v1/vms", e.keyA, "yesterday", body); !replayed(r) {
		t.Fatalf("the expired key's new use is not kept: %d %s", r.status, r.body)
	}
	// Expired rows are purged.
	if n, err := e.st.Idempotency().Purge(t.Context(), time.Now().Add(IdempotencyTTL+time.Minute)); err != nil || n < 1 {
		t.Fatalf("Purge = %d, %v", n, err)
	}

	// A worker that stopped sending heartbeats: mkdir answers 503, which is not kept.
	w := newWorkerRig(t, clusterToken, noVMs{err: vmm.ErrNotFound})
	stale := e.runningVM("stale", "w-stale", w.srv.URL, time.Now().Add(-time.Hour))
	path := "/api/v1/vms/" + stale + "/fs/mkdir"
	for i := range 2 {
		r := e.withKey("POST", path, e.keyA, "mk", `{"path":"/work"}`)
		if r.status != http.StatusServiceUnavailable || replayed(r) {
			t.Fatalf("attempt %d: %d %v %s, want a fresh 503", i, r.status, r.header, r.body)
		}
	}
	// Once the worker is back, the retry with the same key runs (the worker answers 404: it has no such VM).
	e.runningVM("stale2", "w-stale", w.srv.URL, time.Now())
	before := w.count()
	if r := e.withKey("POST", path, e.keyA, "mk", `{"path":"/work"}`); r.status == http.StatusServiceUnavailable || replayed(r) || w.count() != before+1 {
		t.Fatalf("retry after recovery: %d %s (worker saw %d requests)", r.status, r.body, w.count()-before)
	}

	// Uploads refuse the header: their body is a stream.
	r = e.do(req{method: "PUT", path: "/api/v1/vms/" + stale + "/files?path=/f", key: e.keyA, body: strings.NewReader("x"),
		contentType: "application/octet-stream", header: map[string]string{client.IdempotencyKeyHeader: "up"}})
	if r.status != http.StatusBadRequest || r.errCode() != client.CodeIdempotencyKeyInvalid {
		t.Fatalf("upload with a key: %d %s", r.status, r.body)
	}
}

// TestEveryMutatingRouteChecksTheKey: the header is looked at on every mutating route of the router (an invalid
// key is refused before anything runs), as the OpenAPI document says.
func TestEveryMutatingRouteChecksTheKey(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "target")
	before := e.counts()
	for _, route := range routerRoutes(t, newServer(Config{})) {
		method, path, _ := strings.Cut(route, " ")
		if !mutating(method) || slices.Contains(unkeyedRoutes, route) {
			continue // the secret routes ignore the header (TestSecretsRoutes)
		}
		path = strings.NewReplacer("{id}", vm.VM.ID, "{pid}", "p1").Replace(path)
		r := e.do(req{method: method, path: path, key: e.keyA, body: strings.NewReader(`{}`),
			header: map[string]string{client.IdempotencyKeyHeader: strings.Repeat("x", 256)}})
		if r.status != http.StatusBadRequest || r.errCode() != client.CodeIdempotencyKeyInvalid {
			t.Errorf("%s with a 256-character key: %d %s", route, r.status, r.body)
		}
	}
	if c := e.counts(); c != before {
		t.Fatalf("refused requests changed the store: %+v -> %+v", before, c)
	}
}
