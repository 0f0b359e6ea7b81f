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
	sink, log, closeLogs, err := openLogs(context.Background(), cfg, roles, base)
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
	for _, b := range bodies {
		var p struct{ Streams []stream }
		if err := json.Unmarshal([]byte(b), &p); err != nil {
			t.Fatal(err)
		}
		for _, s := range p.Streams {
			found[s.Stream["kind"]] = s
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
	sink, log, closeLogs, err := openLogs(context.Background(), config.Config{}, Roles{API: true}, base)
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
}
