package e2e

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm/vmproc"
	"github.com/aetherium/aetherium/pkg/client"
)

// node is one process that owns VMs: serve, or a worker of a gateway.
type node struct {
	id, dir, cmd string
	env          []string
	p            *proc
	runs         int
}

// cluster is an API and the nodes behind it, on real QEMU guests.
type cluster struct {
	t     *testing.T
	c     *client.Client
	addr  string
	nodes map[string]*node
	serve bool
}

// newServeCluster starts `aetherium serve` (SQLite, embedded queue) with worker id id on the QEMU backend.
func newServeCluster(t *testing.T, id string) *cluster {
	guestEnv := requireGuests(t)
	dir := shortDir(t)
	addr := freePort(t)
	n := &node{id: id, dir: dir, cmd: "serve", env: append(serveEnv(dir, addr, "AETHERIUM_WORKER_ID="+id), guestEnv...)}
	cl := &cluster{t: t, addr: addr, nodes: map[string]*node{id: n}, serve: true}
	cl.launch(n)
	cl.c = newClient(t, addr, readLine(t, filepath.Join(dir, "admin-api-key")))
	waitReady(t, cl.c)
	return cl
}

// newGatewayCluster starts a gateway and one worker per id on PostgreSQL and Redis, on the QEMU backend.
func newGatewayCluster(t *testing.T, ids ...string) *cluster {
	guestEnv := requireGuests(t)
	dbURL := newPostgresDB(t)
	redisURL := flushRedis(t)
	common := append([]string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=debug",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken,
	}, guestEnv...)
	if _, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+shortDir(t)), "migrate"); code != 0 {
		t.Fatalf("migrate: %s", errOut)
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+shortDir(t)), "apikey", "create", "--name", "e2e")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	addr := freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+shortDir(t), "AETHERIUM_LISTEN="+addr), "gateway")
	cl := &cluster{t: t, addr: addr, nodes: map[string]*node{}}
	for _, id := range ids {
		dir := shortDir(t)
		n := &node{id: id, dir: dir, cmd: "worker", env: append(common, "AETHERIUM_DATA_DIR="+dir, "AETHERIUM_WORKER_ID="+id)}
		cl.nodes[id] = n
		cl.launch(n)
	}
	waitHTTP(t, addr, gw)
	cl.c = newClient(t, addr, strings.TrimSpace(key))
	waitReady(t, cl.c)
	return cl
}

// launch starts (or starts again) a node and waits until it serves.
func (cl *cluster) launch(n *node) {
	cl.t.Helper()
	n.runs++
	name := n.id
	if n.runs > 1 {
		name += "#" + strconv.Itoa(n.runs)
	}
	n.p = start(cl.t, name, n.env, n.cmd)
	dir := n.dir
	cl.t.Cleanup(func() { killGuests(dir) }) // after the node's own cleanup stopped it (cleanups run last first)
	if cl.serve {
		waitHTTP(cl.t, cl.addr, n.p)
		return
	}
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(n.p.out.String(), "worker started") {
		select {
		case <-n.p.done:
			cl.t.Fatalf("%s exited early:\n%s", name, n.p.out.String())
		default:
		}
		if time.Now().After(deadline) {
			cl.t.Fatalf("%s did not start within 60s:\n%s", name, n.p.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// crash kills a node with SIGKILL (no drain, no requeue) and starts it again under the same id and data directory.
// It returns when the node serves again.
func (cl *cluster) crash(id string) {
	cl.t.Helper()
	n := cl.nodes[id]
	n.p.kill()
	cl.launch(n)
	if cl.serve {
		waitReady(cl.t, cl.c)
	}
}

// assertNoGuests checks that no node has a QEMU process or a VM directory left.
func (cl *cluster) assertNoGuests() {
	cl.t.Helper()
	for _, n := range cl.nodes {
		assertNoGuests(cl.t, n.dir)
	}
}

// killGuests kills whatever QEMU a data directory still runs, so that a failed test leaks nothing.
func killGuests(dir string) {
	for _, p := range qemuUnder(dir) {
		_ = vmproc.KillGroup(p.PID)
	}
}

// qemuPID finds the QEMU process of one VM: its command line names the VM's directory.
func qemuPID(t testing.TB, dir, vmID string) int {
	t.Helper()
	for _, p := range qemuUnder(dir) {
		if strings.Contains(strings.Join(p.Args, " "), "/qemu/"+vmID+"/") {
			return p.PID
		}
	}
	t.Fatalf("no QEMU process for vm %s under %s", vmID, dir)
	return 0
}

func createGuest(ctx context.Context, t testing.TB, c *client.Client, name string) *client.VM {
	t.Helper()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: name, VCPUs: 1, MemoryMB: 256})
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	if vm.Status != "running" {
		t.Fatalf("vm %s is %s: %s", name, vm.Status, vm.Error)
	}
	return vm
}

// run runs a shell command in the VM and returns its stdout; a non-zero exit fails the test.
func run(ctx context.Context, t testing.TB, c *client.Client, vmID, script string) string {
	t.Helper()
	e, err := c.ExecAndWait(ctx, vmID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", script}})
	if err != nil {
		t.Fatalf("exec %q: %v", script, err)
	}
	if e.ExitCode == nil || *e.ExitCode != 0 {
		t.Fatalf("exec %q: %s exit=%v stderr=%q error=%q", script, e.Status, e.ExitCode, e.Stderr, e.Error)
	}
	return strings.TrimSpace(e.Stdout)
}

// resyncFlow: one guest's QEMU is killed with SIGKILL behind its worker's back. Within 10 s the VM is failed with
// the reason, its directory (disk, sockets) is released, and the other guest is untouched.
func resyncFlow(t *testing.T, cl *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	victim := createGuest(ctx, t, cl.c, "resync-victim")
	bystander := createGuest(ctx, t, cl.c, "resync-bystander")
	dir := cl.nodes[victim.WorkerID].dir
	if err := syscall.Kill(qemuPID(t, dir, victim.ID), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	var got *client.VM
	for {
		vm, err := cl.c.GetVM(ctx, victim.ID)
		if err != nil {
			t.Fatal(err)
		}
		if vm.Status != "running" {
			got = vm
			break
		}
		if time.Since(killed) > 10*time.Second {
			t.Fatalf("vm %s still running 10 s after its QEMU was killed", victim.ID)
		}
		time.Sleep(100 * time.Millisecond)
	}
	took := time.Since(killed)
	if got.Status != "failed" || !strings.Contains(got.Error, "stopped unexpectedly") || !strings.Contains(got.Error, "qemu") {
		t.Fatalf("killed vm: status=%s error=%q; want failed, with the reason", got.Status, got.Error)
	}
	t.Logf("vm failed %s after its QEMU was killed: %s", took.Round(time.Millisecond), got.Error)
	vmDir := filepath.Join(dir, "qemu", victim.ID)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(vmDir); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the dead vm's directory (disk, sockets) was not released: %s", vmDir)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out := run(ctx, t, cl.c, bystander.ID, "echo alive"); out != "alive" {
		t.Fatalf("bystander: %q", out)
	}
	if b, err := cl.c.GetVM(ctx, bystander.ID); err != nil || b.Status != "running" {
		t.Fatalf("bystander: %+v %v", b, err)
	}
	for _, vm := range []*client.VM{victim, bystander} {
		if _, err := cl.c.DeleteVMAndWait(ctx, vm.ID); err != nil {
			t.Fatalf("delete %s: %v", vm.Name, err)
		}
	}
	cl.assertNoGuests()
}

// TestResyncKilledQEMUServe: resyncFlow under `aetherium serve`.
func TestResyncKilledQEMUServe(t *testing.T) {
	resyncFlow(t, newServeCluster(t, "e2e-resync-serve"))
}

// TestResyncKilledQEMUGateway: resyncFlow with a gateway and a worker on PostgreSQL and Redis.
func TestResyncKilledQEMUGateway(t *testing.T) {
	resyncFlow(t, newGatewayCluster(t, "e2e-resync-w1"))
}

// restartFlow: the node is killed with SIGKILL while one guest runs a long command (and holds a file and a
// background process) and another guest is being created. After the restart the interrupted creation is taken
// back at once (not after asynq's lease of about a minute) and finishes, the interrupted command is failed with
// a reason (never run twice), and the running guest is the same machine: same boot id, larger uptime, its file
// and background process still there.
func restartFlow(t *testing.T, cl *cluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	keeper := createGuest(ctx, t, cl.c, "restart-keeper")
	run(ctx, t, cl.c, keeper.ID, "echo kept > /kept && sync")
	run(ctx, t, cl.c, keeper.ID, "setsid tail -f /dev/null </dev/null >/dev/null 2>&1 &")
	bootID := run(ctx, t, cl.c, keeper.ID, "cat /proc/sys/kernel/random/boot_id")
	bgPID := run(ctx, t, cl.c, keeper.ID, "pidof tail")
	uptime := func() float64 {
		f, err := strconv.ParseFloat(strings.Fields(run(ctx, t, cl.c, keeper.ID, "cat /proc/uptime"))[0], 64)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	up := uptime()
	long, err := cl.c.Execute(ctx, keeper.ID, client.ExecuteRequest{Command: "sleep", Args: []string{"600"}})
	if err != nil {
		t.Fatal(err)
	}
	waitExecution(t, cl.c, long.ExecutionID, "running")
	// A second guest whose creation is under way when the node dies.
	inflight, err := cl.c.CreateVM(ctx, client.CreateVMRequest{Name: "restart-inflight", VCPUs: 1, MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	for {
		tk, err := cl.c.GetTask(ctx, inflight.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if tk.Status == "processing" {
			break
		}
		if tk.Status != "pending" {
			t.Fatalf("creation ended before the crash: %+v", tk)
		}
		time.Sleep(20 * time.Millisecond)
	}
	before, _ := cl.c.GetTask(ctx, inflight.TaskID)

	cl.crash(keeper.WorkerID)
	restarted := time.Now()

	// The interrupted creation moves on at once: its next attempt is under way (or done) within seconds.
	for {
		tk, err := cl.c.GetTask(ctx, inflight.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if tk.Attempts > before.Attempts || tk.Status == "completed" {
			t.Logf("interrupted creation taken back %s after the restart (attempt %d, %s)", time.Since(restarted).Round(time.Millisecond), tk.Attempts, tk.Status)
			break
		}
		if time.Since(restarted) > 15*time.Second {
			t.Fatalf("the interrupted creation was not taken back within 15 s of the restart: %+v", tk)
		}
		time.Sleep(50 * time.Millisecond)
	}
	created := waitVMStatus(t, cl.c, inflight.VM.ID, "running")
	if created.WorkerID != keeper.WorkerID && cl.serve {
		t.Fatalf("created on %q", created.WorkerID)
	}
	run(ctx, t, cl.c, created.ID, "true")
	x := waitExecution(t, cl.c, long.ExecutionID, "failed")
	if !strings.Contains(x.Error, "interrupted") {
		t.Fatalf("interrupted command: %q", x.Error)
	}

	t.Run("running guest survives", func(t *testing.T) {
		vm, err := cl.c.GetVM(ctx, keeper.ID)
		if err != nil || vm.Status != "running" {
			t.Fatalf("vm after the restart: %+v %v", vm, err)
		}
		if got := run(ctx, t, cl.c, keeper.ID, "cat /proc/sys/kernel/random/boot_id"); got != bootID {
			t.Fatalf("boot id %s, was %s: the guest rebooted", got, bootID)
		}
		if now := uptime(); now <= up {
			t.Fatalf("uptime %.2f, was %.2f", now, up)
		}
		if got := run(ctx, t, cl.c, keeper.ID, "cat /kept"); got != "kept" {
			t.Fatalf("file: %q", got)
		}
		if got := run(ctx, t, cl.c, keeper.ID, "pidof tail"); got != bgPID {
			t.Fatalf("background process: %q, was %q", got, bgPID)
		}
	})
	for _, id := range []string{keeper.ID, created.ID} {
		if _, err := cl.c.DeleteVMAndWait(ctx, id); err != nil {
			t.Fatalf("delete %s: %v", id, err)
		}
	}
	cl.assertNoGuests()
}

// TestWorkerRestartServe: restartFlow under `aetherium serve`.
func TestWorkerRestartServe(t *testing.T) {
	restartFlow(t, newServeCluster(t, "e2e-restart-serve"))
}

// TestWorkerRestartGateway: restartFlow with a gateway and a worker on PostgreSQL and Redis.
func TestWorkerRestartGateway(t *testing.T) {
	restartFlow(t, newGatewayCluster(t, "e2e-restart-w1"))
}

// jobAffinityFlow: the node hosting a job's VM is killed with SIGKILL in the middle of the job's second command.
// The job's next attempt runs on that same node (with two workers, the other one may get the delivery and must
// hand it back), the interrupted command is failed and never run again, the job fails, and its VM is deleted as
// delete_vm_after asks. With hostDown the host stays down until the other worker has got the job (asynq hands a
// dead worker's task to another once its lease has expired, after a minute or two) and handed it back.
func jobAffinityFlow(t *testing.T, cl *cluster, hostDown bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	acc, err := cl.c.CreateJob(ctx, client.CreateJobRequest{
		VM: &client.CreateVMRequest{Name: "affinity-job", VCPUs: 1, MemoryMB: 256},
		Commands: []client.JobCommand{
			{Command: "sh", Args: []string{"-c", "echo one"}},
			{Command: "sleep", Args: []string{"600"}},
			{Command: "echo", Args: []string{"never"}},
		},
		DeleteVMAfter: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(4 * time.Minute)
	var job *client.Job
	for {
		job, err = cl.c.GetJob(ctx, acc.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if len(job.Executions) == 2 && job.Executions[1].Status == "running" {
			break
		}
		if job.Status == "completed" || job.Status == "failed" || time.Now().After(deadline) {
			t.Fatalf("job never reached its second command: %+v", job)
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm, err := cl.c.GetVM(ctx, job.VMID)
	if err != nil {
		t.Fatal(err)
	}
	host := vm.WorkerID
	if hostDown {
		cl.nodes[host].p.kill()
		waitFor := time.Now().Add(4 * time.Minute)
		for !cl.othersSay(host, "task is pinned to another worker; rerouting it") {
			if time.Now().After(waitFor) {
				t.Fatal("no other worker got the dead host's job within 4 minutes")
			}
			time.Sleep(500 * time.Millisecond)
		}
		if j, err := cl.c.GetJob(ctx, acc.JobID); err != nil || j.Status != "running" {
			t.Fatalf("job while its host is down: %+v %v; want still running, waiting for its host", j, err)
		}
		cl.launch(cl.nodes[host])
	} else {
		cl.crash(host)
	}
	restarted := time.Now()
	for {
		job, err = cl.c.GetJob(ctx, acc.JobID)
		if err != nil {
			t.Fatal(err)
		}
		if job.Status == "completed" || job.Status == "failed" {
			break
		}
		if time.Since(restarted) > 2*time.Minute {
			t.Fatalf("job not done 2 minutes after the restart: %+v", job)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("job %s %s after the restart: %s", job.Status, time.Since(restarted).Round(time.Millisecond), job.Error)
	if job.Status != "failed" || len(job.Executions) != 2 {
		t.Fatalf("job: %s with %d executions (%q); want failed, the third command never run", job.Status, len(job.Executions), job.Error)
	}
	if e := job.Executions[0]; e.Status != "completed" || strings.TrimSpace(e.Stdout) != "one" {
		t.Fatalf("first command: %+v", e)
	}
	if e := job.Executions[1]; e.Status != "failed" || e.Error == "" {
		t.Fatalf("interrupted command: %s %q; want failed with a reason", e.Status, e.Error)
	}
	for _, e := range job.Executions {
		if e.WorkerID != "" && e.WorkerID != host {
			t.Fatalf("execution %s ran on %q, the job's vm is on %q", e.ID, e.WorkerID, host)
		}
	}
	tk, err := cl.c.GetTask(ctx, acc.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if tk.WorkerID != host || tk.Attempts < 2 {
		t.Fatalf("job task: worker %q attempts %d; want its retry on %q", tk.WorkerID, tk.Attempts, host)
	}
	if cl.othersSay(host, "rerouting") {
		t.Logf("another worker got the retry and handed it back to %s", host)
	}
	waitVMStatus(t, cl.c, job.VMID, "deleted")
	cl.assertNoGuests()
}

// othersSay reports whether a node other than id has logged msg.
func (cl *cluster) othersSay(id, msg string) bool {
	for other, n := range cl.nodes {
		if other != id && strings.Contains(n.p.out.String(), msg) {
			return true
		}
	}
	return false
}

// TestJobAffinityServe: jobAffinityFlow under `aetherium serve`.
func TestJobAffinityServe(t *testing.T) {
	jobAffinityFlow(t, newServeCluster(t, "e2e-affinity-serve"), false)
}

// TestJobAffinityGateway: jobAffinityFlow with a gateway and two workers on PostgreSQL and Redis, the host
// restarted at once.
func TestJobAffinityGateway(t *testing.T) {
	jobAffinityFlow(t, newGatewayCluster(t, "e2e-affinity-w1", "e2e-affinity-w2"), false)
}

// TestJobAffinityGatewayHostDown: as TestJobAffinityGateway, but the host stays down until the other worker has
// been handed the job by asynq (its lease expired) and has sent it back to the host's own queue. Slow: asynq
// recovers expired leases once a minute.
func TestJobAffinityGatewayHostDown(t *testing.T) {
	jobAffinityFlow(t, newGatewayCluster(t, "e2e-affhd-w1", "e2e-affhd-w2"), true)
}
