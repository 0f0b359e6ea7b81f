package worker_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/embedded"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/docker"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

var agentBinary string

func TestMain(m *testing.M) {
	os.Exit(func() int {
		dir, err := os.MkdirTemp("", "aetherium-worker-test-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		if out, err := exec.Command("docker", "version", "--format", "{{.Server.Version}}").CombinedOutput(); err != nil {
			if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
				fmt.Fprintf(os.Stderr, "Docker engine required (AETHERIUM_REQUIRE_SERVICES=1) but unavailable: %s\n", out)
				return 1
			}
			fmt.Fprintf(os.Stderr, "WARNING: worker tests SKIPPED: Docker engine unavailable: %s\n", out)
			return 0
		}
		gomod, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		agentBinary = filepath.Join(dir, "aetherium-agent")
		build := exec.Command("go", "build", "-o", agentBinary, "./cmd/aetherium-agent")
		build.Dir = filepath.Dir(strings.TrimSpace(string(gomod)))
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build agent: %v\n%s", err, out)
			return 1
		}
		return m.Run()
	}())
}

// rig is a worker over real parts: SQLite, the embedded queue, the in-process bus and the Docker engine.
type rig struct {
	t            *testing.T
	id           string
	installation string
	dataDir      string
	st           *sqlite.Store
	bus          *inproc.Bus
	backend      *docker.Backend
	q            queue.Queue
	w            *worker.Worker
	svc          *task.Service
	owner        string
	tune         func(*worker.Config)
}

func newRig(t *testing.T) *rig { t.Helper(); return newRigWith(t, nil) }

// newRigWith is newRig with the worker's configuration adjusted by tune.
func newRigWith(t *testing.T, tune func(*worker.Config)) *rig {
	t.Helper()
	return newRigAs(t, "wt-"+uuid.NewString()[:8], tune)
}

// newRigAs is newRigWith for a given worker id. Each rig is an installation of its own: its own store, data
// directory and installation id.
func newRigAs(t *testing.T, workerID string, tune func(*worker.Config)) *rig {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	// Not t.TempDir(): the agent socket path under the data directory must stay within sun_path's 108 bytes.
	dataDir, err := os.MkdirTemp("", "aew")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dataDir) })
	// A large buffer: the tests read every output event and must not lose one to a busy machine.
	r := &rig{t: t, id: workerID, installation: "inst" + uuid.NewString()[:8], dataDir: dataDir, st: st, bus: inproc.New(inproc.WithBuffer(4096)), owner: uuid.NewString(), tune: tune}
	t.Cleanup(func() {
		out, _ := exec.Command("docker", "ps", "-aq", "--filter", "label=aetherium.worker-id="+r.id).Output()
		if ids := strings.Fields(string(out)); len(ids) > 0 {
			_ = exec.Command("docker", append([]string{"rm", "-f"}, ids...)...).Run()
		}
		st.Close()
	})
	r.start()
	return r
}

func (r *rig) start() {
	r.t.Helper()
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var err error
	r.backend, err = docker.New(ctx, docker.Config{DataDir: r.dataDir, AgentBinary: agentBinary, WorkerID: r.id,
		InstallationID: r.installation, Logger: log})
	if err != nil {
		r.t.Fatal(err)
	}
	r.q = embedded.New(r.st.Tasks(), r.bus, queue.Options{
		WorkerID: r.id, Concurrency: 4, RetryDelay: func(int, error) time.Duration { return 10 * time.Millisecond },
	}, log)
	cfg := worker.Config{ID: r.id, Store: r.st, Queue: r.q, Backend: r.backend, Logger: log, Events: r.bus}
	if r.tune != nil {
		r.tune(&cfg)
	}
	r.w, err = worker.New(cfg)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.w.Start(ctx); err != nil {
		r.t.Fatal(err)
	}
	r.svc = task.New(r.st, r.q, r.bus, task.DefaultLimits())
	r.t.Cleanup(r.stop)
}

func (r *rig) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_ = r.w.Stop(ctx)
	_ = r.backend.Close()
}

func (r *rig) wait(id string) *model.Task {
	r.t.Helper()
	tk, err := r.svc.WaitTask(context.Background(), r.owner, id, 2*time.Minute)
	if err != nil {
		r.t.Fatal(err)
	}
	if !tk.Status.Done() {
		r.t.Fatalf("task %s (%s) not done after 2 minutes: %s", id, tk.Type, tk.Status)
	}
	return tk
}

func (r *rig) createVM(name string) *model.VM {
	r.t.Helper()
	vm, tk, err := r.svc.CreateVM(context.Background(), r.owner, client.CreateVMRequest{Name: name})
	if err != nil {
		r.t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		r.t.Fatalf("create %s: %s %s", name, tk.Status, tk.Error)
	}
	vm, err = r.st.VMs().Get(context.Background(), vm.ID)
	if err != nil {
		r.t.Fatal(err)
	}
	return vm
}

func containerExists(t *testing.T, vmID string) bool {
	out, err := exec.Command("docker", "ps", "-aq", "--filter", "label=aetherium.vm-id="+vmID).Output()
	if err != nil {
		t.Fatal(err)
	}
	return len(strings.TrimSpace(string(out))) > 0
}

func TestNonZeroExitIsAResultRunOnce(t *testing.T) {
	r := newRig(t)
	vm := r.createVM("exit3")
	ctx := context.Background()
	e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "echo x >> /tmp/count; echo out; echo err >&2; exit 3"}})
	if err != nil {
		t.Fatal(err)
	}
	tk = r.wait(tk.ID)
	if tk.Status != model.TaskCompleted || tk.RetryCount != 0 {
		t.Fatalf("task: %s retries=%d error=%q; a non-zero exit must complete the task on its first attempt", tk.Status, tk.RetryCount, tk.Error)
	}
	e, err = r.st.Executions().Get(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if e.ExitCode == nil || *e.ExitCode != 3 || e.Stdout != "out\n" || e.Stderr != "err\n" || e.WorkerID != r.id || e.DurationMS == nil {
		t.Fatalf("execution: %+v", e)
	}
	_, tk, err = r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "cat", Args: []string{"/tmp/count"}})
	if err != nil {
		t.Fatal(err)
	}
	r.wait(tk.ID)
	es, _, err := r.svc.ListExecutions(ctx, r.owner, vm.ID, store.Page{})
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[0].Stdout != "x\n" {
		t.Fatalf("the command must have run exactly once; executions=%d, count file=%q", len(es), es[0].Stdout)
	}
}

func TestReconcileMarksLostVMsAndRemovesOrphans(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	lost := r.createVM("lost")
	kept := r.createVM("kept")
	r.stop()

	// Behind the worker's back: one VM's container disappears, and a container the store never knew appears.
	if out, err := exec.Command("docker", "rm", "-f", "aetherium-"+lost.ID).CombinedOutput(); err != nil {
		t.Fatalf("remove container: %v %s", err, out)
	}
	orphanID := uuid.NewString()
	if _, err := r.backend.CreateVM(ctx, vmm.VMConfig{ID: orphanID, Name: "orphan", VCPUs: 1, MemoryMB: 128, WorkerID: r.id}); err != nil {
		t.Fatal(err)
	}
	if !containerExists(t, orphanID) {
		t.Fatal("orphan container was not made")
	}

	r.start()
	got, err := r.st.VMs().Get(ctx, lost.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != model.VMFailed || !strings.Contains(got.Error, "missing") {
		t.Fatalf("lost vm after restart: status=%s error=%q; want failed, saying it went missing", got.Status, got.Error)
	}
	if containerExists(t, orphanID) {
		t.Fatal("orphaned container survived the restart")
	}
	if _, err := os.Stat(filepath.Join(r.dataDir, "vms", orphanID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan's per-VM directory survived (stat: %v)", err)
	}
	got, err = r.st.VMs().Get(ctx, kept.ID)
	if err != nil || got.Status != model.VMRunning {
		t.Fatalf("healthy vm after restart: %+v %v", got, err)
	}
	_, tk, err := r.svc.Execute(ctx, r.owner, kept.ID, client.ExecuteRequest{Command: "true"})
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("exec on adopted vm: %s %s", tk.Status, tk.Error)
	}
}

func TestUnknownImageFailsAtOnceAndLeavesNothing(t *testing.T) {
	r := newRig(t)
	vm, tk, err := r.svc.CreateVM(context.Background(), r.owner, client.CreateVMRequest{Name: "noimage", Image: "aetherium/does-not-exist:1"})
	if err != nil {
		t.Fatal(err)
	}
	tk = r.wait(tk.ID)
	if tk.Status != model.TaskFailed || tk.RetryCount != 0 || !strings.Contains(tk.Error, "does-not-exist") {
		t.Fatalf("task: status=%s retries=%d error=%q; want failed at once, naming the image", tk.Status, tk.RetryCount, tk.Error)
	}
	got, err := r.st.VMs().Get(context.Background(), vm.ID)
	if err != nil || got.Status != model.VMFailed || got.Error == "" {
		t.Fatalf("vm: %+v %v", got, err)
	}
	if containerExists(t, vm.ID) {
		t.Fatal("a container was left behind")
	}
	if _, err := os.Stat(filepath.Join(r.dataDir, "vms", vm.ID)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("per-VM directory left behind (stat: %v)", err)
	}
}

func TestJobStopsOnErrorAndDeletesItsVM(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	ends, err := r.bus.Subscribe(ctx, task.TopicJobs)
	if err != nil {
		t.Fatal(err)
	}
	defer ends.Close()
	job, tk, err := r.svc.CreateJob(ctx, r.owner, client.CreateJobRequest{
		VM: &client.CreateVMRequest{Name: "jobvm"},
		Commands: []client.JobCommand{
			{Command: "echo", Args: []string{"a"}},
			{Command: "sh", Args: []string{"-c", "exit 2"}},
			{Command: "echo", Args: []string{"never"}},
		},
		StopOnError: true, DeleteVMAfter: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("job task: %s %s", tk.Status, tk.Error)
	}
	job, es, err := r.svc.GetJob(ctx, r.owner, job.ID)
	if err != nil {
		t.Fatal(err)
	}
	if job.Status != model.JobFailed || !strings.Contains(job.Error, "exited with code 2") {
		t.Fatalf("job: status=%s error=%q", job.Status, job.Error)
	}
	if len(es) != 2 || es[0].Stdout != "a\n" || es[1].ExitCode == nil || *es[1].ExitCode != 2 {
		t.Fatalf("executions: %d (want 2: the third must not run)", len(es))
	}
	vm, err := r.st.VMs().Get(ctx, job.VMID)
	if err != nil || vm.Status != model.VMDeleted {
		t.Fatalf("job vm: %+v %v", vm, err)
	}
	if containerExists(t, vm.ID) {
		t.Fatal("job vm container left behind")
	}
	// Its end is announced for notifications (job.finished), with why it failed.
	select {
	case ev := <-ends.C():
		var d task.JobFinishedData
		if ev.Type != task.EventJobFinished || ev.Subject != job.ID || ev.OwnerID != r.owner ||
			json.Unmarshal(ev.Data, &d) != nil || d.Status != "failed" || d.Error != job.Error {
			t.Fatalf("job end event: %+v (%s)", ev, ev.Data)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no job.finished event")
	}
}

func TestDeleteBeforeAnyWorkerPicksItUp(t *testing.T) {
	r := newRig(t)
	r.stop() // no worker consumes: the VM stays pending
	ctx := context.Background()
	vm, createTask, err := r.svc.CreateVM(ctx, r.owner, client.CreateVMRequest{Name: "early"})
	if err != nil {
		t.Fatal(err)
	}
	del, err := r.svc.DeleteVM(ctx, r.owner, vm.ID, "")
	if err != nil {
		t.Fatal(err)
	}
	if del.Status != model.TaskCompleted {
		t.Fatalf("delete of a pending vm: %s", del.Status)
	}
	r.start()
	if tk := r.wait(createTask.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("create task of a deleted vm: %s %s", tk.Status, tk.Error)
	}
	got, err := r.st.VMs().Get(ctx, vm.ID)
	if err != nil || got.Status != model.VMDeleted {
		t.Fatalf("vm: %+v %v", got, err)
	}
	if containerExists(t, vm.ID) {
		t.Fatal("a deleted vm was created anyway")
	}
}

// storeVM writes a VM row in the given state on the given worker, as a crashed or other worker would leave it.
func (r *rig) storeVM(name string, status model.VMStatus, workerID string) *model.VM {
	r.t.Helper()
	ctx := context.Background()
	vm := &model.VM{ID: uuid.NewString(), OwnerID: r.owner, Name: name, Status: model.VMPending, VCPUCount: 1, MemoryMB: 256}
	if err := r.st.VMs().Create(ctx, vm); err != nil {
		r.t.Fatal(err)
	}
	vm, err := r.st.VMs().Update(ctx, vm.ID, func(v *model.VM) error { v.Status, v.WorkerID = status, workerID; return nil })
	if err != nil {
		r.t.Fatal(err)
	}
	return vm
}

func TestRetriedCreateIsTakenOverByAnotherWorker(t *testing.T) {
	r := newRig(t)
	ctx := context.Background()
	// Worker "ghost" failed an attempt (and cleaned up); the retry reaches this worker.
	vm := r.storeVM("takeover", model.VMCreating, "ghost")
	tk := &model.Task{ID: uuid.NewString(), OwnerID: r.owner, Type: model.TaskVMCreate, Status: model.TaskPending,
		Priority: model.PriorityDefault, VMID: vm.ID, MaxRetries: 1, Payload: []byte(`{"vm_id":"` + vm.ID + `"}`)}
	if err := r.st.Tasks().Create(ctx, tk); err != nil {
		t.Fatal(err)
	}
	if err := r.q.Enqueue(ctx, queue.Message{TaskID: tk.ID, Type: tk.Type, MaxRetries: 1}); err != nil {
		t.Fatal(err)
	}
	if got := r.wait(tk.ID); got.Status != model.TaskCompleted {
		t.Fatalf("retried create: %s %s", got.Status, got.Error)
	}
	got, err := r.st.VMs().Get(ctx, vm.ID)
	if err != nil || got.Status != model.VMRunning || got.WorkerID != r.id {
		t.Fatalf("vm after takeover: %+v %v; want running on %s", got, err, r.id)
	}
}

func TestReconcileSettlesCreationsNobodyWillFinish(t *testing.T) {
	r := newRig(t)
	r.stop()
	ctx := context.Background()
	// This worker died while creating one VM and deleting another, and the queue gave up on both tasks.
	creating := r.storeVM("half-created", model.VMCreating, r.id)
	if _, err := r.backend.CreateVM(ctx, vmm.VMConfig{ID: creating.ID, Name: creating.Name, VCPUs: 1, MemoryMB: 128, WorkerID: r.id}); err != nil {
		t.Fatal(err)
	}
	stopping := r.storeVM("half-deleted", model.VMStopping, r.id)
	r.start()
	got, err := r.st.VMs().Get(ctx, creating.ID)
	if err != nil || got.Status != model.VMFailed || !strings.Contains(got.Error, "interrupted") {
		t.Fatalf("half-created vm: %+v %v; want failed, saying creation was interrupted", got, err)
	}
	if containerExists(t, creating.ID) {
		t.Fatal("the half-created container was left behind")
	}
	got, err = r.st.VMs().Get(ctx, stopping.ID)
	if err != nil || got.Status != model.VMDeleted {
		t.Fatalf("half-deleted vm: %+v %v; want deleted", got, err)
	}
}

func TestExecutionRunsAsRequestedUserAndRecordsPeakMemory(t *testing.T) {
	r := newRig(t)
	vm := r.createVM("asuser")
	ctx := context.Background()
	for _, tc := range []struct{ user, want string }{{"nobody", "65534\n"}, {"1234:1234", "1234\n"}, {"", "0\n"}} {
		e, tk, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "id", Args: []string{"-u"}, User: tc.user})
		if err != nil {
			t.Fatal(err)
		}
		if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
			t.Fatalf("id -u as %q: %s %s", tc.user, tk.Status, tk.Error)
		}
		e, err = r.st.Executions().Get(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if e.Stdout != tc.want || e.User != tc.user {
			t.Fatalf("as %q: stdout %q (want %q), stored user %q", tc.user, e.Stdout, tc.want, e.User)
		}
		if e.PeakMemoryKB == nil || *e.PeakMemoryKB <= 0 {
			t.Fatalf("peak memory not recorded: %v", e.PeakMemoryKB)
		}
	}
	if _, _, err := r.svc.Execute(ctx, r.owner, vm.ID, client.ExecuteRequest{Command: "id", User: "bad user!"}); !errors.Is(err, model.ErrInvalidInput) {
		t.Fatalf("invalid user accepted: %v", err)
	}
}
