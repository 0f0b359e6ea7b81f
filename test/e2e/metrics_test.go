package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/metrics/metricstest"
	"github.com/aetherium/aetherium/pkg/client"
)

const metricsToken = "e2e-metrics-token-0123456789"

// serveWithMetrics starts serve on Docker with /metrics on a port of its own behind metricsToken, and returns an
// API client and the metrics URL.
func serveWithMetrics(t testing.TB, workerID string) (*client.Client, string, *proc) {
	t.Helper()
	requireDocker(t)
	removeWorkerContainers(t, workerID)
	dataDir, addr, maddr := shortDir(t), freePort(t), freePort(t)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID, "AETHERIUM_LOG_LEVEL=info",
		"AETHERIUM_METRICS_LISTEN="+maddr, "AETHERIUM_METRICS_TOKEN="+metricsToken), "serve")
	waitHTTP(t, addr, p)
	c := newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	return c, "http://" + maddr + "/metrics", p
}

// scrapeUntil scrapes until ok accepts the page (the queue counts a task a moment after it has recorded its end, so
// a client told of the end may scrape too early) and returns that page.
func scrapeUntil(t *testing.T, url, what string, ok func(metricstest.Scrape) bool) metricstest.Scrape {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s := metricstest.Get(t, url, metricsToken)
		if ok(s) {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed %s; last page's aetherium series:\n%s", what, strings.Join(s.Series("aetherium_"), "\n"))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type L = metricstest.Labels

// TestMetricsMoveByWhatHappened scrapes serve's /metrics (parsed with the Prometheus text parser) around one VM
// create and one exec through the API: every counter and histogram moved by exactly what happened, and no more.
func TestMetricsMoveByWhatHappened(t *testing.T) {
	c, url, p := serveWithMetrics(t, "e2e-metrics")
	if !strings.Contains(p.out.String(), "metrics listening") {
		t.Fatalf("serve did not say where metrics are served:\n%s", p.out.String())
	}
	for _, auth := range []string{"", "Bearer not-the-metrics-token"} {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("scrape with Authorization %q: %d, want 401", auth, resp.StatusCode)
		}
	}
	before := metricstest.Get(t, url, metricsToken)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	acc, done, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: "metrics-vm"}, 2*time.Minute)
	if err != nil || !done || acc.VM.Status != "running" {
		t.Fatalf("create: done=%v err=%v %+v", done, err, acc)
	}
	ex, done, err := c.ExecuteWait(ctx, acc.VM.ID, client.ExecuteRequest{Command: "echo", Args: []string{"hi"}}, time.Minute)
	if err != nil || !done || ex.Execution == nil || ex.Execution.ExitCode == nil || *ex.Execution.ExitCode != 0 {
		t.Fatalf("exec: done=%v err=%v %+v", done, err, ex)
	}
	const processed = "aetherium_tasks_processed_total"
	after := scrapeUntil(t, url, "both tasks processed", func(s metricstest.Scrape) bool {
		return s.Value(processed, nil)-before.Value(processed, nil) >= 2
	})

	counter := func(name string, l L) float64 { return after.Value(name, l) - before.Value(name, l) }
	count := func(name string, l L) uint64 { return after.Count(name, l) - before.Count(name, l) }
	for _, c := range []struct {
		name string
		l    L
		want float64
	}{
		{"aetherium_tasks_enqueued_total", nil, 2},
		{"aetherium_tasks_enqueued_total", L{"type": "vm:create", "priority": "default"}, 1},
		{"aetherium_tasks_enqueued_total", L{"type": "vm:execute", "priority": "high"}, 1}, // an exec's default
		{processed, nil, 2},
		{processed, L{"type": "vm:create", "result": "completed"}, 1},
		{processed, L{"type": "vm:execute", "result": "completed"}, 1},
		{"aetherium_http_requests_total", L{"route": "/api/v1/vms", "method": "POST"}, 1},
		{"aetherium_http_requests_total", L{"route": "/api/v1/vms", "method": "POST", "code": "201"}, 1},
		{"aetherium_http_requests_total", L{"route": "/api/v1/vms/{id}/execute", "method": "POST"}, 1},
		{"aetherium_http_requests_total", L{"route": "/api/v1/vms/{id}/execute", "method": "POST", "code": "200"}, 1},
		{"aetherium_agent_transport_errors_total", nil, 0},
		{"aetherium_network_attachments_total", nil, 0}, // network off
	} {
		if got := counter(c.name, c.l); got != c.want {
			t.Errorf("%s%v moved by %v, want %v", c.name, c.l, got, c.want)
		}
	}
	for _, c := range []struct {
		name string
		l    L
		want uint64
	}{
		{"aetherium_exec_round_trip_seconds", L{"backend": "docker"}, 1},
		{"aetherium_exec_round_trip_seconds", nil, 1},
		{"aetherium_vm_boot_duration_seconds", L{"backend": "docker"}, 1},
		{"aetherium_vm_create_to_ready_seconds", L{"backend": "docker"}, 1},
		{"aetherium_task_duration_seconds", L{"type": "vm:create"}, 1},
		{"aetherium_task_duration_seconds", L{"type": "vm:execute"}, 1},
		{"aetherium_task_duration_seconds", nil, 2},
		{"aetherium_task_queue_wait_seconds", nil, 2},
		{"aetherium_http_request_duration_seconds", L{"route": "/api/v1/vms/{id}/execute", "method": "POST"}, 1},
	} {
		if got := count(c.name, c.l); got != c.want {
			t.Errorf("%s%v observations moved by %d, want %d", c.name, c.l, got, c.want)
		}
	}
	// The exec's round trip is part of its task's run, which is part of its HTTP request.
	rt := after.Sum("aetherium_exec_round_trip_seconds", nil) - before.Sum("aetherium_exec_round_trip_seconds", nil)
	run := after.Sum("aetherium_task_duration_seconds", L{"type": "vm:execute"}) - before.Sum("aetherium_task_duration_seconds", L{"type": "vm:execute"})
	if rt <= 0 || rt > run {
		t.Errorf("exec round trip %vs, task run %vs: want 0 < round trip <= run", rt, run)
	}
	for state, want := range map[string]float64{"running": 1, "creating": 0, "failed": 0} {
		if got := after.Value("aetherium_vms", L{"state": state, "backend": "docker"}); got != want {
			t.Errorf("aetherium_vms{state=%q} = %v, want %v", state, got, want)
		}
	}
	for _, q := range []string{"critical", "high", "default", "low", "worker:e2e-metrics:default"} {
		if _, ok := after["aetherium_queue_tasks"]; !ok || !slices.Contains(after.LabelValues("aetherium_queue_tasks", "queue"), q) {
			t.Errorf("no depth for queue %q: %v", q, after.LabelValues("aetherium_queue_tasks", "queue"))
		}
	}
	if got := after.Value("aetherium_queue_tasks", L{"state": "pending"}); got != 0 {
		t.Errorf("pending tasks after everything ended = %v", got)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "aetherium_build_info"} {
		if _, ok := after[name]; !ok {
			t.Errorf("%s missing", name)
		}
	}
	for _, s := range after.Series("aetherium_") {
		if strings.Contains(s, acc.VM.ID) || strings.Contains(s, ex.Execution.ID) || strings.Contains(s, acc.TaskID) {
			t.Errorf("an id reached a label: %s", s)
		}
	}
}

// TestMetricsCardinalityBoundedOver100VMs creates, runs a command in and deletes 100 VMs: the series after the
// first VM are the series after the hundredth.
func TestMetricsCardinalityBoundedOver100VMs(t *testing.T) {
	if testing.Short() {
		t.Skip("SKIPPED in -short: creates 100 containers")
	}
	c, url, _ := serveWithMetrics(t, "e2e-metrics-card")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cycle := func(i int) error {
		acc, done, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: fmt.Sprintf("card-%d", i)}, 2*time.Minute)
		if err != nil || !done || acc.VM.Status != "running" {
			return fmt.Errorf("create %d: done=%v err=%v", i, done, err)
		}
		ex, done, err := c.ExecuteWait(ctx, acc.VM.ID, client.ExecuteRequest{Command: "true"}, time.Minute)
		if err != nil || !done || ex.Execution == nil || ex.Execution.ExitCode == nil {
			return fmt.Errorf("exec %d: done=%v err=%v", i, done, err)
		}
		if _, done, err := c.DeleteVMWait(ctx, acc.VM.ID, 2*time.Minute); err != nil || !done {
			return fmt.Errorf("delete %d: done=%v err=%v", i, done, err)
		}
		return nil
	}
	if err := cycle(0); err != nil {
		t.Fatal(err)
	}
	const per = 3 // tasks per cycle
	first := scrapeUntil(t, url, "the first cycle's tasks processed", func(s metricstest.Scrape) bool {
		return s.Value("aetherium_tasks_processed_total", nil) >= per
	})
	// Five at a time: Docker is quick, the machine is small.
	var wg sync.WaitGroup
	errs := make(chan error, 99)
	next := make(chan int)
	for range 5 {
		wg.Go(func() {
			for i := range next {
				if err := cycle(i); err != nil {
					errs <- err
				}
			}
		})
	}
	for i := 1; i < 100; i++ {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	last := scrapeUntil(t, url, "every cycle's tasks processed", func(s metricstest.Scrape) bool {
		return s.Value("aetherium_tasks_processed_total", nil) >= 100*per
	})
	if got := last.Value("aetherium_tasks_processed_total", nil); got != 100*per {
		t.Fatalf("tasks processed = %v, want %d", got, 100*per)
	}
	if got := last.Count("aetherium_exec_round_trip_seconds", nil); got != 100 {
		t.Fatalf("exec round trips = %d, want 100", got)
	}
	// Deferred executions (a busy VM) cannot happen: one command per VM. Every other series must be the same.
	a, b := first.Series("aetherium_"), last.Series("aetherium_")
	if !slices.Equal(a, b) {
		t.Fatalf("series changed over 100 VMs: %d after the first, %d after the hundredth\nadded: %v\nremoved: %v",
			len(a), len(b), minus(b, a), minus(a, b))
	}
	t.Logf("%d aetherium series after 1 VM and after 100", len(b))
}

func minus(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

// TestMetricsOfGatewayAndWorker: in the production topology (PostgreSQL, Redis) the gateway and the worker each
// serve their own page: the gateway counts the API and what it enqueued, the worker what it ran.
func TestMetricsOfGatewayAndWorker(t *testing.T) {
	requireDocker(t)
	dbURL := newPostgresDB(t)
	redisURL := flushRedis(t)
	common := []string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=info",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken, "AETHERIUM_BACKEND=docker", "AETHERIUM_NETWORK=off",
		"AETHERIUM_METRICS_TOKEN=" + metricsToken,
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+t.TempDir()), "apikey", "create", "--name", "e2e")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	addr, gwMetrics, wMetrics := freePort(t), freePort(t), freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_LISTEN="+addr,
		"AETHERIUM_METRICS_LISTEN="+gwMetrics), "gateway")
	const workerID = "e2e-metrics-w1"
	removeWorkerContainers(t, workerID)
	start(t, workerID, append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_WORKER_ID="+workerID,
		"AETHERIUM_METRICS_LISTEN="+wMetrics), "worker")
	waitHTTP(t, addr, gw)
	c := newClient(t, addr, strings.TrimSpace(key))
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	acc, done, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: "split"}, 2*time.Minute)
	if err != nil || !done || acc.VM.Status != "running" {
		t.Fatalf("create: done=%v err=%v %+v", done, err, acc)
	}
	if ex, done, err := c.ExecuteWait(ctx, acc.VM.ID, client.ExecuteRequest{Command: "true"}, time.Minute); err != nil || !done || ex.Execution.ExitCode == nil {
		t.Fatalf("exec: done=%v err=%v", done, err)
	}

	w := scrapeUntil(t, "http://"+wMetrics+"/metrics", "the worker's two tasks", func(s metricstest.Scrape) bool {
		return s.Value("aetherium_tasks_processed_total", nil) >= 2
	})
	g := metricstest.Get(t, "http://"+gwMetrics+"/metrics", metricsToken)
	for _, c := range []struct {
		page string
		s    metricstest.Scrape
		name string
		l    L
		want float64
	}{
		{"worker", w, "aetherium_tasks_processed_total", L{"type": "vm:create", "result": "completed"}, 1},
		{"worker", w, "aetherium_tasks_processed_total", L{"type": "vm:execute", "result": "completed"}, 1},
		{"worker", w, "aetherium_tasks_processed_total", nil, 2},
		{"worker", w, "aetherium_tasks_enqueued_total", nil, 0},
		{"worker", w, "aetherium_http_requests_total", nil, 0},
		{"worker", w, "aetherium_vms", L{"state": "running", "backend": "docker"}, 1},
		{"gateway", g, "aetherium_tasks_enqueued_total", L{"type": "vm:create"}, 1},
		{"gateway", g, "aetherium_tasks_enqueued_total", L{"type": "vm:execute"}, 1},
		{"gateway", g, "aetherium_tasks_enqueued_total", nil, 2},
		{"gateway", g, "aetherium_tasks_processed_total", nil, 0},
		{"gateway", g, "aetherium_http_requests_total", L{"route": "/api/v1/vms", "method": "POST", "code": "201"}, 1},
		{"gateway", g, "aetherium_http_requests_total", L{"route": "/api/v1/vms/{id}/execute", "method": "POST", "code": "200"}, 1},
	} {
		if got := c.s.Value(c.name, c.l); got != c.want {
			t.Errorf("%s page: %s%v = %v, want %v", c.page, c.name, c.l, got, c.want)
		}
	}
	if n := w.Count("aetherium_exec_round_trip_seconds", L{"backend": "docker"}); n != 1 {
		t.Errorf("worker page: %d exec round trips, want 1", n)
	}
	if n := g.Count("aetherium_exec_round_trip_seconds", nil); n != 0 {
		t.Errorf("gateway page: %d exec round trips, want 0 (it runs nothing)", n)
	}
	if _, ok := g["aetherium_vms"]; ok {
		t.Error("gateway page has the VM gauge of a worker")
	}
	// Both see the same Redis queues.
	for _, s := range []metricstest.Scrape{g, w} {
		if !slices.Contains(s.LabelValues("aetherium_queue_tasks", "queue"), "default") {
			t.Errorf("no depth of the default queue: %v", s.LabelValues("aetherium_queue_tasks", "queue"))
		}
	}
}
