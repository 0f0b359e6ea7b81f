package worker_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// A text agent that needs no credential proxy, so that runs get as far as the Docker backend lets them.
const plainAgentCatalog = `agents:
  echo:
    command: [sh, -c, 'echo "$1"', sh, "{{prompt}}"]
    output: text
`

func plainAgents(t *testing.T) *agents.Catalog {
	t.Helper()
	c, err := agents.Parse([]byte(plainAgentCatalog), agents.Default())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (r *rig) waitRun(id string, within time.Duration) *model.Run {
	r.t.Helper()
	deadline := time.Now().Add(within)
	for {
		run, err := r.st.Runs().Get(context.Background(), id)
		if err != nil {
			r.t.Fatal(err)
		}
		if run.Status.Done() {
			return run
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("run %s is still %s after %s", id, run.Status, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *rig) runEvents(id string) []*model.RunEvent {
	r.t.Helper()
	evs, err := r.st.Runs().Events(context.Background(), id, 0, 1000)
	if err != nil {
		r.t.Fatal(err)
	}
	return evs
}

// TestRunThatCannotCloneFailsAndLeavesNothing: a run whose repository cannot be cloned (the Docker backend's
// image has no git) fails once, at once, saying why, with its transcript's end event, and the VM it made is gone.
func TestRunThatCannotCloneFailsAndLeavesNothing(t *testing.T) {
	cat := plainAgents(t)
	r := newRigWith(t, func(c *worker.Config) { c.Agents = cat })
	svc := task.New(r.st, r.q, r.bus, task.DefaultLimits(), task.WithAgents(cat))
	run, tk, err := svc.CreateRun(context.Background(), r.owner, client.CreateRunRequest{
		Repo: client.RunRepo{URL: "https://git.example.org/org/repo"}, Prompt: "hello", Agent: "echo",
		VM: &client.RunVM{CreateVMRequest: client.CreateVMRequest{MemoryMB: 256}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted || tk.RetryCount != 0 {
		t.Fatalf("task: %s retries=%d %s", tk.Status, tk.RetryCount, tk.Error)
	}
	run = r.waitRun(run.ID, time.Minute)
	if run.Status != model.RunFailed || !strings.Contains(run.Error, "cloning https://git.example.org/org/repo") ||
		!strings.Contains(run.Error, "git") {
		t.Fatalf("run: %s %q", run.Status, run.Error)
	}
	evs := r.runEvents(run.ID)
	if len(evs) == 0 || evs[len(evs)-1].Type != model.RunEventEnd || !strings.Contains(string(evs[len(evs)-1].Data), `"failed"`) {
		t.Fatalf("transcript: %v", evs)
	}
	for i, e := range evs {
		if e.Seq != int64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
	vm, err := r.st.VMs().Get(context.Background(), run.VMID)
	if err != nil || vm.Status != model.VMDeleted || containerExists(t, run.VMID) {
		t.Fatalf("the run's vm: %+v %v (container exists: %v)", vm, err, containerExists(t, run.VMID))
	}
}

// TestRunNeedsACredentialProxy: an agent that reaches its model through the proxy is refused by a worker without
// one (the Docker backend), before anything is made.
func TestRunNeedsACredentialProxy(t *testing.T) {
	r := newRig(t)
	run := &model.Run{ID: uuid.NewString(), OwnerID: r.owner, Status: model.RunPending, VMID: uuid.NewString(),
		Spec: model.RunSpec{Repo: model.RunRepo{URL: "https://github.com/org/repo"}, Prompt: "x", Agent: "claude-code",
			TimeoutSeconds: 60, VMSpec: &model.VMSpec{Name: "run-proxy", VCPUs: 1, MemoryMB: 256}}}
	vm := &model.VM{ID: run.VMID, OwnerID: r.owner, Name: "run-proxy", Status: model.VMPending, VCPUCount: 1, MemoryMB: 256}
	if err := r.st.VMs().Create(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	r.enqueueRun(run)
	run = r.waitRun(run.ID, time.Minute)
	if run.Status != model.RunFailed || !strings.Contains(run.Error, "credential proxy") {
		t.Fatalf("run: %s %q", run.Status, run.Error)
	}
	if vm, _ := r.st.VMs().Get(context.Background(), run.VMID); vm.Status != model.VMDeleted || containerExists(t, vm.ID) {
		t.Fatalf("vm: %s", vm.Status)
	}
}

// enqueueRun stores run and a run:agent task for it, as the service would (or as a redelivery looks).
func (r *rig) enqueueRun(run *model.Run) *model.Task {
	r.t.Helper()
	ctx := context.Background()
	if err := r.st.Runs().Create(ctx, run); err != nil {
		r.t.Fatal(err)
	}
	payload, _ := json.Marshal(task.RunPayload{RunID: run.ID})
	tk := &model.Task{ID: uuid.NewString(), OwnerID: r.owner, Type: model.TaskRunAgent, Status: model.TaskPending,
		Priority: model.PriorityDefault, Payload: payload, MaxRetries: 2, VMID: run.VMID}
	if err := r.st.Tasks().Create(ctx, tk); err != nil {
		r.t.Fatal(err)
	}
	if err := r.q.Enqueue(ctx, queue.Message{TaskID: tk.ID, Type: tk.Type, MaxRetries: 2}); err != nil {
		r.t.Fatal(err)
	}
	return tk
}

// TestInterruptedRunIsNeverStartedAgain: the task of a run whose agent had started (its worker died) comes back:
// the run is failed as interrupted, its VM is deleted, and nothing runs in it.
func TestInterruptedRunIsNeverStartedAgain(t *testing.T) {
	r := newRig(t)
	vm := r.createVM("run-interrupted")
	run := &model.Run{ID: uuid.NewString(), OwnerID: r.owner, Status: model.RunRunning, VMID: vm.ID, WorkerID: r.id,
		Spec: model.RunSpec{Repo: model.RunRepo{URL: "https://github.com/org/repo"}, Prompt: "x", Agent: "claude-code",
			TimeoutSeconds: 60, VMSpec: &model.VMSpec{Name: vm.Name, VCPUs: 1, MemoryMB: 256}}}
	tk := r.enqueueRun(run)
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("task: %s %s", tk.Status, tk.Error)
	}
	run = r.waitRun(run.ID, time.Minute)
	if run.Status != model.RunFailed || !strings.Contains(run.Error, "interrupted") || !strings.Contains(run.Error, "never started again") {
		t.Fatalf("run: %s %q", run.Status, run.Error)
	}
	if vm, _ := r.st.VMs().Get(context.Background(), vm.ID); vm.Status != model.VMDeleted || containerExists(t, vm.ID) {
		t.Fatalf("vm: %s", vm.Status)
	}
	// A run given an existing VM keeps it: the same interruption leaves that VM running.
	keep := r.createVM("run-given")
	run2 := &model.Run{ID: uuid.NewString(), OwnerID: r.owner, Status: model.RunRunning, VMID: keep.ID, WorkerID: r.id,
		Spec: model.RunSpec{Repo: model.RunRepo{URL: "https://github.com/org/repo"}, Prompt: "x", Agent: "claude-code", TimeoutSeconds: 60}}
	r.wait(r.enqueueRun(run2).ID)
	if run2 = r.waitRun(run2.ID, time.Minute); run2.Status != model.RunFailed {
		t.Fatalf("run2: %s", run2.Status)
	}
	if vm, _ := r.st.VMs().Get(context.Background(), keep.ID); vm.Status != model.VMRunning || !containerExists(t, keep.ID) {
		t.Fatalf("the given vm: %s", vm.Status)
	}
}
