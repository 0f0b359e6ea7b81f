package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm/vmmtest"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
	"github.com/aetherium/aetherium/pkg/client"
)

// Guest images for the microVM tests, made once per test binary.
var guest struct {
	once           sync.Once
	kernel, rootfs string
	skip           string
}

// requireGuestPhase fails a test that boots guests when it runs in scripts/test.sh's first phase, which runs
// while the guest kernel and the template are still being built (AETHERIUM_TEST_GUESTS=0): the script picks the
// tests of its second phase by name, and a new guest test must be named there.
func requireGuestPhase(t testing.TB) {
	t.Helper()
	if os.Getenv("AETHERIUM_TEST_GUESTS") == "0" {
		t.Fatalf("%s boots microVM guests but runs before the guest images are built: add its name to GUEST_TESTS in scripts/test.sh", t.Name())
	}
}

// requireGuests returns the env that points a server at the guest kernel and a template, or skips (fails under
// AETHERIUM_REQUIRE_SERVICES=1) when QEMU guests cannot run here.
func requireGuests(t testing.TB) []string {
	t.Helper()
	requireGuestPhase(t)
	backend := e2eBackend()
	guest.once.Do(func() {
		if backend == "firecracker" {
			guest.skip = firecrackerMissing()
		} else if guest.skip = vmmtest.QEMUMissing(); guest.skip != "" {
			return
		}
		if guest.skip != "" {
			return
		}
		guest.kernel, _ = vmmtest.Kernel()
		dir, err := os.MkdirTemp("", "aee-img-")
		if err != nil {
			guest.skip = err.Error()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		_, m, err := vmmtest.Template(ctx, dir, "e2e")
		if err != nil {
			guest.skip = err.Error()
			return
		}
		guest.rootfs = m.Path
	})
	requireService(t, backend+" guests", guest.skip == "", guest.skip)
	return []string{"AETHERIUM_BACKEND=" + backend, "AETHERIUM_KERNEL_PATH=" + guest.kernel, "AETHERIUM_ROOTFS_PATH=" + guest.rootfs,
		"AETHERIUM_NETWORK=off",
		// Guests outlive their worker unless it stops them: every test's servers stop theirs when they end.
		"AETHERIUM_SHUTDOWN_VMS=true"}
}

// e2eBackend is the microVM backend of the microVM tests: qemu, or firecracker when AETHERIUM_E2E_BACKEND says
// so (with AETHERIUM_FIRECRACKER_BIN and optionally AETHERIUM_JAILER_BIN, which the servers read from the
// environment they inherit): the manual test on a KVM host, docs/firecracker-host-test.md.
func e2eBackend() string {
	if os.Getenv("AETHERIUM_E2E_BACKEND") == "firecracker" {
		return "firecracker"
	}
	return "qemu"
}

// firecrackerMissing says why Firecracker guests cannot run here ("" when they can).
func firecrackerMissing() string {
	bin := os.Getenv("AETHERIUM_FIRECRACKER_BIN")
	if bin == "" {
		return "AETHERIUM_E2E_BACKEND=firecracker needs AETHERIUM_FIRECRACKER_BIN"
	}
	if _, err := os.Stat(bin); err != nil {
		return err.Error()
	}
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "Firecracker needs /dev/kvm: " + err.Error()
	}
	_ = f.Close()
	if _, err := vmmtest.Kernel(); err != nil {
		return err.Error()
	}
	return ""
}

// guestsUnder lists the VMM processes of a data directory, of the backend under test.
func guestsUnder(dir string) []vmproc.Found {
	if e2eBackend() == "firecracker" {
		return firecrackerUnder(dir)
	}
	return qemuUnder(dir)
}

// firecrackerUnder lists the firecracker processes of a data directory: an unjailed one has its API socket
// there, a jailed one its root (the jail).
func firecrackerUnder(dir string) []vmproc.Found {
	all, _ := vmproc.Scan(func(args []string) bool {
		return len(args) > 0 && strings.Contains(filepath.Base(args[0]), "firecracker")
	})
	var out []vmproc.Found
	for _, p := range all {
		root, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", p.PID))
		if strings.HasPrefix(root, dir+"/") ||
			vmproc.HasArgPair(p.Args, "--api-sock", func(v string) bool { return strings.HasPrefix(v, dir+"/") }) {
			out = append(out, p)
		}
	}
	return out
}

// shortDir is a data directory short enough for the per-VM Unix sockets.
func shortDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "aee-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}

// qemuUnder lists the QEMU processes of a data directory.
func qemuUnder(dir string) []vmproc.Found {
	found, _ := vmproc.Scan(func(args []string) bool {
		return vmproc.HasArgPair(args, "-chardev", func(v string) bool { return strings.Contains(v, "path="+dir+"/") })
	})
	return found
}

func assertNoGuests(t testing.TB, dir string) {
	t.Helper()
	if f := guestsUnder(dir); len(f) != 0 {
		for _, p := range f {
			_ = vmproc.KillGroup(p.PID)
		}
		t.Fatalf("%s processes left under %s: %d", e2eBackend(), dir, len(f))
	}
	vmDirs := "qemu"
	if e2eBackend() == "firecracker" {
		vmDirs = "vms"
	}
	entries, _ := os.ReadDir(filepath.Join(dir, vmDirs))
	if len(entries) != 0 {
		t.Fatalf("per-VM directories (disks) left under %s: %d", dir, len(entries))
	}
}

// microVMFlow is the REST flow on a real guest: four VMs at once, the guest's own kernel, exit codes, isolated
// disks, delete.
func microVMFlow(t *testing.T, c *client.Client, dataDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	vms := make([]*client.VM, 4)
	errs := make([]error, 4)
	var wg sync.WaitGroup
	for i := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			vms[i], errs[i] = c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: fmt.Sprintf("guest-%d", i), VCPUs: 1, MemoryMB: 256})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("create vm %d: %v", i, err)
		}
		if vms[i].Status != "running" {
			t.Fatalf("vm %d is %s: %s", i, vms[i].Status, vms[i].Error)
		}
	}
	exec := func(vm *client.VM, cmd string, args ...string) *client.Execution {
		t.Helper()
		e, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: cmd, Args: args})
		if err != nil {
			t.Fatalf("exec %s %v on %s: %v", cmd, args, vm.Name, err)
		}
		if e.ExitCode == nil {
			t.Fatalf("exec %s on %s: no exit code (%s: %s)", cmd, vm.Name, e.Status, e.Error)
		}
		return e
	}
	uname := exec(vms[0], "uname", "-a")
	if *uname.ExitCode != 0 || !strings.Contains(uname.Stdout, "Linux guest-0 6.1.") ||
		strings.Contains(uname.Stdout, strings.TrimSpace(string(host))) {
		t.Fatalf("uname -a = %q: want the guest's own 6.1 kernel and host name, not the host's %s", uname.Stdout, host)
	}
	t.Logf("guest: %s", strings.TrimSpace(uname.Stdout))
	if e := exec(vms[0], "sh", "-c", "exit 3"); *e.ExitCode != 3 {
		t.Fatalf("exit 3: got %d", *e.ExitCode)
	}
	exec(vms[0], "sh", "-c", "echo mine > /marker && sync")
	for _, vm := range vms[1:] {
		if e := exec(vm, "test", "-e", "/marker"); *e.ExitCode == 0 {
			t.Fatalf("vm %s sees the file vm %s wrote: disks are not isolated", vm.Name, vms[0].Name)
		}
	}
	for _, vm := range vms {
		if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
			t.Fatalf("delete %s: %v", vm.Name, err)
		}
	}
	assertNoGuests(t, dataDir)
}

// TestMicroVMServe: `aetherium serve` (SQLite, in-process queue) on the QEMU backend.
func TestMicroVMServe(t *testing.T) {
	env := requireGuests(t)
	dataDir := shortDir(t)
	addr := freePort(t)
	p := start(t, "serve", append(serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-qemu-serve"), env...), "serve")
	waitHTTP(t, addr, p)
	c := newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	microVMFlow(t, c, dataDir)
	if e2eBackend() == "qemu" && !strings.Contains(p.out.String(), "qemu accelerator chosen") {
		t.Fatalf("serve did not log its accelerator choice:\n%s", p.out.String())
	}
}

// TestMicroVMProduction: a gateway and a worker on PostgreSQL and Redis, the QEMU backend; then the worker is killed
// with SIGKILL while its guests run: the guests outlive it (QEMU runs detached), the restarted worker adopts the
// same QEMU processes, its guests answer again, the interrupted command is failed with a reason, and nothing is
// left once the VMs are deleted.
func TestMicroVMProduction(t *testing.T) {
	env := requireGuests(t)
	dbURL := newPostgresDB(t)
	redisURL := flushRedis(t)
	common := append([]string{
		"AETHERIUM_DATABASE_URL=" + dbURL, "AETHERIUM_REDIS_URL=" + redisURL,
		"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=debug",
		"AETHERIUM_CLUSTER_TOKEN=" + e2eClusterToken,
	}, env...)
	if _, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+shortDir(t)), "migrate"); code != 0 {
		t.Fatalf("migrate: %s", errOut)
	}
	key, errOut, code := runCLI(t, append(common, "AETHERIUM_DATA_DIR="+shortDir(t)), "apikey", "create", "--name", "e2e")
	if code != 0 {
		t.Fatalf("apikey create: %s", errOut)
	}
	addr := freePort(t)
	gw := start(t, "gateway", append(common, "AETHERIUM_DATA_DIR="+shortDir(t), "AETHERIUM_LISTEN="+addr), "gateway")
	wdir := shortDir(t)
	t.Cleanup(func() {
		// Guests outlive their worker: whatever happens, none outlives the test.
		for _, p := range guestsUnder(wdir) {
			_ = vmproc.KillGroup(p.PID)
		}
	})
	wenv := append(common, "AETHERIUM_DATA_DIR="+wdir, "AETHERIUM_WORKER_ID=e2e-qemu-w1")
	w := start(t, "worker", wenv, "worker")
	waitHTTP(t, addr, gw)
	c := newClient(t, addr, strings.TrimSpace(key))
	waitReady(t, c)
	microVMFlow(t, c, wdir)
	// Kill the worker while two guests run, one of them in the middle of a command.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var victims []*client.VM
	for _, name := range []string{"victim-a", "victim-b"} {
		vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: name})
		if err != nil || vm.Status != "running" {
			t.Fatalf("create %s: %+v %v", name, vm, err)
		}
		victims = append(victims, vm)
	}
	acc, err := c.Execute(ctx, victims[0].ID, client.ExecuteRequest{Command: "sleep", Args: []string{"600"}})
	if err != nil {
		t.Fatal(err)
	}
	waitExecution(t, c, acc.ExecutionID, "running")
	before := guestsUnder(wdir)
	if len(before) != 2 {
		t.Fatalf("want 2 %s processes before the kill, found %d", e2eBackend(), len(before))
	}
	w.kill()
	// The guests outlive their worker.
	time.Sleep(time.Second)
	if after := guestsUnder(wdir); len(after) != 2 {
		t.Fatalf("%d %s processes after the worker was SIGKILLed, want the 2 it ran", len(after), e2eBackend())
	}

	start(t, "worker-restarted", wenv, "worker")
	for _, vm := range victims {
		got := waitVMStatus(t, c, vm.ID, "running")
		acc, err := c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "echo", Args: []string{"adopted"}})
		if err != nil {
			t.Fatalf("exec in %s after the worker restarted: %v", got.Name, err)
		}
		if x := waitExecution(t, c, acc.ExecutionID, "completed"); strings.TrimSpace(x.Stdout) != "adopted" {
			t.Fatalf("exec in %s after the worker restarted: %+v", got.Name, x)
		}
	}
	if again := guestsUnder(wdir); len(again) != 2 || !samePIDs(before, again) {
		t.Fatalf("%s processes after the restart: %v, want the same as before: %v", e2eBackend(), again, before)
	}
	x := waitExecution(t, c, acc.ExecutionID, "failed")
	if x.Error == "" {
		t.Fatal("the interrupted command failed without a reason")
	}
	for _, vm := range victims {
		if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
			t.Fatalf("delete vm %s: %v", vm.Name, err)
		}
	}
	assertNoGuests(t, wdir)
}

// samePIDs reports whether two process lists hold the same processes (pid and start time).
func samePIDs(a, b []vmproc.Found) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[[2]uint64]bool{}
	for _, p := range a {
		seen[[2]uint64{uint64(p.PID), p.Start}] = true
	}
	for _, p := range b {
		if !seen[[2]uint64{uint64(p.PID), p.Start}] {
			return false
		}
	}
	return true
}

func waitExecution(t testing.TB, c *client.Client, id, status string) *client.Execution {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var last *client.Execution
	for ctx.Err() == nil {
		x, err := c.GetExecution(ctx, id)
		if err == nil && x.Status == status {
			return x
		}
		last = x
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("execution %s never became %s (last %+v)", id, status, last)
	return nil
}

func waitVMStatus(t testing.TB, c *client.Client, id, status string) *client.VM {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var last *client.VM
	for ctx.Err() == nil {
		vm, err := c.GetVM(ctx, id)
		if err == nil && vm.Status == status {
			return vm
		}
		last = vm
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("vm %s never became %s (last %+v)", id, status, last)
	return nil
}
