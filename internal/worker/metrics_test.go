package worker_test

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestMetricsTellExitCodesFromTransportErrors runs a worker on Docker with metrics: a VM's creation is one boot and
// one create-to-ready; a command that exits 3 is a round trip and no transport error; a command whose container
// is killed under it is a transport error and no round trip. The VM gauge follows the store.
func TestMetricsTellExitCodesFromTransportErrors(t *testing.T) {
	ms := metrics.New("test")
	r := newRigWith(t, func(c *worker.Config) { c.Metrics = ms.Worker() })
	if err := ms.Worker().WatchVMs(r.st.VMs(), r.id, r.backend.Name()); err != nil {
		t.Fatal(err)
	}
	vm := r.createVM("metrics")
	docker := metricstest.Labels{"backend": "docker"}
	s := metricstest.Render(t, ms)
	if b, rd := s.Count("aetherium_vm_boot_duration_seconds", docker), s.Count("aetherium_vm_create_to_ready_seconds", docker); b != 1 || rd != 1 {
		t.Fatalf("after one creation: %d boots, %d create-to-ready, want 1 and 1", b, rd)
	}
	if got := s.Value("aetherium_vms", metricstest.Labels{"state": "running", "backend": "docker"}); got != 1 {
		t.Fatalf("running vms = %v, want 1", got)
	}

	ctx := context.Background()
	_, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("exit 3: task %s %s", tk.Status, tk.Error)
	}
	s = metricstest.Render(t, ms)
	if rt, te := s.Count("aetherium_exec_round_trip_seconds", docker), s.Value("aetherium_agent_transport_errors_total", nil); rt != 1 || te != 0 {
		t.Fatalf("after exit 3: %d round trips, %v transport errors; want 1 and 0", rt, te)
	}

	e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sleep", Args: []string{"60"}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		x, err := r.st.Executions().Get(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if x.Status == model.ExecutionRunning {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sleep never started: %s", x.Status)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Killed while the command runs, or (the row says running just before the command is sent) a moment before it
	// reaches the agent: either way the agent cannot answer.
	if out, err := exec.Command("docker", "kill", "--signal", "KILL", containerOf(t, vm.ID)).CombinedOutput(); err != nil {
		t.Fatalf("docker kill: %v %s", err, out)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskFailed {
		t.Fatalf("exec in a killed container: task %s, want failed", tk.Status)
	}
	s = metricstest.Render(t, ms)
	if rt := s.Count("aetherium_exec_round_trip_seconds", docker); rt != 1 {
		t.Errorf("round trips = %d, want still 1: the killed command never came back", rt)
	}
	if te := s.Value("aetherium_agent_transport_errors_total", metricstest.Labels{"backend": "docker", "op": metrics.OpExec}); te != 1 {
		t.Errorf("transport errors = %v, want 1", te)
	}
}

func containerOf(t *testing.T, vmID string) string {
	t.Helper()
	out, err := exec.Command("docker", "ps", "-q", "--filter", "label=aetherium.vm-id="+vmID).Output()
	if err != nil || len(strings.Fields(string(out))) != 1 {
		t.Fatalf("container of vm %s: %q %v", vmID, out, err)
	}
	return strings.TrimSpace(string(out))
}
