package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/tracing/tracingtest"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestTraceOfExecute: in the production topology (PostgreSQL, Redis, a gateway and a worker
// process), one POST /vms/{id}/execute?wait is one trace at an OTLP receiver: the gateway's request span, its
// enqueue span, the queue wait, the worker's task span (a child of the enqueue span, linked to it) with its exec
// step and the agent call under it.
func TestTraceOfExecute(t *testing.T) {
	requireDocker(t)
	rcv := tracingtest.New(t)
	dbURL := newPostgresDB(t)
	redisURL := flushRedis(t)
	common := []string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=info",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken, "AETHERIUM_BACKEND=docker", "AETHERIUM_NETWORK=off",
		"AETHERIUM_METRICS_LISTEN=off", "AETHERIUM_OTLP_ENDPOINT=" + rcv.URL,
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+t.TempDir()), "apikey", "create", "--name", "e2e")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	addr := freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_LISTEN="+addr), "gateway")
	const workerID = "e2e-trace-w1"
	removeWorkerContainers(t, workerID)
	start(t, workerID, append(common, "AETHERIUM_DATA_DIR="+t.TempDir(), "AETHERIUM_WORKER_ID="+workerID), "worker")
	waitHTTP(t, addr, gw)
	c := newClient(t, addr, strings.TrimSpace(key))
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	acc, done, err := c.CreateVMWait(ctx, client.CreateVMRequest{Name: "traced"}, 2*time.Minute)
	if err != nil || !done || acc.VM.Status != "running" {
		t.Fatalf("create: done=%v err=%v %+v", done, err, acc)
	}
	ex, done, err := c.ExecuteWait(ctx, acc.VM.ID, client.ExecuteRequest{Command: "echo", Args: []string{"traced"}}, time.Minute)
	if err != nil || !done || ex.Execution.ExitCode == nil || *ex.Execution.ExitCode != 0 {
		t.Fatalf("exec: done=%v err=%v %+v", done, err, ex)
	}
	const route = "POST /api/v1/vms/{id}/execute"
	spans, ok := rcv.Wait(30*time.Second, func(s []tracingtest.Span) bool {
		reqs := tracingtest.Find(s, route)
		return len(reqs) == 1 && len(tracingtest.Find(tracingtest.InTrace(s, reqs[0].TraceID), "agent exec")) == 1
	})
	reqs := tracingtest.Find(spans, route)
	if !ok || len(reqs) != 1 {
		t.Fatalf("no complete trace of the execute request among %d spans: %v", len(spans), names(spans))
	}
	req := reqs[0]
	trace := tracingtest.InTrace(spans, req.TraceID)
	one := func(name, role string) tracingtest.Span {
		t.Helper()
		got := tracingtest.Find(trace, name)
		if len(got) != 1 || got[0].Resource["aetherium.role"] != role {
			t.Fatalf("%d %q spans in the trace (want one from the %s): %v", len(got), name, role, names(trace))
		}
		return got[0]
	}
	if req.Resource["aetherium.role"] != "gateway" || req.Attrs["aetherium.request_id"] == "" ||
		req.Attrs["http.route"] != "/api/v1/vms/{id}/execute" || req.Attrs["http.response.status_code"] != "200" {
		t.Fatalf("request span: %+v", req)
	}
	enq := one("enqueue vm:execute", "gateway")
	wait := one("queue wait", "worker")
	task := one("task vm:execute", "worker")
	exec := one("exec", "worker")
	agent := one("agent exec", "worker")
	for _, c := range []struct {
		child, parent tracingtest.Span
	}{{enq, req}, {wait, enq}, {task, enq}, {exec, task}, {agent, exec}} {
		if c.child.ParentSpanID != c.parent.SpanID {
			t.Errorf("%q's parent is %s, want %q (%s)", c.child.Name, c.child.ParentSpanID, c.parent.Name, c.parent.SpanID)
		}
	}
	if len(task.Links) != 1 || task.Links[0] != enq.SpanID {
		t.Errorf("the task span's links %v, want the enqueue span %s", task.Links, enq.SpanID)
	}
	if task.Attrs["aetherium.task_type"] != "vm:execute" || task.Attrs["aetherium.worker_id"] != workerID ||
		exec.Attrs["aetherium.execution_id"] != ex.Execution.ID || exec.Attrs["aetherium.exit_code"] != "0" {
		t.Errorf("attributes: task %v exec %v", task.Attrs, exec.Attrs)
	}
	if wait.End.Before(wait.Start) || task.Start.Before(enq.Start) || agent.End.After(req.End) {
		t.Errorf("times out of order: enqueue %s, wait %s-%s, task %s, agent end %s, request end %s",
			enq.Start, wait.Start, wait.End, task.Start, agent.End, req.End)
	}
	// The create's trace has the worker's steps too.
	creates := tracingtest.Find(spans, "POST /api/v1/vms")
	if len(creates) != 1 {
		t.Fatalf("%d create request spans", len(creates))
	}
	ctrace := tracingtest.InTrace(spans, creates[0].TraceID)
	for _, step := range []string{"task vm:create", "vm.create", "vm.boot"} {
		if len(tracingtest.Find(ctrace, step)) != 1 {
			t.Errorf("no %q span in the create's trace: %v", step, names(ctrace))
		}
	}
	t.Logf("execute trace: %d spans; request %s, queue wait %s, exec %s", len(trace), req.End.Sub(req.Start).Round(time.Millisecond),
		wait.End.Sub(wait.Start).Round(time.Millisecond), exec.End.Sub(exec.Start).Round(time.Millisecond))
}

func names(spans []tracingtest.Span) []string {
	out := make([]string, len(spans))
	for i, s := range spans {
		out[i] = s.Name + "@" + s.Resource["aetherium.role"]
	}
	return out
}
