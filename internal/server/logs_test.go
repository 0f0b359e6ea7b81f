package server

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
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
)

// TestOpenLogsTeesIntoLoki: with loki_url the process's records reach stdout and the push endpoint (labels of the
// role, ids in metadata), task outcomes are shipped as kind task, and closing flushes.
func TestOpenLogsTeesIntoLoki(t *testing.T) {
	var mu sync.Mutex
	var bodies []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(b))
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()
	var out bytes.Buffer
	base := slog.New(slog.NewTextHandler(&out, nil))
	cfg := config.Config{LokiURL: srv.URL, LokiFormat: logs.FormatJSON, LokiTenant: "t1", WorkerID: "w1", ShutdownFor: 5 * time.Second}
	roles := Roles{Worker: true}
	ms := metrics.New("test")
	sink, log, closeLogs, err := openLogs(context.Background(), cfg, roles, ms, base)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("vm started", "vm_id", "vm-7")
	obs := withTaskLogs(nil, sink, cfg, roles)
	obs.TaskRan(&model.Task{ID: "task-1", OwnerID: "o1", VMID: "vm-7", Type: "execute", Error: "boom"}, time.Now(), time.Second, queue.Failed)
	closeLogs()
	if !strings.Contains(out.String(), `msg="vm started" vm_id=vm-7`) {
		t.Fatalf("stdout lost the record: %q", out.String())
	}
	type stream struct {
		Stream map[string]string `json:"stream"`
		Values [][]any           `json:"values"`
	}
	found := map[string]stream{}
	mu.Lock()
	defer mu.Unlock()
	received := 0
	for _, b := range bodies {
		var p struct{ Streams []stream }
		if err := json.Unmarshal([]byte(b), &p); err != nil {
			t.Fatal(err)
		}
		for _, s := range p.Streams {
			found[s.Stream["kind"]] = s
			received += len(s.Values)
		}
	}
	// The client's counters are the process's metrics: what arrived is what it counts as sent.
	scrape := metricstest.Render(t, ms)
	if got := scrape.Value("aetherium_log_entries_sent_total", nil); got != float64(received) || received < 2 {
		t.Fatalf("aetherium_log_entries_sent_total = %v, the server received %d entries", got, received)
	}
	for _, name := range []string{"aetherium_log_entries_dropped_total", "aetherium_log_entries_queued", "aetherium_log_batches_rejected_total"} {
		if _, ok := scrape[name]; !ok || scrape.Value(name, nil) != 0 {
			t.Fatalf("%s = %v (exposed: %v), want 0", name, scrape.Value(name, nil), ok)
		}
	}
	srvS, taskS := found[logs.KindServer], found[logs.KindTask]
	if srvS.Stream["role"] != "worker" || srvS.Stream["worker"] != "w1" || len(srvS.Values) == 0 {
		t.Fatalf("server stream %+v (all: %v)", srvS, bodies)
	}
	if taskS.Stream["level"] != "error" || len(taskS.Values) != 1 {
		t.Fatalf("task stream %+v", taskS)
	}
	v := taskS.Values[0]
	meta, _ := v[2].(map[string]any)
	if v[1] != "task execute failed after 1s (retries so far: 0): boom" || meta["task_id"] != "task-1" || meta["vm_id"] != "vm-7" || meta["owner_id"] != "o1" {
		t.Fatalf("task entry %v", v)
	}
}

func TestOpenLogsDefaultsToStdout(t *testing.T) {
	base := slog.New(slog.DiscardHandler)
	ms := metrics.New("test")
	sink, log, closeLogs, err := openLogs(context.Background(), config.Config{}, Roles{API: true}, ms, base)
	if err != nil {
		t.Fatal(err)
	}
	defer closeLogs()
	if _, ok := sink.(*logs.Stdout); !ok || log != base {
		t.Fatalf("sink %T, logger changed: %v", sink, log != base)
	}
	if withTaskLogs(nil, sink, config.Config{}, Roles{API: true}) != nil {
		t.Fatal("task entries added with the stdout sink")
	}
	if s := metricstest.Render(t, ms).Series("aetherium_log_"); len(s) != 0 {
		t.Fatalf("log shipping metrics without a log store: %v", s)
	}
}

// TestOpenLogsPushesProtobufAndCountsRejections: the default format is Loki's protobuf, and a store refusing the
// batches shows in the metrics as rejected batches and dropped entries, exactly the client's counters.
func TestOpenLogsPushesProtobufAndCountsRejections(t *testing.T) {
	var mu sync.Mutex
	var types []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		types = append(types, r.Header.Get("Content-Type"))
		mu.Unlock()
		if n, _ := io.Copy(io.Discard, r.Body); n <= 1 { // the health check's empty push
			w.WriteHeader(http.StatusNoContent)
			return
		}
		http.Error(w, "stream limit", http.StatusBadRequest)
	}))
	defer srv.Close()
	ms := metrics.New("test")
	cfg := config.Config{LokiURL: srv.URL, ShutdownFor: 5 * time.Second}
	sink, log, closeLogs, err := openLogs(context.Background(), cfg, Roles{API: true}, ms, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		log.Info("refused", "i", i)
	}
	closeLogs()
	st := sink.(*logs.Loki).Stats()
	if st.Dropped < 5 || st.Rejected < 1 || st.Sent != 0 {
		t.Fatalf("stats %+v, want every entry dropped by rejections", st)
	}
	s := metricstest.Render(t, ms)
	for name, want := range map[string]int64{"aetherium_log_entries_dropped_total": st.Dropped,
		"aetherium_log_batches_rejected_total": st.Rejected, "aetherium_log_entries_sent_total": 0, "aetherium_log_entries_queued": 0} {
		if got := s.Value(name, nil); got != float64(want) {
			t.Errorf("%s = %v, want %d", name, got, want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, ct := range types {
		if ct != logs.ContentTypeProtobuf {
			t.Fatalf("Content-Type %q, want %s by default (all: %v)", ct, logs.ContentTypeProtobuf, types)
		}
	}
}
