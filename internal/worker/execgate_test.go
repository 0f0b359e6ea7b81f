package worker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestPerVMExecLimitKeepsOtherVMsFlowing: one VM's long commands may not take every slot of the worker. With a
// capacity of 4 (the rig's queue runs 4 tasks at once) a VM runs at most 2 commands at a time; its others wait
// in the queue outside the slots (deferred, using up no retry), another VM's command runs at once while the first
// VM's still run, and the waiting ones run when a permit frees up: none fails for waiting.
func TestPerVMExecLimitKeepsOtherVMsFlowing(t *testing.T) {
	r := newRigWith(t, func(c *worker.Config) { c.Capacity = 4 })
	ctx := context.Background()
	hog, other := r.createVM("hog"), r.createVM("other")

	var hogExecs []*model.Execution
	for range 4 {
		e, _ := r.execute(ctx, hog.ID, "sleep", "6")
		hogExecs = append(hogExecs, e)
	}
	states := func() (running, pending int, rows []*model.Execution) {
		for _, e := range hogExecs {
			x, err := r.st.Executions().Get(ctx, e.ID)
			if err != nil {
				t.Fatal(err)
			}
			rows = append(rows, x)
			switch x.Status {
			case model.ExecutionRunning:
				running++
			case model.ExecutionPending:
				pending++
			}
		}
		return running, pending, rows
	}
	deadline := time.Now().Add(time.Minute)
	for {
		running, _, _ := states()
		if running > 2 {
			t.Fatalf("%d commands of one vm run at once; the limit is 2", running)
		}
		if running == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the hog's commands did not start")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Another VM's command runs now, not after the hog's sleeps.
	_, tk := r.execute(ctx, other.ID, "echo", "hi")
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("other vm's exec: %s %s", tk.Status, tk.Error)
	}
	running, _, rows := states()
	if running != 2 {
		t.Fatalf("when the other vm's command ended the hog ran %d commands, want its 2 (still sleeping)", running)
	}
	// The hog's commands over the limit have not run: they wait in the queue, their tasks pending with no retry
	// used (the rig retries failures after 10 ms and allows few: a counted wait would have failed them by now).
	for _, x := range rows {
		if x.Status != model.ExecutionPending {
			continue
		}
		tk, err := r.st.Tasks().Get(ctx, x.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if tk.Status.Done() || tk.RetryCount != 0 {
			t.Fatalf("waiting execution's task: %s, retry_count %d (%s); want it waiting with no retry used", tk.Status, tk.RetryCount, tk.Error)
		}
	}
	// Then they run, two at a time, and every one completes.
	deadline = time.Now().Add(2 * time.Minute)
	for {
		running, _, rows = states()
		if running > 2 {
			t.Fatalf("%d commands of one vm run at once; the limit is 2", running)
		}
		done := 0
		for _, x := range rows {
			switch x.Status {
			case model.ExecutionCompleted:
				done++
			case model.ExecutionFailed:
				t.Fatalf("a command of the hog failed: %s", x.Error)
			}
		}
		if done == len(rows) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the hog's waiting commands did not run: %+v", rows)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestHostileAgentSocketHoldsNoSlot is issue 10's reproduction at the worker: a guest points its agent.sock at the
// engine's socket (which accepts and never answers the agent protocol), the worker restarts, and the guest's
// owner floods it with commands. They fail (the socket is refused), and other VMs' work goes on meanwhile.
func TestHostileAgentSocketHoldsNoSlot(t *testing.T) {
	r := newRigWith(t, func(c *worker.Config) { c.Capacity = 4 })
	ctx := context.Background()
	atk, victim := r.createVM("atk"), r.createVM("victim")
	if _, tk := r.execute(ctx, atk.ID, "ln", "-sf", "/var/run/docker.sock", "/run/aetherium/agent.sock"); r.wait(tk.ID).Status != model.TaskCompleted {
		t.Fatal("the guest could not replace its socket")
	}
	r.stop()
	r.start()

	var flood []string
	for range 10 {
		_, tk, err := r.svc.Execute(ctx, r.owner, atk.ID, client.ExecuteRequest{Command: "sleep", Args: []string{"1000"}, TimeoutSeconds: 5})
		if err != nil {
			t.Fatal(err)
		}
		flood = append(flood, tk.ID)
	}
	// Other work flows: another VM's command and a new VM.
	if _, tk := r.execute(ctx, victim.ID, "echo", "hi"); r.wait(tk.ID).Status != model.TaskCompleted {
		t.Fatal("the victim's exec did not complete")
	}
	r.createVM("late")
	for _, id := range flood {
		tk := r.wait(id) // fails the test if not done within its bound
		if tk.Status != model.TaskFailed || !(strings.Contains(tk.Error, "refusing the agent socket") || strings.Contains(tk.Error, "vm busy")) {
			t.Fatalf("flood task: %s %q", tk.Status, tk.Error)
		}
	}
	t.Logf("a flood task's error: %s", r.wait(flood[0]).Error)
	tk, err := r.svc.DeleteVM(ctx, r.owner, atk.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("delete: %s %s", tk.Status, tk.Error)
	}
}
