package logs

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pushRecorder is a push endpoint answering each request with the next status of a script (then 204), recording
// what it was sent.
type pushRecorder struct {
	mu       sync.Mutex
	statuses []int
	bodies   [][]byte
	headers  []http.Header
	calls    atomic.Int64
}

func (p *pushRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.calls.Add(1)
	body, _ := io.ReadAll(r.Body)
	p.mu.Lock()
	code := http.StatusNoContent
	if len(p.statuses) > 0 {
		code, p.statuses = p.statuses[0], p.statuses[1:]
	}
	if r.URL.Path == PushPath && code/100 == 2 {
		p.bodies = append(p.bodies, body)
		p.headers = append(p.headers, r.Header.Clone())
	}
	p.mu.Unlock()
	if r.URL.Path != PushPath {
		code = http.StatusNotFound
	}
	w.WriteHeader(code)
}

func newTestLoki(t *testing.T, rec *pushRecorder, cfg LokiConfig) *Loki {
	t.Helper()
	srv := httptest.NewServer(rec)
	t.Cleanup(srv.Close)
	cfg.URL = srv.URL
	if cfg.BatchWait == 0 {
		cfg.BatchWait = 5 * time.Millisecond
	}
	cfg.MinBackoff, cfg.MaxBackoff = time.Millisecond, 5*time.Millisecond
	l, err := NewLoki(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func closeLoki(t *testing.T, l *Loki) Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	return l.Stats()
}

func entry(line string) Entry {
	return Entry{Line: line, Labels: Labels{Service: "aetherium", Kind: KindServer, Level: "info"}}
}

func TestLokiRetriesOnlyWhatIsWorthRetrying(t *testing.T) {
	for _, tc := range []struct {
		name     string
		statuses []int
		sent     int64
		rejected int64
	}{
		{"429 then ok", []int{429, 429}, 3, 0},
		{"5xx then ok", []int{500, 502, 503}, 3, 0},
		{"400 drops the batch", []int{400}, 0, 1},
		{"401 drops the batch", []int{401}, 0, 1},
		{"413 drops the batch", []int{413}, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &pushRecorder{statuses: tc.statuses}
			l := newTestLoki(t, rec, LokiConfig{BatchEntries: 3})
			if err := l.Push(context.Background(), entry("a"), entry("b"), entry("c")); err != nil {
				t.Fatal(err)
			}
			st := closeLoki(t, l)
			if st.Sent != tc.sent || st.Rejected != tc.rejected || st.Sent+st.Dropped != 3 {
				t.Fatalf("stats %+v, want sent %d rejected %d", st, tc.sent, tc.rejected)
			}
			wantCalls := int64(len(tc.statuses)) + 1
			if tc.rejected > 0 {
				wantCalls = 1
			}
			if got := rec.calls.Load(); got != wantCalls {
				t.Fatalf("%d requests, want %d", got, wantCalls)
			}
		})
	}
}

func TestLokiRetriesConnectionErrors(t *testing.T) {
	// A port nobody listens on: every attempt fails to connect; Close's deadline ends the retries and counts.
	l, err := NewLoki(LokiConfig{URL: "http://127.0.0.1:1", BatchWait: time.Millisecond, MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Push(context.Background(), entry("a"), entry("b"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if err := l.Close(ctx); err == nil {
		t.Fatal("Close reported a full flush to a server that is not there")
	}
	if st := l.Stats(); st.Dropped != 2 || st.Sent != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v, want both entries dropped", st)
	}
	if err := l.Push(context.Background(), entry("late")); err != ErrClosed {
		t.Fatalf("Push after Close: %v, want ErrClosed", err)
	}
}

func TestLokiBufferBoundCountsDrops(t *testing.T) {
	block := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-block
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	l, err := NewLoki(LokiConfig{URL: srv.URL, BatchEntries: 10, BatchWait: time.Millisecond, MaxBufferEntries: 100})
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Push(context.Background(), entry("first")) // taken by the sender, which then waits on the server
	for !inFlightOnly(l) {
		time.Sleep(time.Millisecond)
	}
	for i := 0; i < 250; i++ {
		_ = l.Push(context.Background(), entry("x"))
	}
	if st := l.Stats(); st.Dropped != 150 || st.Queued != 101 {
		t.Fatalf("stats %+v, want 150 dropped and 100 queued + 1 in flight", st)
	}
	close(block)
	if st := closeLoki(t, l); st.Sent != 101 || st.Dropped != 150 {
		t.Fatalf("stats %+v", st)
	}
}

func TestLokiByteBound(t *testing.T) {
	l, err := NewLoki(LokiConfig{URL: "http://127.0.0.1:1", BatchWait: time.Hour, MaxBufferBytes: 1000})
	if err != nil {
		t.Fatal(err)
	}
	big := entry(strings.Repeat("x", 400))
	_ = l.Push(context.Background(), big, big, big)
	if st := l.Stats(); st.Queued != 2 || st.Dropped != 1 {
		t.Fatalf("stats %+v, want 2 queued, 1 dropped by the byte bound", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_ = l.Close(ctx)
}

func TestLokiAuthAndTenantHeaders(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  LokiConfig
		auth string
	}{
		{"bearer", LokiConfig{Tenant: "team-a", BearerToken: "tok-123"}, "Bearer tok-123"},
		{"basic", LokiConfig{Username: "u", Password: "p"}, "Basic dTpw"},
		{"none", LokiConfig{}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &pushRecorder{}
			l := newTestLoki(t, rec, tc.cfg)
			_ = l.Push(context.Background(), entry("a"))
			closeLoki(t, l)
			if len(rec.headers) != 1 {
				t.Fatalf("%d pushes", len(rec.headers))
			}
			h := rec.headers[0]
			if h.Get("Authorization") != tc.auth || h.Get("X-Scope-OrgID") != tc.cfg.Tenant || h.Get("Content-Type") != ContentTypeProtobuf {
				t.Fatalf("headers %v", h)
			}
		})
	}
}

func TestNewLokiRejectsBadConfig(t *testing.T) {
	for _, cfg := range []LokiConfig{
		{URL: "loki:3100"}, {URL: "ftp://loki"}, {URL: "http://u:secret@loki"}, {URL: "http://loki?x=1"},
		{URL: "http://loki", Username: "u", BearerToken: "t"}, {URL: "http://loki", Password: "p"},
	} {
		if l, err := NewLoki(cfg); err == nil {
			_ = l.Close(context.Background())
			t.Errorf("NewLoki(%+v) accepted", cfg)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("error shows the password: %v", err)
		}
	}
}

func TestEncodePushGroupsStreamsWithMetadata(t *testing.T) {
	ts := time.Unix(1700000000, 123456789)
	a := Entry{Time: ts, Line: "one", Labels: Labels{Service: "s", Kind: KindExec}, Metadata: map[string]string{MetaVMID: "vm1"}}
	b := Entry{Time: ts, Line: "two", Labels: Labels{Service: "s", Kind: KindConsole}}
	c := Entry{Time: ts.Add(1), Line: "three", Labels: Labels{Service: "s", Kind: KindExec}}
	body, err := EncodePush([]Entry{a, b, c})
	if err != nil {
		t.Fatal(err)
	}
	want := `{"streams":[{"stream":{"kind":"exec","service":"s"},"values":[["1700000000123456789","one",{"vm_id":"vm1"}],["1700000000123456790","three"]]},{"stream":{"kind":"console","service":"s"},"values":[["1700000000123456789","two"]]}]}`
	if string(body) != want {
		t.Fatalf("push body\n%s\nwant\n%s", body, want)
	}
}

// memSink collects entries.
type memSink struct {
	mu      sync.Mutex
	entries []Entry
}

func (m *memSink) Push(_ context.Context, e ...Entry) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.entries = append(m.entries, e...)
	return nil
}
func (m *memSink) Health(context.Context) error { return nil }
func (m *memSink) Close(context.Context) error  { return nil }

func TestTeeHandlerKeepsStdoutAndShips(t *testing.T) {
	var out bytes.Buffer
	sink := &memSink{}
	log := slog.New(NewTeeHandler(slog.NewJSONHandler(&out, nil), sink, Labels{Service: "aetherium", Role: "worker", Worker: "w1"}))
	log.With("vm_id", "vm-9").Info("vm started", "execution_id", "ex-1", "n", 3)
	log.WithGroup("g").Warn("grouped", "vm_id", "not-an-id")
	log.Debug("below the level")
	var rec map[string]any
	if err := json.Unmarshal(bytes.SplitN(out.Bytes(), []byte("\n"), 2)[0], &rec); err != nil || rec["msg"] != "vm started" {
		t.Fatalf("stdout lost the record: %q (%v)", out.String(), err)
	}
	if len(sink.entries) != 2 {
		t.Fatalf("%d entries shipped, want 2 (debug is below the level)", len(sink.entries))
	}
	e := sink.entries[0]
	if e.Line != `msg="vm started" vm_id=vm-9 execution_id=ex-1 n=3` {
		t.Errorf("line %q", e.Line)
	}
	if e.Labels != (Labels{Service: "aetherium", Role: "worker", Worker: "w1", Level: "info", Kind: KindServer}) {
		t.Errorf("labels %+v", e.Labels)
	}
	if e.Metadata[MetaVMID] != "vm-9" || e.Metadata[MetaExecutionID] != "ex-1" || len(e.Metadata) != 2 {
		t.Errorf("metadata %v", e.Metadata)
	}
	if g := sink.entries[1]; g.Labels.Level != "warn" || len(g.Metadata) != 0 || g.Line != `msg=grouped g.vm_id=not-an-id` {
		t.Errorf("grouped entry %+v", g)
	}
}

// inFlightOnly reports whether the sender holds one entry and nothing waits.
func inFlightOnly(l *Loki) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.inFlight == 1 && len(l.queue) == 0
}
