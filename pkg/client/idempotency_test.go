package client_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/api"
	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// lossyAPI is the real API (SQLite store, embedded queue with no worker) behind a front that loses answers: the
// first lose requests of a path are served in full, then their connection is dropped before the answer leaves,
// as a timeout or a broken network would. It records the Idempotency-Key of every request.
type lossyAPI struct {
	srv  *httptest.Server
	st   store.Store
	key  string
	mu   sync.Mutex
	keys map[string][]string // path -> keys seen, in order
	lose map[string]int      // path -> answers still to lose
}

func newLossyAPI(t *testing.T) *lossyAPI {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	bus := inproc.New()
	t.Cleanup(func() { bus.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	q := embedded.New(st.Tasks(), bus, queue.Options{WorkerID: "w", Concurrency: 1}, log)
	plain, k, err := auth.NewKey("", "sdk", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.APIKeys().Create(ctx, k); err != nil {
		t.Fatal(err)
	}
	h := api.New(api.Config{Service: task.New(st, q, bus, task.DefaultLimits()), Auth: auth.NewAuthenticator(st.APIKeys()),
		Logger: log, Idempotency: st.Idempotency()})
	l := &lossyAPI{st: st, key: plain, keys: map[string][]string{}, lose: map[string]int{}}
	l.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		l.mu.Lock()
		l.keys[r.URL.Path] = append(l.keys[r.URL.Path], r.Header.Get(client.IdempotencyKeyHeader))
		drop := l.lose[r.URL.Path] > 0
		if drop {
			l.lose[r.URL.Path]--
		}
		l.mu.Unlock()
		if !drop {
			h.ServeHTTP(w, r)
			return
		}
		h.ServeHTTP(httptest.NewRecorder(), r) // the request takes effect; its answer is lost
		conn, _, err := http.NewResponseController(w).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	t.Cleanup(l.srv.Close)
	return l
}

func (l *lossyAPI) seen(path string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.keys[path]...)
}

// TestRetriesReplayTheFirstAnswer: with WithRetries, an answer lost on the way is asked for again with the same
// key, and the API replays it: one VM, one execution, whatever the network did.
func TestRetriesReplayTheFirstAnswer(t *testing.T) {
	l := newLossyAPI(t)
	c, err := client.New(l.srv.URL, l.key, client.WithRetries(3))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l.lose["/api/v1/vms"] = 2
	acc, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "once"})
	if err != nil {
		t.Fatalf("CreateVM through a lossy network: %v", err)
	}
	keys := l.seen("/api/v1/vms")
	if len(keys) != 3 || keys[0] == "" || keys[1] != keys[0] || keys[2] != keys[0] {
		t.Fatalf("keys sent: %q; want three attempts with one key", keys)
	}
	vms, err := l.st.VMs().List(ctx, store.VMFilter{})
	if err != nil || len(vms) != 1 || vms[0].ID != acc.VM.ID {
		t.Fatalf("stored vms %v (%v), answer %+v: want exactly the one answered", vms, err, acc.VM)
	}
	// A second call is another operation: a key of its own (and the name is taken now: 409, not retried).
	if _, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "once"}); !client.IsCode(err, client.CodeConflict) {
		t.Fatalf("second CreateVM: %v, want conflict", err)
	}
	if keys := l.seen("/api/v1/vms"); len(keys) != 4 || keys[3] == keys[0] || keys[3] == "" {
		t.Fatalf("keys sent: %q; want a new key for the new call", keys)
	}
	// Reads carry no key.
	if _, err := c.ListVMs(ctx, client.ListVMsOptions{}); err != nil {
		t.Fatal(err)
	}
	if keys := l.seen("/api/v1/vms"); len(keys) != 5 || keys[4] != "" {
		t.Fatalf("a GET sent a key: %q", keys)
	}
}

// TestIdempotencyKeyFromContext: a key of the caller's is sent as is, also by a client without retries, and a
// later call with it gets the first answer.
func TestIdempotencyKeyFromContext(t *testing.T) {
	l := newLossyAPI(t)
	c, err := client.New(l.srv.URL, l.key)
	if err != nil {
		t.Fatal(err)
	}
	ctx := client.WithIdempotencyKey(context.Background(), "job-42-vm")
	first, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "keyed"})
	if err != nil {
		t.Fatal(err)
	}
	// The process restarts and asks again: the same VM, not a conflict.
	again, err := c.CreateVM(ctx, client.CreateVMRequest{Name: "keyed"})
	if err != nil || again.VM.ID != first.VM.ID || again.TaskID != first.TaskID {
		t.Fatalf("second call with the key: %+v, %v; want the first answer %+v", again, err, first)
	}
	// Another request under the same key is refused, and not retried.
	_, err = c.CreateVM(ctx, client.CreateVMRequest{Name: "other"})
	if !client.IsCode(err, client.CodeIdempotencyKeyReused) {
		t.Fatalf("another request with the key: %v", err)
	}
	if keys := l.seen("/api/v1/vms"); len(keys) != 3 || strings.Join(keys, ",") != "job-42-vm,job-42-vm,job-42-vm" {
		t.Fatalf("keys sent: %q", keys)
	}
	// Without retries, a lost answer is an error the caller sees.
	l.lose["/api/v1/vms"] = 1
	if _, err := c.CreateVM(context.Background(), client.CreateVMRequest{Name: "lost"}); err == nil {
		t.Fatal("a lost answer without retries succeeded")
	}
}

// TestRetriesWaitForInProgress: a 409 idempotency_in_progress is retried after its Retry-After, and the client
// then gets the answer.
func TestRetriesWaitForInProgress(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls++
		n := calls
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if n == 1 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusConflict)
			_, _ = io.WriteString(w, `{"error":{"code":"idempotency_in_progress","message":"in progress"}}`)
			return
		}
		w.Header().Set(client.IdempotentReplayedHeader, "true")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, `{"task_id":"t1","execution_id":"e1"}`)
	}))
	defer srv.Close()
	c, err := client.New(srv.URL, testKey, client.WithRetries(1))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	acc, err := c.Execute(context.Background(), "vm", client.ExecuteRequest{Command: "true"})
	if err != nil || acc.ExecutionID != "e1" {
		t.Fatalf("Execute = %+v, %v", acc, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls != 2 || time.Since(start) < time.Second {
		t.Fatalf("%d calls after %s; want a retry after Retry-After", calls, time.Since(start))
	}
}
