package worker_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestIdleVMAcrossARestart: the worker saves a VM's activity to the store in batches; a VM that went idle while its
// worker was down is not reaped the moment the worker is back, but one idle timeout later (the restart grace),
// through a vm:pause task with the reason, a vm.paused event, and the activity it followed saved; the resync loop
// then leaves the paused VM paused.
func TestIdleVMAcrossARestart(t *testing.T) {
	r := newRigWith(t, func(c *worker.Config) {
		c.ReapInterval, c.ActivitySaveInterval = 100*time.Millisecond, 300*time.Millisecond
		c.ResyncInterval = 500 * time.Millisecond
	})
	ctx := context.Background()
	vm, tk, err := r.svc.CreateVM(ctx, r.owner, client.CreateVMRequest{Name: "idler", IdleTimeoutSeconds: 4})
	if err != nil {
		t.Fatal(err)
	}
	r.wait(tk.ID)
	_, tk, err = r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "echo", Args: []string{"hi"}})
	if err != nil {
		t.Fatal(err)
	}
	r.wait(tk.ID)
	ran := time.Now()
	// The exec's activity reaches the store within a save interval or so.
	saved, _ := r.waitVM(vm.ID, 3*time.Second, func(v *model.VM) bool {
		return v.Lifetime != nil && v.Lifetime.LastActivityAt != nil && v.Lifetime.LastActivityAt.After(vm.CreatedAt.Add(100*time.Millisecond))
	})
	if saved.Status != model.VMRunning || saved.Lifetime.LastActivityAt.After(ran) {
		t.Fatalf("saved activity: %+v", saved.Lifetime)
	}

	r.stop()
	time.Sleep(5 * time.Second) // longer than the idle timeout, with no worker watching
	restarted := time.Now()
	sub, err := r.bus.Subscribe(ctx, worker.VMTopic(vm.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	r.start()
	got, took := r.waitVM(vm.ID, 10*time.Second, func(v *model.VM) bool { return v.Status != model.VMRunning })
	since := time.Since(restarted)
	if got.Status != model.VMPaused {
		t.Fatalf("idle vm after the restart: %s %q; want paused", got.Status, got.Error)
	}
	if since < 3500*time.Millisecond {
		t.Fatalf("idle vm paused %s after the worker restarted (waited %s); want the grace of its 4 s idle timeout", since, took)
	}
	t.Logf("paused %s after the restart", since.Round(time.Millisecond))
	select {
	case ev := <-sub.C():
		var d worker.VMLifecycleData
		if ev.Type != worker.EventVMPaused || ev.Subject != vm.ID || json.Unmarshal(ev.Data, &d) != nil || d.Reason != "idle for 4s" {
			t.Fatalf("event: %+v (%s)", ev, ev.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no vm.paused event")
	}
	// The pause is announced by its handler; its task is marked completed a moment later, when the handler returns.
	var tasks []*model.Task
	found := false
	for deadline := time.Now().Add(5 * time.Second); !found && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if tasks, err = r.st.Tasks().List(ctx, store.TaskFilter{VMID: vm.ID}); err != nil {
			t.Fatal(err)
		}
		for _, x := range tasks {
			var p task.LifecyclePayload
			if x.Type == model.TaskVMPause && json.Unmarshal(x.Payload, &p) == nil && p.Reason == "idle for 4s" {
				found = x.Status == model.TaskCompleted && x.TargetWorker == r.id
			}
		}
	}
	if !found {
		t.Fatalf("no completed vm:pause task pinned to the worker with the reason: %+v", tasks)
	}
	// The resync loop leaves it paused.
	time.Sleep(1500 * time.Millisecond)
	if v, err := r.st.VMs().Get(ctx, vm.ID); err != nil || v.Status != model.VMPaused || v.Error != "" {
		t.Fatalf("paused vm after resync passes: %+v %v", v, err)
	}
	// And a command is refused, saying why.
	if _, _, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "true"}); err == nil ||
		!strings.Contains(err.Error(), "paused; resume it") {
		t.Fatalf("exec in a paused vm: %v", err)
	}
}
