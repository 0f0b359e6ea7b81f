package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// faulty is the real Docker backend with faults switched on and off by the test, and (when events is set) backend
// events the test sends.
type faulty struct {
	vmm.Orchestrator
	mu         sync.Mutex
	listErr    error
	deleteErrs map[string]error
}

func (f *faulty) ListVMs(ctx context.Context) ([]*vmm.Instance, error) {
	f.mu.Lock()
	err := f.listErr
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.Orchestrator.ListVMs(ctx)
}

func (f *faulty) DeleteVM(ctx context.Context, id string) error {
	f.mu.Lock()
	err := f.deleteErrs[id]
	f.mu.Unlock()
	if err != nil {
		return err
	}
	return f.Orchestrator.DeleteVM(ctx, id)
}

func (f *faulty) set(fn func(f *faulty)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	fn(f)
}

// eventful adds vmm.VMEvents to faulty.
type eventful struct {
	*faulty
	c chan vmm.Event
}

func (e *eventful) Events(ctx context.Context) <-chan vmm.Event { return e.c }

// waitVM polls the VM's row until ok accepts it or within passes.
func (r *rig) waitVM(id string, within time.Duration, ok func(*model.VM) bool) (*model.VM, time.Duration) {
	r.t.Helper()
	start := time.Now()
	for {
		vm, err := r.st.VMs().Get(context.Background(), id)
		if err != nil {
			r.t.Fatal(err)
		}
		if ok(vm) {
			return vm, time.Since(start)
		}
		if time.Since(start) > within {
			r.t.Fatalf("vm %s after %s: status=%s error=%q", id, within, vm.Status, vm.Error)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dockerKill(t *testing.T, vmID string) {
	t.Helper()
	if out, err := exec.Command("docker", "kill", "--signal", "KILL", "aetherium-"+vmID).CombinedOutput(); err != nil {
		t.Fatalf("docker kill: %v %s", err, out)
	}
}

// TestResyncFailsAVMKilledBehindTheWorkersBack: a VM whose container is killed while the worker runs is marked
// failed with the backend's reason within 10 s (the default period is 3 s), its container removed and an event
// published; the other VM is left alone.
func TestResyncFailsAVMKilledBehindTheWorkersBack(t *testing.T) {
	r := newRig(t)
	victim := r.createVM("victim")
	bystander := r.createVM("bystander")
	sub, err := r.bus.Subscribe(context.Background(), worker.VMTopic(victim.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	dockerKill(t, victim.ID)
	got, took := r.waitVM(victim.ID, 10*time.Second, func(v *model.VM) bool { return v.Status != model.VMRunning })
	if got.Status != model.VMFailed || !strings.Contains(got.Error, "stopped unexpectedly") || !strings.Contains(got.Error, "137") {
		t.Fatalf("killed vm: status=%s error=%q; want failed with the exit status", got.Status, got.Error)
	}
	t.Logf("killed vm marked failed after %s: %s", took.Round(time.Millisecond), got.Error)
	select {
	case ev := <-sub.C():
		var d worker.VMFailedData
		if ev.Type != worker.EventVMFailed || ev.Subject != victim.ID || ev.OwnerID != r.owner || json.Unmarshal(ev.Data, &d) != nil || d.Reason != got.Error {
			t.Fatalf("event: %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no vm.failed event")
	}
	deadline := time.Now().Add(10 * time.Second)
	for containerExists(t, victim.ID) {
		if time.Now().After(deadline) {
			t.Fatal("the dead vm's container was not removed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if b, err := r.st.VMs().Get(context.Background(), bystander.ID); err != nil || b.Status != model.VMRunning {
		t.Fatalf("bystander: %+v %v", b, err)
	}
}

// TestResyncOnBackendEvent: a backend event makes the worker look at once, long before its next periodic pass.
func TestResyncOnBackendEvent(t *testing.T) {
	var ev *eventful
	r := newRigWith(t, func(c *worker.Config) {
		ev = &eventful{faulty: &faulty{Orchestrator: c.Backend}, c: make(chan vmm.Event, 1)}
		c.Backend, c.ResyncInterval = ev, time.Hour
	})
	vm := r.createVM("evented")
	dockerKill(t, vm.ID)
	time.Sleep(200 * time.Millisecond)
	if got, _ := r.st.VMs().Get(context.Background(), vm.ID); got.Status != model.VMRunning {
		t.Fatalf("vm %s before any event or pass; the test assumes the periodic pass is an hour away", got.Status)
	}
	ev.c <- vmm.Event{VMID: vm.ID, State: vmm.StateStopped, Detail: "die"}
	got, took := r.waitVM(vm.ID, 5*time.Second, func(v *model.VM) bool { return v.Status == model.VMFailed })
	t.Logf("failed %s after the event: %s", took.Round(time.Millisecond), got.Error)
}

// TestDockerDieEventFailsTheVMAtOnce: end to end on the real Docker backend, whose engine events the worker
// subscribes to: a container killed behind the worker's back is marked failed, with the exit status, long before
// the periodic pass (a minute away here, so only the event can explain it), and its container removed.
func TestDockerDieEventFailsTheVMAtOnce(t *testing.T) {
	r := newRigWith(t, func(c *worker.Config) { c.ResyncInterval = time.Minute })
	if _, ok := any(r.backend).(vmm.VMEvents); !ok {
		t.Fatal("the docker backend reports no vm events")
	}
	vm := r.createVM("evented-for-real")
	sub, err := r.bus.Subscribe(context.Background(), worker.VMTopic(vm.ID))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	killed := time.Now()
	dockerKill(t, vm.ID)
	// Well inside the minute: nothing but the event makes the worker look before then.
	got, _ := r.waitVM(vm.ID, 20*time.Second, func(v *model.VM) bool { return v.Status != model.VMRunning })
	if got.Status != model.VMFailed || !strings.Contains(got.Error, "137") {
		t.Fatalf("killed vm: status=%s error=%q; want failed with the exit status", got.Status, got.Error)
	}
	t.Logf("killed vm marked failed %s after the kill began: %s", time.Since(killed).Round(time.Millisecond), got.Error)
	select {
	case ev := <-sub.C():
		if ev.Type != worker.EventVMFailed || ev.Subject != vm.ID {
			t.Fatalf("event: %+v", ev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no vm.failed event")
	}
	deadline := time.Now().Add(10 * time.Second)
	for containerExists(t, vm.ID) {
		if time.Now().After(deadline) {
			t.Fatal("the dead vm's container was not removed")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestResyncMarksNothingWhileTheBackendCannotList: a backend that fails to list marks no VM failed, and the
// worker still starts; once the backend answers again, the dead VM is found.
func TestResyncMarksNothingWhileTheBackendCannotList(t *testing.T) {
	var f *faulty
	r := newRigWith(t, func(c *worker.Config) {
		if f == nil {
			f = &faulty{Orchestrator: c.Backend}
		} else {
			f.Orchestrator = c.Backend // restarted: the rig made a new backend
		}
		c.Backend, c.ResyncInterval = f, 100*time.Millisecond
	})
	vm := r.createVM("listless")
	f.set(func(f *faulty) { f.listErr = errors.New("engine unreachable") })
	r.stop()
	r.start() // reconcile at start cannot list: logged, not fatal
	dockerKill(t, vm.ID)
	time.Sleep(time.Second) // ten passes
	if got, _ := r.st.VMs().Get(context.Background(), vm.ID); got.Status != model.VMRunning {
		t.Fatalf("vm marked %s (%s) while the backend could not list", got.Status, got.Error)
	}
	f.set(func(f *faulty) { f.listErr = nil })
	r.waitVM(vm.ID, 5*time.Second, func(v *model.VM) bool { return v.Status == model.VMFailed })
}

// TestOrphanThatCannotBeDeletedDoesNotStopTheWorker: the first orphan deletion fails at start (today's worker
// stopped serving then): the worker serves anyway, and the orphan is removed once its deletion works.
func TestOrphanThatCannotBeDeletedDoesNotStopTheWorker(t *testing.T) {
	var f *faulty
	r := newRigWith(t, func(c *worker.Config) {
		if f == nil {
			f = &faulty{Orchestrator: c.Backend, deleteErrs: map[string]error{}}
		} else {
			f.Orchestrator = c.Backend
		}
		c.Backend, c.ResyncInterval = f, 100*time.Millisecond
	})
	r.stop()
	ctx := context.Background()
	stuck, gone := uuid.NewString(), uuid.NewString()
	for _, id := range []string{stuck, gone} {
		if _, err := r.backend.CreateVM(ctx, vmm.VMConfig{ID: id, Name: "orphan", VCPUs: 1, MemoryMB: 128, WorkerID: r.id}); err != nil {
			t.Fatal(err)
		}
	}
	f.set(func(f *faulty) { f.deleteErrs[stuck] = errors.New("device or resource busy") })
	r.start()
	if containerExists(t, gone) {
		t.Fatal("the deletable orphan was not removed at start")
	}
	if !containerExists(t, stuck) {
		t.Fatal("the stuck orphan went away although its deletion fails")
	}
	r.createVM("serving") // the worker serves
	f.set(func(f *faulty) { delete(f.deleteErrs, stuck) })
	deadline := time.Now().Add(10 * time.Second)
	for containerExists(t, stuck) {
		if time.Now().After(deadline) {
			t.Fatal("the orphan was not removed once its deletion worked")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestJobOnAnotherWorkersVMIsRerouted: a job delivered to a worker that does not host its VM is not run there (it
// would fail and leak the VM): it is pinned to the VM's worker and waits on that worker's queue, nothing run.
func TestJobOnAnotherWorkersVMIsRerouted(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm := r.storeVM("elsewhere", model.VMCreating, "worker-a")
	if _, err := r.st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status = model.VMRunning; return nil }); err != nil {
		t.Fatal(err)
	}
	spec := model.VMSpec{Name: "jobvm", VCPUs: 1, MemoryMB: 256}
	job := &model.Job{ID: uuid.NewString(), OwnerID: r.owner, VMID: vm.ID, VMSpec: &spec, Status: model.JobRunning,
		Commands: []model.JobCommand{{Command: "true"}}, DeleteVMAfter: true, CreatedAt: time.Now().UTC()}
	if err := r.st.Jobs().Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	tk := &model.Task{ID: uuid.NewString(), OwnerID: r.owner, Type: model.TaskJobRun, Status: model.TaskPending,
		Priority: model.PriorityDefault, VMID: vm.ID, JobID: job.ID, MaxRetries: 0,
		Payload: []byte(`{"job_id":"` + job.ID + `"}`)}
	if err := r.st.Tasks().Create(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if err := r.q.Enqueue(ctx, queue.Message{TaskID: tk.ID, Type: tk.Type}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := r.st.Tasks().Get(ctx, tk.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got.TargetWorker == "worker-a" && got.Status == model.TaskPending {
			if got.RetryCount != 0 {
				t.Fatalf("the reroute used a retry: %+v", got)
			}
			break
		}
		if got.Status.Done() || time.Now().After(deadline) {
			t.Fatalf("job task: %s target=%q error=%q; want pending, pinned to worker-a", got.Status, got.TargetWorker, got.Error)
		}
		time.Sleep(20 * time.Millisecond)
	}
	j, es, err := r.svc.GetJob(ctx, r.owner, job.ID)
	if err != nil || j.Status != model.JobRunning || len(es) != 0 {
		t.Fatalf("job: %+v, %d executions, %v; want untouched", j, len(es), err)
	}
	if v, _ := r.st.VMs().Get(ctx, vm.ID); v.Status != model.VMRunning || v.WorkerID != "worker-a" {
		t.Fatalf("vm: %+v", v)
	}
}

// TestFailedJobStillDeletesItsVM: a job whose VM cannot be made fails, and with delete_vm_after its VM ends
// deleted, not failed and left for the user.
func TestFailedJobStillDeletesItsVM(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	job, tk, err := r.svc.CreateJob(ctx, r.owner, client.CreateJobRequest{
		VM:       &client.CreateVMRequest{Name: "doomed", Image: "aetherium/does-not-exist:1"},
		Commands: []client.JobCommand{{Command: "true"}}, DeleteVMAfter: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.wait(tk.ID)
	job, _, err = r.svc.GetJob(ctx, r.owner, job.ID)
	if err != nil || job.Status != model.JobFailed || !strings.Contains(job.Error, "does-not-exist") {
		t.Fatalf("job: %+v %v", job, err)
	}
	vm, err := r.st.VMs().Get(ctx, job.VMID)
	if err != nil || vm.Status != model.VMDeleted {
		t.Fatalf("vm of the failed job: %+v %v; want deleted", vm, err)
	}
	if containerExists(t, vm.ID) {
		t.Fatal("container left behind")
	}
}

// TestJobInterruptedOnItsLastAttemptIsSettledAtStart: a worker that died during a job's last attempt (the queue
// will not run it again) ends the job when it restarts: the running command failed, not run again, the VM
// deleted as asked, the job and its task failed.
func TestJobInterruptedOnItsLastAttemptIsSettledAtStart(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	vm := r.createVM("jobvm")
	r.stop()
	// What the dead worker left: a job running its first command, its task processing on its last attempt.
	spec := model.VMSpec{Name: "jobvm", VCPUs: 1, MemoryMB: 256}
	job := &model.Job{ID: uuid.NewString(), OwnerID: r.owner, VMID: vm.ID, VMSpec: &spec, Status: model.JobRunning,
		Commands: []model.JobCommand{{Command: "sleep", Args: []string{"60"}}, {Command: "true"}}, DeleteVMAfter: true,
		CreatedAt: time.Now().UTC()}
	if err := r.st.Jobs().Create(ctx, job); err != nil {
		t.Fatal(err)
	}
	tk := &model.Task{ID: uuid.NewString(), OwnerID: r.owner, Type: model.TaskJobRun, Status: model.TaskPending,
		Priority: model.PriorityDefault, VMID: vm.ID, JobID: job.ID, TargetWorker: r.id, MaxRetries: 1,
		Payload: []byte(`{"job_id":"` + job.ID + `"}`)}
	if err := r.st.Tasks().Create(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.Tasks().Update(ctx, tk.ID, func(x *model.Task) error {
		x.Status, x.WorkerID, x.RetryCount = model.TaskProcessing, r.id, 1
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	e := task.NewJobExecution(job, vm.ID, 0)
	e.TaskID = tk.ID
	if err := r.st.Executions().Create(ctx, e); err != nil {
		t.Fatal(err)
	}
	if _, err := r.st.Executions().Update(ctx, e.ID, func(x *model.Execution) error {
		x.Status, x.WorkerID = model.ExecutionRunning, r.id
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	r.start()
	j, es, err := r.svc.GetJob(ctx, r.owner, job.ID)
	if err != nil || j.Status != model.JobFailed || !strings.Contains(j.Error, "interrupted") {
		t.Fatalf("job after restart: %+v %v; want failed, interrupted", j, err)
	}
	if len(es) != 1 || es[0].Status != model.ExecutionFailed {
		t.Fatalf("executions: %d, first %+v; want the running one failed and the next never run", len(es), es)
	}
	if got, _ := r.st.Tasks().Get(ctx, tk.ID); got.Status != model.TaskFailed {
		t.Fatalf("task: %s", got.Status)
	}
	if v, _ := r.st.VMs().Get(ctx, vm.ID); v.Status != model.VMDeleted || containerExists(t, vm.ID) {
		t.Fatalf("vm: %s; want deleted with its container", v.Status)
	}
	if es, _ := r.st.Executions().List(ctx, store.ExecutionFilter{JobID: job.ID}); len(es) != 1 {
		t.Fatalf("%d executions", len(es))
	}
}
