//go:build linux

package firecracker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

type testEnv struct {
	dataDir, logDir, kernel, rootfs, bin string
}

// newEnv makes a data directory (short, for socket paths), a fake kernel and a sparse root filesystem template,
// and a wrapper script that runs the fake firecracker in the given modes.
func newEnv(t testing.TB, modes string) *testEnv {
	t.Helper()
	requireSpec(t)
	dir, err := os.MkdirTemp("", "fc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	e := &testEnv{
		dataDir: filepath.Join(dir, "d"), logDir: filepath.Join(dir, "log"),
		kernel: filepath.Join(dir, "vmlinux"), rootfs: filepath.Join(dir, "rootfs.ext4"),
		bin: filepath.Join(dir, "firecracker"),
	}
	if err := os.Mkdir(e.logDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(e.kernel, []byte("fake kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSparse(t, e.rootfs, 32<<20, map[int64]string{0: "superblock", 1 << 20: "inode table", 20 << 20: "data"})
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf("#!/bin/sh\nAE_FAKE_FC=1 AE_FAKE_SPEC=%q AE_FAKE_MODE=%q AE_FAKE_LOG=%q exec %q \"$@\"\n",
		testSpecPath, modes, e.logDir, self)
	if err := os.WriteFile(e.bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

func (e *testEnv) config() Config {
	return Config{
		FirecrackerBin: e.bin, KernelPath: e.kernel, RootfsPath: e.rootfs, DataDir: e.dataDir,
		WorkerID: "w1", ReadyTimeout: 10 * time.Second, StopTimeout: 2 * time.Second,
	}
}

func (e *testEnv) backend(t testing.TB, mod func(*Config)) *Backend {
	t.Helper()
	cfg := e.config()
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Nothing may outlive a test: delete every VM left (kills its process).
		vms, _ := b.ListVMs(context.Background())
		for _, v := range vms {
			_ = b.DeleteVM(context.Background(), v.ID)
		}
		_ = b.Close()
	})
	return b
}

// requests returns what the fake of VM id received, and fails the test on any spec violation.
func (e *testEnv) requests(t *testing.T, id string) []fakeRecord {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.logDir, id+".jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var out []fakeRecord
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r fakeRecord
		if err := json.Unmarshal(line, &r); err != nil {
			t.Fatalf("request log: %v", err)
		}
		if r.Violation != "" {
			t.Errorf("request does not conform to the Firecracker API spec: %s", r.Violation)
		}
		out = append(out, r)
	}
	return out
}

func writeSparse(t testing.TB, path string, size int64, data map[int64]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, s := range data {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func pidGone(pid int) bool {
	_, gone, err := vmproc.StartTime(pid)
	return err != nil || gone
}

// waitGone polls (bounded) until pid has exited.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !pidGone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("process %d still runs", pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestLifecycle(t *testing.T) {
	e := newEnv(t, "")
	b := e.backend(t, nil)
	ctx := ctxT(t, 60*time.Second)
	const id = "vm-life"

	inst, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, Name: "My VM", VCPUs: 2, MemoryMB: 256})
	if err != nil {
		t.Fatal(err)
	}
	if inst.State != vmm.StateCreated || inst.WorkerID != "w1" || inst.Image != e.rootfs {
		t.Fatalf("created instance %+v", inst)
	}
	if again, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, VCPUs: 2, MemoryMB: 256}); err != nil || again.ID != id {
		t.Fatalf("second CreateVM: %v, %+v", err, again)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, err := b.loadState(id)
	if err != nil {
		t.Fatal(err)
	}
	reqs := e.requests(t, id)
	var seq []string
	for _, r := range reqs {
		if r.Method != "GET" {
			seq = append(seq, r.Method+" "+r.Path)
		}
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d", r.Method, r.Path, r.Status)
		}
	}
	want := "PUT /machine-config,PUT /boot-source,PUT /drives/rootfs,PUT /vsock,PUT /actions"
	if got := strings.Join(seq, ","); got != want {
		t.Fatalf("API calls %s; want %s", got, want)
	}
	var mc machineConfig
	_ = json.Unmarshal(reqs[len(reqs)-5].Body, &mc)
	if mc.VCPUCount != 2 || mc.MemSizeMib != 256 {
		t.Errorf("machine config %+v", mc)
	}
	var bs bootSource
	_ = json.Unmarshal(reqs[len(reqs)-4].Body, &bs)
	if !strings.Contains(bs.BootArgs, "aetherium.hostname=my-vm -- --init") || !strings.Contains(bs.BootArgs, "reboot=k") {
		t.Errorf("boot args %q", bs.BootArgs)
	}
	var vs vsockDevice
	_ = json.Unmarshal(reqs[len(reqs)-2].Body, &vs)
	if vs.GuestCID != st.CID || vs.GuestCID < 3 || vs.UDSPath != st.VsockUDS {
		t.Errorf("vsock %+v, state cid %d", vs, st.CID)
	}

	// Starting a running VM only checks the agent.
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if n := len(e.requests(t, id)); n != len(reqs) {
		t.Errorf("second StartVM sent %d more requests", n-len(reqs))
	}
	res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"echo", "hello"}})
	if err != nil || res.ExitCode != 0 || string(res.Stdout) != "hello\n" {
		t.Fatalf("exec: %v %+v", err, res)
	}
	res, err = b.ExecuteCommand(ctx, id, agent.ExecRequest{Shell: "exit 3"})
	if err != nil || res.ExitCode != 3 {
		t.Fatalf("exec exit 3: %v %+v", err, res)
	}
	var out bytes.Buffer
	if res, err := b.ExecuteStream(ctx, id, agent.ExecRequest{Shell: "echo streamed"}, &out, nil); err != nil ||
		res.ExitCode != 0 || out.String() != "streamed\n" {
		t.Fatalf("stream: %v %+v %q", err, res, out.String())
	}
	if c, err := b.Agent(ctx, id); err != nil {
		t.Fatal(err)
	} else if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if inst, err := b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("status %v %+v", err, inst)
	}

	// Pause, resume, snapshot.
	if err := b.Pause(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.Resume(ctx, id); err != nil {
		t.Fatal(err)
	}
	snap, mem := filepath.Join(b.vmDir(id), "snap.state"), filepath.Join(b.vmDir(id), "snap.mem")
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotFull); err != nil {
		t.Fatal(err)
	}

	// Stop: the agent powers off.
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	if inst, err := b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateStopped {
		t.Fatalf("status after stop %v %+v", err, inst)
	}
	if _, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("exec in a stopped vm: %v; want ErrNotRunning", err)
	}
	if _, err := b.Agent(ctx, id); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("Agent of a stopped vm: %v", err)
	}
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatalf("second stop: %v", err)
	}
	for _, p := range []string{st.APISock, st.VsockUDS} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket %s left after stop: %v", p, err)
		}
	}

	// Restore from the snapshot, then run again.
	if err := b.LoadSnapshot(ctx, id, snap, mem); err != nil {
		t.Fatal(err)
	}
	if res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec after restore: %v", err)
	}
	e.requests(t, id) // every request so far conforms to the spec
	st2, _ := b.loadState(id)

	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st2.PID)
	if _, err := os.Stat(b.vmDir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm dir left: %v", err)
	}
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := b.GetVMStatus(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("status of deleted vm: %v", err)
	}
	if _, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("exec in deleted vm: %v", err)
	}
}

func TestCreateInvalid(t *testing.T) {
	e := newEnv(t, "")
	b := e.backend(t, nil)
	ctx := ctxT(t, 10*time.Second)
	for _, cfg := range []vmm.VMConfig{
		{ID: "a", VCPUs: 3}, {ID: "a", VCPUs: 34}, {ID: "a", MemoryMB: 8},
		{ID: "a", Image: "relative.ext4"}, {ID: "a", Image: "/nonexistent.ext4"},
	} {
		if _, err := b.CreateVM(ctx, cfg); !errors.Is(err, vmm.ErrInvalidConfig) {
			t.Errorf("CreateVM(%+v): %v; want ErrInvalidConfig", cfg, err)
		}
	}
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "../x"}); err == nil {
		t.Error("a path as id was accepted")
	}
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "b", WorkerID: "other"}); err == nil {
		t.Error("a vm of another worker was accepted")
	}
	if err := b.StartVM(ctx, "nope"); !errors.Is(err, vmm.ErrNotFound) {
		t.Errorf("start missing: %v", err)
	}
}

func TestStartNeverReady(t *testing.T) {
	e := newEnv(t, "noagent")
	b := e.backend(t, func(c *Config) { c.ReadyTimeout = 1 * time.Second })
	ctx := ctxT(t, 30*time.Second)
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "vm-dead"}); err != nil {
		t.Fatal(err)
	}
	err := b.StartVM(ctx, "vm-dead")
	if err == nil || !strings.Contains(err.Error(), "Kernel panic - not syncing") ||
		!strings.Contains(err.Error(), "not ready within 1s") {
		t.Fatalf("StartVM of a guest that never answers: %v; want the console tail and the timeout", err)
	}
	st, _ := b.loadState("vm-dead")
	if st.PID != 0 {
		t.Fatalf("state still names pid %d", st.PID)
	}
	for _, p := range b.procs {
		if !p.Exited() {
			t.Fatalf("firecracker %d still runs after the failed start", p.PID)
		}
	}
	inst, _ := b.GetVMStatus(ctx, "vm-dead")
	if inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "start failed") {
		t.Fatalf("status %+v", inst)
	}
	if _, err := os.Stat(st.APISock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket left: %v", err)
	}
	if err := b.DeleteVM(ctx, "vm-dead"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.vmDir("vm-dead")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("vm dir left after delete")
	}
}

func TestAPIFault(t *testing.T) {
	e := newEnv(t, "fault:/boot-source")
	b := e.backend(t, nil)
	ctx := ctxT(t, 30*time.Second)
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "vm-fault"}); err != nil {
		t.Fatal(err)
	}
	err := b.StartVM(ctx, "vm-fault")
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Fault != "fake fault on /boot-source" ||
		!strings.Contains(err.Error(), "PUT /boot-source: 400 Bad Request: fake fault on /boot-source") {
		t.Fatalf("StartVM: %v; want the fault message", err)
	}
	if len(b.procs) != 1 {
		t.Fatalf("procs %v", b.procs)
	}
	for _, p := range b.procs {
		select {
		case <-p.Done():
		case <-ctx.Done():
			t.Fatal("firecracker not killed after a failed start")
		}
	}
}

// TestStopFallback: a guest whose agent does not power off is killed after StopTimeout, without a Ctrl-Alt-Del
// step (the guest kernel has no i8042 keyboard driver to hear it).
func TestStopFallback(t *testing.T) {
	e := newEnv(t, "nopoweroff")
	b := e.backend(t, func(c *Config) { c.StopTimeout = 2 * time.Second })
	ctx := ctxT(t, 30*time.Second)
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "vm-stop"}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, "vm-stop"); err != nil {
		t.Fatal(err)
	}
	st, _ := b.loadState("vm-stop")
	start := time.Now()
	if err := b.StopVM(ctx, "vm-stop"); err != nil {
		t.Fatal(err)
	}
	t.Logf("stop of a guest whose agent refuses power-off took %s (StopTimeout 2s)", time.Since(start).Round(time.Millisecond))
	waitGone(t, st.PID)
	st2, _ := b.loadState("vm-stop")
	if st2.Detail != "stopped (killed)" {
		t.Fatalf("detail %q; want stopped (killed)", st2.Detail)
	}
	for _, r := range e.requests(t, "vm-stop") {
		if r.Path == "/actions" && strings.Contains(string(r.Body), "SendCtrlAltDel") {
			t.Error("SendCtrlAltDel was sent")
		}
	}
}

// TestOrphan: a second backend on the same data dir (a restarted worker) finds the VM from its state file and
// kills the process it did not start; a pid that was reused by another process is never taken for the VM.
func TestOrphan(t *testing.T) {
	e := newEnv(t, "")
	b1 := e.backend(t, nil)
	ctx := ctxT(t, 30*time.Second)
	if _, err := b1.CreateVM(ctx, vmm.VMConfig{ID: "vm-orphan"}); err != nil {
		t.Fatal(err)
	}
	if err := b1.StartVM(ctx, "vm-orphan"); err != nil {
		t.Fatal(err)
	}
	st, _ := b1.loadState("vm-orphan")

	b2 := e.backend(t, nil)
	vms, err := b2.ListVMs(ctx)
	if err != nil || len(vms) != 1 || vms[0].State != vmm.StateRunning {
		t.Fatalf("ListVMs after restart: %v %+v", err, vms)
	}
	if res, err := b2.ExecuteCommand(ctx, "vm-orphan", agent.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec through the adopted vm: %v", err)
	}
	other := e.backend(t, func(c *Config) { c.WorkerID = "w2" })
	if vms, _ := other.ListVMs(ctx); len(vms) != 0 {
		t.Fatalf("another worker lists %+v", vms)
	}
	if err := b2.DeleteVM(ctx, "vm-orphan"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)

	// Pid reuse: a state file naming a live process that is not this VM's firecracker.
	if _, err := b2.CreateVM(ctx, vmm.VMConfig{ID: "vm-reuse"}); err != nil {
		t.Fatal(err)
	}
	st3, _ := b2.loadState("vm-reuse")
	st3.PID, st3.Started = os.Getpid(), true
	st3.PIDStart, _, _ = vmproc.StartTime(os.Getpid())
	if err := b2.saveState(st3); err != nil {
		t.Fatal(err)
	}
	if inst, _ := b2.GetVMStatus(ctx, "vm-reuse"); inst.State != vmm.StateStopped {
		t.Fatalf("a reused pid counts as the vm: %+v", inst)
	}
	if err := b2.DeleteVM(ctx, "vm-reuse"); err != nil { // must not kill the test process
		t.Fatal(err)
	}
}

// testWorkerMain is a worker process for the worker-restart tests: it starts a VM with the fake, starts a
// background process in it, and reports the firecracker's pid.
func testWorkerMain() int {
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv("AE_FC_TEST_WORKER")), &cfg); err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	ctx := context.Background()
	b, err := New(ctx, cfg)
	if err == nil {
		_, err = b.CreateVM(ctx, vmm.VMConfig{ID: "vm-restart"})
	}
	if err == nil {
		err = b.StartVM(ctx, "vm-restart")
	}
	if err != nil {
		fmt.Println("ERR", err)
		return 1
	}
	st, _ := b.loadState("vm-restart")
	fmt.Println("READY", st.PID)
	select {} // until killed
}

// startTestWorker runs testWorkerMain with cfg in a child process, returns the firecracker pid it reports, and
// kills the child with SIGKILL.
func startAndKillTestWorker(t *testing.T, cfg Config) int {
	t.Helper()
	cfgJSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^$")
	cmd.Env = append(os.Environ(), "AE_FC_TEST_WORKER="+string(cfgJSON))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "READY ") {
		t.Fatalf("worker: %q %v", line, err)
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "READY ")))
	if pid <= 0 || pidGone(pid) {
		t.Fatalf("firecracker pid %d not running", pid)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	return pid
}

// fakesOf lists the fake firecracker processes of VM id under dataDir.
func fakesOf(t *testing.T, dataDir, id string) []vmproc.Found {
	t.Helper()
	found, err := vmproc.Scan(func(args []string) bool {
		return vmproc.HasArgPair(args, "--id", func(v string) bool { return v == id }) &&
			vmproc.HasArgPair(args, "--api-sock", func(v string) bool { return strings.HasPrefix(v, dataDir+"/") })
	})
	if err != nil {
		t.Fatal(err)
	}
	return found
}

// TestWorkerKilledVMsAreAdopted: a worker killed with SIGKILL leaves its firecracker processes running (they run
// detached, with no parent-death signal); the next worker adopts the same process: the VM is running, exec works,
// nothing runs twice, and a delete leaves nothing.
func TestWorkerKilledVMsAreAdopted(t *testing.T) {
	e := newEnv(t, "")
	cfg := e.config()
	cfg.InstallationID = "inst0001"
	pid := startAndKillTestWorker(t, cfg)
	time.Sleep(200 * time.Millisecond) // a parent-death signal, if any, would have killed it by now
	if pidGone(pid) {
		t.Fatalf("firecracker %d died with its worker", pid)
	}
	if sid, err := unix.Getsid(pid); err != nil || sid != pid {
		t.Fatalf("firecracker %d is not the leader of its own session (sid %d, %v)", pid, sid, err)
	}
	if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil ||
		!bytes.Contains(env, []byte("AETHERIUM_INSTALLATION_ID=inst0001\x00")) {
		t.Fatalf("firecracker %d is not labelled with the installation id (%v)", pid, err)
	}

	b := e.backend(t, func(c *Config) { c.InstallationID = "inst0001" })
	ctx := ctxT(t, 20*time.Second)
	inst, err := b.GetVMStatus(ctx, "vm-restart")
	if err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("after the worker died: %v %+v, want the vm running", err, inst)
	}
	st, _ := b.loadState("vm-restart")
	if st.PID != pid || st.InstallationID != "inst0001" {
		t.Fatalf("state names pid %d, installation %q; want the same process %d of inst0001", st.PID, st.InstallationID, pid)
	}
	res, err := b.ExecuteCommand(ctx, "vm-restart", agent.ExecRequest{Argv: []string{"echo", "adopted"}})
	if err != nil || strings.TrimSpace(string(res.Stdout)) != "adopted" {
		t.Fatalf("exec in the adopted vm: %+v %v", res, err)
	}
	if vms, _ := b.ListVMs(ctx); len(vms) != 1 || vms[0].State != vmm.StateRunning {
		t.Fatalf("ListVMs after adoption: %+v", vms)
	}
	if f := fakesOf(t, e.dataDir, "vm-restart"); len(f) != 1 || f[0].PID != pid {
		t.Fatalf("firecracker processes of the vm: %+v, want only %d", f, pid)
	}
	// A retried start finds it running and starts nothing.
	if err := b.StartVM(ctx, "vm-restart"); err != nil {
		t.Fatal(err)
	}
	if f := fakesOf(t, e.dataDir, "vm-restart"); len(f) != 1 {
		t.Fatalf("a retried start after adoption made a second process: %+v", f)
	}
	if err := b.DeleteVM(ctx, "vm-restart"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, pid)
	if entries, _ := os.ReadDir(filepath.Join(e.dataDir, "vms")); len(entries) != 0 {
		t.Fatalf("left after delete: %v", entries)
	}
}

// TestDieWithWorker: with DieWithWorker a worker killed with SIGKILL takes its firecracker processes with it
// (Pdeathsig), and a new worker finds the VM stopped, says why, and cleans it up.
func TestDieWithWorker(t *testing.T) {
	e := newEnv(t, "")
	cfg := e.config()
	cfg.DieWithWorker = true
	pid := startAndKillTestWorker(t, cfg)
	waitGone(t, pid)

	b := e.backend(t, nil)
	ctx := ctxT(t, 10*time.Second)
	inst, err := b.GetVMStatus(ctx, "vm-restart")
	if err != nil || inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "is gone") {
		t.Fatalf("after the worker died: %v %+v, want stopped with the reason", err, inst)
	}
	if err := b.DeleteVM(ctx, "vm-restart"); err != nil {
		t.Fatal(err)
	}
}

// instanceStarted reports whether the fake of VM id got InstanceStart (the start then waits for the agent).
func instanceStarted(e *testEnv, id string) bool {
	data, _ := os.ReadFile(filepath.Join(e.logDir, id+".jsonl"))
	return bytes.Contains(data, []byte("InstanceStart"))
}

// TestDeleteCancelsStart: a delete during a start that waits for a guest that never answers returns at once,
// the start fails saying why, and nothing is left: no process, no directory.
func TestDeleteCancelsStart(t *testing.T) {
	e := newEnv(t, "noagent")
	b := e.backend(t, func(c *Config) { c.ReadyTimeout = 2 * time.Minute })
	ctx := ctxT(t, time.Minute)
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "vm-cancel"}); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- b.StartVM(ctx, "vm-cancel") }()
	// Wait until the start waits for the agent (the process runs and is recorded).
	var pid int
	for deadline := time.Now().Add(20 * time.Second); pid == 0; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the start never launched firecracker")
		}
		if st, err := b.loadState("vm-cancel"); err == nil && st.PID != 0 && instanceStarted(e, "vm-cancel") {
			pid = st.PID
		}
	}
	t0 := time.Now()
	if err := b.DeleteVM(ctx, "vm-cancel"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	err := <-started
	if !errors.Is(err, vmproc.ErrDeleting) {
		t.Fatalf("StartVM = %v, want ErrDeleting", err)
	}
	if took > 30*time.Second {
		t.Fatalf("delete waited %s for the start", took)
	}
	t.Logf("delete during start returned in %s", took.Round(time.Millisecond))
	waitGone(t, pid)
	if _, err := os.Stat(b.vmDir("vm-cancel")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm directory left: %v", err)
	}
	if f := fakesOf(t, e.dataDir, "vm-cancel"); len(f) != 0 {
		t.Fatalf("processes left: %+v", f)
	}
	if n := b.vmLocks.Len(); n != 0 {
		t.Fatalf("%d per-vm locks kept after every operation ended", n)
	}
}

// TestCIDs: concurrent creates (two backends on one data dir, as two workers of one host) never share a CID,
// and a CID is free again only once its VM is deleted.
func TestCIDs(t *testing.T) {
	e := newEnv(t, "")
	b1, b2 := e.backend(t, nil), e.backend(t, nil)
	ctx := ctxT(t, 30*time.Second)
	const n = 12
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := b1
			if i%2 == 1 {
				b = b2
			}
			_, err := b.CreateVM(ctx, vmm.VMConfig{ID: fmt.Sprintf("vm-%d", i)})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	seen := map[uint32]string{}
	for i := range n {
		st, err := b1.loadState(fmt.Sprintf("vm-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if st.CID < DefaultFirstCID {
			t.Errorf("%s has reserved CID %d", st.ID, st.CID)
		}
		if other, dup := seen[st.CID]; dup {
			t.Errorf("%s and %s share CID %d", st.ID, other, st.CID)
		}
		seen[st.CID] = st.ID
	}
	freed, _ := b1.loadState("vm-4")
	if err := b1.DeleteVM(ctx, "vm-4"); err != nil {
		t.Fatal(err)
	}
	if _, err := b1.CreateVM(ctx, vmm.VMConfig{ID: "vm-new"}); err != nil {
		t.Fatal(err)
	}
	st, _ := b1.loadState("vm-new")
	if st.CID != freed.CID {
		t.Errorf("new vm got CID %d; want the freed %d", st.CID, freed.CID)
	}
}

// TestIntegrationFirecracker boots a real guest. It needs AETHERIUM_FIRECRACKER_BIN, a working /dev/kvm, and
// AETHERIUM_FIRECRACKER_KERNEL and AETHERIUM_FIRECRACKER_ROOTFS (a rootfs with the agent at /sbin/aetherium-agent).
func TestIntegrationFirecracker(t *testing.T) {
	bin := os.Getenv("AETHERIUM_FIRECRACKER_BIN")
	if bin == "" {
		t.Skip("SKIPPING real Firecracker test: AETHERIUM_FIRECRACKER_BIN is not set (Firecracker cannot be obtained on this machine)")
	}
	if err := KVMAvailable(); err != nil {
		t.Skipf("SKIPPING real Firecracker test: /dev/kvm does not work: %v", err)
	}
	kernel, rootfs := os.Getenv("AETHERIUM_FIRECRACKER_KERNEL"), os.Getenv("AETHERIUM_FIRECRACKER_ROOTFS")
	if kernel == "" || rootfs == "" {
		t.Fatal("AETHERIUM_FIRECRACKER_KERNEL and AETHERIUM_FIRECRACKER_ROOTFS must be set with AETHERIUM_FIRECRACKER_BIN")
	}
	dir, err := os.MkdirTemp("", "fcreal")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	b, err := New(context.Background(), Config{FirecrackerBin: bin, KernelPath: kernel, RootfsPath: rootfs,
		DataDir: dir, WorkerID: "w1", ReadyTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := ctxT(t, 120*time.Second)
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "real", VCPUs: 1, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	defer b.DeleteVM(context.Background(), "real") //nolint:errcheck
	if err := b.StartVM(ctx, "real"); err != nil {
		t.Fatal(err)
	}
	res, err := b.ExecuteCommand(ctx, "real", agent.ExecRequest{Argv: []string{"uname", "-a"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("uname: %v %+v", err, res)
	}
	t.Logf("guest: %s", res.Stdout)
	if err := b.StopVM(ctx, "real"); err != nil {
		t.Fatal(err)
	}
}

// recordingNetwork stands in for the network manager (whose TAPs and rules need a network namespace, tested in
// internal/network): it hands out fixed attachments and records what the backend asks.
type recordingNetwork struct {
	mu       sync.Mutex
	attached map[string]network.Policy
	calls    []string
}

func (r *recordingNetwork) Attach(_ context.Context, id string, p network.Policy) (network.Attachment, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attached[id] = p
	r.calls = append(r.calls, "attach "+id)
	return network.Attachment{VMID: id, TAP: network.TAPName(id), MAC: "02:ae:ac:10:00:02",
		IP: netip.MustParseAddr("172.16.0.2"), PrefixLen: 24, Gateway: netip.MustParseAddr("172.16.0.1"),
		DNS: []netip.Addr{netip.MustParseAddr("172.16.0.1")}}, nil
}

func (r *recordingNetwork) Detach(_ context.Context, id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.attached, id)
	r.calls = append(r.calls, "detach "+id)
	return nil
}

func (r *recordingNetwork) Reconcile(_ context.Context, keep []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, "reconcile "+strings.Join(keep, ","))
	return nil
}

// TestNetworkInterface: with a network, the VM gets a network interface (validated against the API spec) on its
// TAP with its MAC, the kernel configures the address, a restarted backend re-attaches it with its policy, and
// delete detaches it.
func TestNetworkInterface(t *testing.T) {
	e := newEnv(t, "")
	net := &recordingNetwork{attached: map[string]network.Policy{}}
	b := e.backend(t, func(c *Config) { c.Network = net })
	ctx := ctxT(t, time.Minute)
	egress := &vmm.EgressPolicy{DenyCIDRs: []string{"198.51.100.0/24"}, AllowDomains: []string{"github.com"}}
	inst, err := b.CreateVM(ctx, vmm.VMConfig{ID: "vm-net", Egress: egress})
	if err != nil {
		t.Fatal(err)
	}
	if inst.Network == nil || inst.Network.IP != "172.16.0.2" {
		t.Fatalf("instance network %+v", inst.Network)
	}
	if err := b.StartVM(ctx, "vm-net"); err != nil {
		t.Fatal(err)
	}
	var ni *networkInterface
	var bs bootSource
	for _, r := range e.requests(t, "vm-net") {
		switch r.Path {
		case "/network-interfaces/eth0":
			ni = new(networkInterface)
			_ = json.Unmarshal(r.Body, ni)
		case "/boot-source":
			_ = json.Unmarshal(r.Body, &bs)
		}
	}
	if ni == nil || ni.HostDevName != network.TAPName("vm-net") || ni.GuestMAC != "02:ae:ac:10:00:02" {
		t.Fatalf("network interface %+v", ni)
	}
	if !strings.Contains(bs.BootArgs, "ip=172.16.0.2::172.16.0.1:255.255.255.0::eth0:off aetherium.dns=172.16.0.1") ||
		!strings.HasSuffix(bs.BootArgs, " -- --init") {
		t.Fatalf("boot args %q", bs.BootArgs)
	}
	// A new backend on the same data directory (a restarted worker) attaches the VM again with its policy.
	b2 := e.backend(t, func(c *Config) { c.Network = net })
	_ = b2
	net.mu.Lock()
	p := net.attached["vm-net"]
	calls := strings.Join(net.calls, "; ")
	net.mu.Unlock()
	if len(p.DenyCIDRs) != 1 || p.DenyCIDRs[0].String() != "198.51.100.0/24" || len(p.AllowDomains) != 1 {
		t.Fatalf("policy after restart %+v", p)
	}
	if !strings.Contains(calls, "attach vm-net; reconcile vm-net") {
		t.Fatalf("restart did not re-attach and reconcile: %s", calls)
	}
	if err := b.DeleteVM(ctx, "vm-net"); err != nil {
		t.Fatal(err)
	}
	net.mu.Lock()
	defer net.mu.Unlock()
	if _, ok := net.attached["vm-net"]; ok {
		t.Fatalf("delete did not detach: %s", strings.Join(net.calls, "; "))
	}
}
