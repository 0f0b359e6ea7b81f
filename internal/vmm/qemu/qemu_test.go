//go:build linux

package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest/eventcheck"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// qemuOf lists the QEMU processes whose sockets live under dir.
func qemuOf(dir string) []vmproc.Found {
	found, _ := vmproc.Scan(func(args []string) bool {
		return vmproc.HasArgPair(args, "-chardev", func(v string) bool { return strings.Contains(v, "path="+dir+"/") })
	})
	return found
}

func assertNoQEMU(t testing.TB, dir string) {
	t.Helper()
	if f := qemuOf(dir); len(f) > 0 {
		for _, p := range f {
			_ = vmproc.KillGroup(p.PID)
		}
		t.Errorf("QEMU processes left behind under %s: %+v", dir, f)
	}
}

func run(t testing.TB, b *Backend, id string, argv ...string) *agent.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: argv})
	if err != nil {
		t.Fatalf("exec %v in %s: %v", argv, id, err)
	}
	return res
}

func boot(t testing.TB, b *Backend, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, Name: id}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
}

func TestLifecycle(t *testing.T) {
	b, cfg := newBackend(t, nil)
	ctx := context.Background()
	const id = "11111111-2222-3333-4444-555555555555"
	boot(t, b, id)

	inst, err := b.GetVMStatus(ctx, id)
	if err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("status = %+v, %v; want running", inst, err)
	}
	res := run(t, b, id, "uname", "-r")
	if res.ExitCode != 0 || !strings.HasPrefix(string(res.Stdout), "6.1.") {
		t.Fatalf("uname -r = %q (exit %d), want the guest kernel 6.1.x", res.Stdout, res.ExitCode)
	}
	host, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	if strings.TrimSpace(string(host)) == strings.TrimSpace(string(res.Stdout)) {
		t.Fatalf("uname -r in the guest is the host's (%q): not a VM?", host)
	}
	// The disk is bigger than the template, and the agent grew the filesystem to it at boot.
	// The agent grows it beside its start-up, so allow it a moment.
	grown := false
	var df string
	for deadline := time.Now().Add(30 * time.Second); !grown && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		df = string(run(t, b, id, "df", "-m", "/").Stdout)
		grown = dfAtLeast(df, DefaultDiskMB*9/10)
	}
	if !grown {
		t.Fatalf("root filesystem not grown to the %d MiB disk:\n%s", DefaultDiskMB, df)
	}
	if res := run(t, b, id, "sh", "-c", "exit 3"); res.ExitCode != 3 {
		t.Fatalf("exit code = %d, want 3", res.ExitCode)
	}
	if res := run(t, b, id, "hostname"); strings.TrimSpace(string(res.Stdout)) != "11111111-2222-3333-4444-555555555555" {
		t.Fatalf("hostname = %q", res.Stdout)
	}
	var out strings.Builder
	sres, err := b.ExecuteStream(ctx, id, agent.ExecRequest{Argv: []string{"sh", "-c", "for i in 1 2 3; do echo line$i; done"}}, &out, io.Discard)
	if err != nil || sres.ExitCode != 0 || out.String() != "line1\nline2\nline3\n" {
		t.Fatalf("stream: %q, %+v, %v", out.String(), sres, err)
	}
	// Several commands at once share the one virtio-serial port.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"echo", strconv.Itoa(i)}})
			if err == nil && strings.TrimSpace(string(r.Stdout)) != strconv.Itoa(i) {
				err = fmt.Errorf("echo %d printed %q", i, r.Stdout)
			}
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

	// The disk persists across a stop and a start.
	run(t, b, id, "sh", "-c", "echo kept > /root/persist && sync")
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	inst, _ = b.GetVMStatus(ctx, id)
	if inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "agent power-off") {
		t.Fatalf("after stop: %+v, want stopped by agent power-off", inst)
	}
	if _, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); !errors.Is(err, vmm.ErrNotRunning) {
		t.Fatalf("exec in a stopped vm: %v, want ErrNotRunning", err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if res := run(t, b, id, "cat", "/root/persist"); string(res.Stdout) != "kept\n" {
		t.Fatalf("after restart /root/persist = %q", res.Stdout)
	}

	dir := b.vmDir(id)
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm directory still there after delete: %v", err)
	}
	if _, err := b.GetVMStatus(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("status after delete: %v, want ErrNotFound", err)
	}
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatalf("second delete: %v", err)
	}
	assertNoQEMU(t, cfg.DataDir)
}

func fileSHA(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func TestFourVMsAtOnceHaveIsolatedDisks(t *testing.T) {
	b, _ := newBackend(t, nil)
	ctx := context.Background()
	before := fileSHA(t, templatePath)
	ids := make([]string, 4)
	var wg sync.WaitGroup
	errs := make(chan error, len(ids))
	for i := range ids {
		ids[i] = fmt.Sprintf("iso%d", i)
		wg.Add(1)
		go func(id string) {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
			defer cancel()
			if _, err := b.CreateVM(cctx, vmm.VMConfig{ID: id}); err != nil {
				errs <- err
				return
			}
			errs <- b.StartVM(cctx, id)
		}(ids[i])
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	run(t, b, ids[0], "sh", "-c", "echo mine > /marker && sync")
	if res := run(t, b, ids[0], "cat", "/marker"); string(res.Stdout) != "mine\n" {
		t.Fatalf("vm 0 cannot read its own file: %q", res.Stdout)
	}
	for _, id := range ids[1:] {
		if res := run(t, b, id, "test", "-e", "/marker"); res.ExitCode == 0 {
			t.Fatalf("vm %s sees the file vm %s wrote", id, ids[0])
		}
	}
	for _, id := range ids {
		if err := b.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if after := fileSHA(t, templatePath); after != before {
		t.Fatalf("the template changed: sha256 %s -> %s", before, after)
	}
}

func TestGuestThatNeverBootsLeavesNothing(t *testing.T) {
	b, cfg := newBackend(t, func(c *Config) { c.ExtraKernelArgs = "init=/no/such/init" })
	ctx := context.Background()
	const id = "noboot"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
		t.Fatal(err)
	}
	err := b.StartVM(ctx, id)
	if err == nil {
		t.Fatal("a guest without init started")
	}
	// The error carries the console's tail: the kernel's own reason.
	if !strings.Contains(err.Error(), "Kernel panic") || !strings.Contains(err.Error(), "qemu exit") {
		t.Fatalf("error does not show the kernel panic and QEMU's exit:\n%v", err)
	}
	assertNoQEMU(t, cfg.DataDir)
	st, lerr := b.loadState(id)
	if lerr != nil {
		t.Fatal(lerr)
	}
	for _, p := range []string{st.AgentSock, st.QMPSock} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("socket %s left after a failed start", p)
		}
	}
	if inst, _ := b.GetVMStatus(ctx, id); inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "start failed") {
		t.Fatalf("status after failed start: %+v", inst)
	}
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(b.vmDir(id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("vm directory left after delete")
	}
}

func TestReadyTimeoutKillsTheGuest(t *testing.T) {
	b, cfg := newBackend(t, func(c *Config) { c.ReadyTimeout = 300 * time.Millisecond })
	ctx := context.Background()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "slow"}); err != nil {
		t.Fatal(err)
	}
	err := b.StartVM(ctx, "slow")
	if err == nil || !strings.Contains(err.Error(), "not ready within 300ms") || !strings.Contains(err.Error(), "console:") {
		t.Fatalf("StartVM = %v, want a readiness timeout with the console", err)
	}
	assertNoQEMU(t, cfg.DataDir)
}

func TestBadInputChangesNothing(t *testing.T) {
	b, cfg := newBackend(t, nil)
	ctx := context.Background()
	for _, c := range []struct {
		cfg  vmm.VMConfig
		want string
	}{
		{vmm.VMConfig{ID: "../x"}, "invalid vm id"},
		{vmm.VMConfig{ID: "big", VCPUs: 64}, "vcpus"},
		{vmm.VMConfig{ID: "tiny", MemoryMB: 16}, "memory_mb"},
		{vmm.VMConfig{ID: "noimg", Image: "/no/such/template.ext4"}, "no such file"},
		{vmm.VMConfig{ID: "named", Image: "some-template"}, "absolute path"},
		{vmm.VMConfig{ID: "egress", Egress: &vmm.EgressPolicy{DenyCIDRs: []string{"10.0.0.0/8"}}}, "without a network"},
	} {
		_, err := b.CreateVM(ctx, c.cfg)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("CreateVM(%+v) = %v, want an error about %q", c.cfg, err, c.want)
		}
	}
	entries, _ := os.ReadDir(filepath.Join(cfg.DataDir, "qemu"))
	if len(entries) != 0 {
		t.Fatalf("bad input left %d entries in the data directory", len(entries))
	}
}

// childEnv makes the test binary act as a worker that boots a guest, leaves work running in it, and waits to
// be killed.
const childEnv = "AETHERIUM_QEMU_TEST_CHILD"

// childReport is what the child worker prints once its guest is busy.
type childReport struct {
	QEMUPID   int     `json:"qemu_pid"`
	BootID    string  `json:"boot_id"`
	Uptime    float64 `json:"uptime"`
	ProcessID string  `json:"process_id"` // the agent's id of the background process
	GuestPID  int     `json:"guest_pid"`
}

func crashChild() int {
	dir := os.Getenv(childEnv)
	fail := func(err error) int { fmt.Println("error", err); return 1 }
	b, err := New(context.Background(), Config{
		KernelPath: os.Getenv("CHILD_KERNEL"), RootfsPath: os.Getenv("CHILD_TEMPLATE"), DataDir: dir,
		WorkerID: "w1", Accel: AccelTCG, InstallationID: testInstallation,
	})
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "crash", MemoryMB: 256}); err != nil {
		return fail(err)
	}
	if err := b.StartVM(ctx, "crash"); err != nil {
		return fail(err)
	}
	res, err := b.ExecuteCommand(ctx, "crash", agent.ExecRequest{Argv: []string{"sh", "-c",
		"echo kept > /root/kept && sync && cat /proc/sys/kernel/random/boot_id && cut -d' ' -f1 /proc/uptime"}})
	if err != nil {
		return fail(err)
	}
	if res.ExitCode != 0 {
		return fail(fmt.Errorf("guest command: exit %d: %s", res.ExitCode, res.Stderr))
	}
	lines := strings.Fields(string(res.Stdout))
	if len(lines) != 2 {
		return fail(fmt.Errorf("guest command printed %q", res.Stdout))
	}
	rep := childReport{BootID: lines[0]}
	rep.Uptime, _ = strconv.ParseFloat(lines[1], 64)
	c, err := b.Agent(ctx, "crash")
	if err != nil {
		return fail(err)
	}
	proc, err := c.StartProcess(ctx, agent.ExecRequest{Argv: []string{"sleep", "600"}})
	if err != nil {
		return fail(err)
	}
	rep.ProcessID, rep.GuestPID = proc.ID, proc.PID
	st, _ := b.loadState("crash")
	rep.QEMUPID = st.PID
	out, _ := json.Marshal(rep)
	fmt.Println("ready", string(out))
	select {} // until killed
}

// TestWorkerKilledGuestsAreAdopted: a worker killed with SIGKILL while its guest runs a background process and
// holds a file leaves the QEMU running (detached, no parent-death signal); the next backend on the data directory
// adopts the same guest (same boot id, uptime went on): exec works, the file is there, the process still runs,
// nothing is started twice, and a delete leaves nothing.
func TestWorkerKilledGuestsAreAdopted(t *testing.T) {
	requireGuests(t)
	dir, err := os.MkdirTemp("", "aeq-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+dir, "CHILD_KERNEL="+kernelPath, "CHILD_TEMPLATE="+templatePath)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Whatever happens, no guest outlives the test.
		for _, p := range qemuOf(dir) {
			_ = vmproc.KillGroup(p.PID)
		}
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	var rep childReport
	if err != nil || !strings.HasPrefix(line, "ready ") || json.Unmarshal([]byte(strings.TrimPrefix(line, "ready ")), &rep) != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child worker: %q %v", line, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	time.Sleep(500 * time.Millisecond) // a parent-death signal, if any, would have ended QEMU by now
	if _, gone, err := vmproc.StartTime(rep.QEMUPID); err != nil || gone {
		t.Fatalf("QEMU %d died with its worker", rep.QEMUPID)
	}
	if sid, err := unix.Getsid(rep.QEMUPID); err != nil || sid != rep.QEMUPID {
		t.Fatalf("QEMU %d is not in a session of its own (sid %d, %v)", rep.QEMUPID, sid, err)
	}
	if args, _ := vmproc.Cmdline(rep.QEMUPID); !vmproc.HasArgPair(args, "-name", func(v string) bool {
		return v == "aetherium-"+testInstallation+"-crash"
	}) {
		t.Fatalf("QEMU's -name does not carry the installation id: %q", args)
	}

	b, _ := newBackendAt(t, dir, testInstallation)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	evs := b.Events(ctx)
	inst, err := b.GetVMStatus(ctx, "crash")
	if err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("after the worker died: %+v, %v; want running", inst, err)
	}
	if vms, _ := b.ListVMs(ctx); len(vms) != 1 || vms[0].State != vmm.StateRunning {
		t.Fatalf("ListVMs after adoption: %+v", vms)
	}
	res := run(t, b, "crash", "sh", "-c", "cat /root/kept; cat /proc/sys/kernel/random/boot_id; cut -d' ' -f1 /proc/uptime; kill -0 "+
		strconv.Itoa(rep.GuestPID)+" && echo alive")
	got := strings.Fields(string(res.Stdout))
	if len(got) != 4 || got[0] != "kept" || got[3] != "alive" {
		t.Fatalf("in the adopted guest: %q (exit %d, %s); want the file and the background process", res.Stdout, res.ExitCode, res.Stderr)
	}
	if got[1] != rep.BootID {
		t.Fatalf("boot id %s, was %s before the worker died: the guest rebooted", got[1], rep.BootID)
	}
	if up, _ := strconv.ParseFloat(got[2], 64); up <= rep.Uptime {
		t.Fatalf("uptime %s, was %.2f: the guest restarted", got[2], rep.Uptime)
	}
	c, err := b.Agent(ctx, "crash")
	if err != nil {
		t.Fatal(err)
	}
	procs, err := c.ListProcesses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range procs {
		found = found || (p.ID == rep.ProcessID && p.State == agent.ProcessRunning)
	}
	if !found {
		t.Fatalf("the background process %s is not running in the agent: %+v", rep.ProcessID, procs)
	}
	// A retried start finds it running: still one QEMU, the same.
	if err := b.StartVM(ctx, "crash"); err != nil {
		t.Fatal(err)
	}
	if f := qemuOf(dir); len(f) != 1 || f[0].PID != rep.QEMUPID {
		t.Fatalf("QEMU processes of the data directory: %+v, want only %d", f, rep.QEMUPID)
	}
	// Killed behind its back, the adopted QEMU (no child of this process: its parent was the dead worker) is
	// reported at once.
	if err := syscall.Kill(rep.QEMUPID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := eventcheck.Expect(t, evs, "crash", eventWithin)
	if want := "qemu process " + strconv.Itoa(rep.QEMUPID) + " exited"; !strings.HasPrefix(ev.Detail, want) {
		t.Fatalf("detail %q, want it to begin %q", ev.Detail, want)
	}
	if err := b.DeleteVM(ctx, "crash"); err != nil {
		t.Fatal(err)
	}
	assertNoQEMU(t, dir)
	entries, _ := os.ReadDir(filepath.Join(dir, "qemu"))
	if len(entries) != 0 {
		t.Fatalf("left in the data directory: %v", entries)
	}
	if n := b.vmLocks.Len(); n != 0 {
		t.Fatalf("%d per-vm locks kept", n)
	}
}

// TestVMGoneWhileNoWorkerWatched: a guest whose QEMU died while no worker ran is reported stopped with the reason
// by the next backend, and deleted cleanly.
func TestVMGoneWhileNoWorkerWatched(t *testing.T) {
	b, cfg := newBackend(t, nil)
	boot(t, b, "gone")
	st, err := b.loadState("gone")
	if err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if err := vmproc.KillGroup(st.PID); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := vmproc.WaitGone(wctx, func() bool { _, gone, err := vmproc.StartTime(st.PID); return err == nil && !gone }); err != nil {
		t.Fatal(err)
	}
	b2, _ := newBackendAt(t, cfg.DataDir, testInstallation)
	inst, err := b2.GetVMStatus(context.Background(), "gone")
	if err != nil || inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "is gone") {
		t.Fatalf("after the QEMU died unwatched: %+v, %v; want stopped, process gone", inst, err)
	}
	if err := b2.DeleteVM(context.Background(), "gone"); err != nil {
		t.Fatal(err)
	}
}

func newBackendAt(t testing.TB, dir, installation string) (*Backend, Config) {
	t.Helper()
	cfg := Config{KernelPath: kernelPath, RootfsPath: templatePath, DataDir: dir, WorkerID: "w1", Accel: AccelTCG,
		InstallationID: installation, DieWithWorker: true}
	b, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); assertNoQEMU(t, dir) })
	return b, cfg
}

// TestInstallationsLeaveEachOtherAlone: two installations on one host (two data directories, the same worker id,
// a VM of the same id in each) whose QEMUs are both orphans (no state file accounts for them): a backend of
// either installation reaps only its own, never the other's.
func TestInstallationsLeaveEachOtherAlone(t *testing.T) {
	a, acfg := newBackend(t, func(c *Config) { c.InstallationID = "insta" })
	b, bcfg := newBackend(t, func(c *Config) { c.InstallationID = "instb" })
	orphan := func(be *Backend) int {
		boot(t, be, "same-id")
		st, err := be.loadState("same-id")
		if err != nil {
			t.Fatal(err)
		}
		pid := st.PID
		st.PID, st.PIDStart = 0, 0 // as if its worker died before recording the process
		if err := be.saveState(st); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	apid, bpid := orphan(a), orphan(b)
	alive := func(pid int) bool { _, gone, err := vmproc.StartTime(pid); return err == nil && !gone }

	// The same data directory with another installation's id does not count as the installation either.
	wrong := acfg
	wrong.InstallationID = "instb"
	if w, err := New(context.Background(), wrong); err != nil {
		t.Fatal(err)
	} else {
		_ = w.Close()
	}
	if !alive(apid) || !alive(bpid) {
		t.Fatalf("a backend of another installation id reaped a QEMU (a alive %v, b alive %v)", alive(apid), alive(bpid))
	}
	a2, err := New(context.Background(), acfg)
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close()
	if alive(apid) || !alive(bpid) {
		t.Fatalf("installation a's backend: its orphan alive %v (want reaped), b's alive %v (want left)", alive(apid), alive(bpid))
	}
	b2, err := New(context.Background(), bcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if alive(bpid) {
		t.Fatal("installation b's backend left its own orphan")
	}
}

// TestDeleteCancelsStart: deleting a VM whose start waits for an agent that never answers returns promptly (not
// after the start's minutes-long wait), the start fails saying why, and nothing is left: process, directory,
// sockets.
func TestDeleteCancelsStart(t *testing.T) {
	// The agent listens on a socket inside the guest instead of the virtio-serial port: the guest runs, but never
	// answers the host.
	b, cfg := newBackend(t, func(c *Config) {
		c.ReadyTimeout = 5 * time.Minute
		c.ExtraKernelArgs = "aetherium.listen=unix:/run/nobody-listens.sock"
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "cancelme", MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	started := make(chan error, 1)
	go func() { started <- b.StartVM(ctx, "cancelme") }()
	var pid int
	for deadline := time.Now().Add(time.Minute); pid == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the start never launched QEMU")
		}
		if st, err := b.loadState("cancelme"); err == nil && st.PID != 0 {
			pid = st.PID
		}
	}
	time.Sleep(2 * time.Second) // well into the wait for the agent
	t0 := time.Now()
	if err := b.DeleteVM(ctx, "cancelme"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	var err error
	select {
	case err = <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("StartVM still waits after the delete")
	}
	if !errors.Is(err, vmproc.ErrDeleting) {
		t.Fatalf("StartVM = %v, want ErrDeleting", err)
	}
	t.Logf("delete during start returned in %s", took.Round(time.Millisecond))
	if took > time.Minute {
		t.Fatalf("delete waited %s for the start", took)
	}
	if _, gone, err := vmproc.StartTime(pid); err == nil && !gone {
		t.Fatalf("QEMU %d left after the delete", pid)
	}
	assertNoQEMU(t, cfg.DataDir)
	if _, err := os.Stat(b.vmDir("cancelme")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm directory left: %v", err)
	}
	if n := b.vmLocks.Len(); n != 0 {
		t.Fatalf("%d per-vm locks kept", n)
	}
}

// TestOrphanIsReaped: a QEMU that no state file accounts for (its worker died between starting it and recording
// it) is killed by the next backend on the data directory.
func TestOrphanIsReaped(t *testing.T) {
	b, cfg := newBackend(t, nil)
	boot(t, b, "orphan")
	st, err := b.loadState("orphan")
	if err != nil {
		t.Fatal(err)
	}
	pid := st.PID
	st.PID, st.PIDStart = 0, 0 // as if the worker died before recording the process
	if err := b.saveState(st); err != nil {
		t.Fatal(err)
	}
	b2, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if _, gone, err := vmproc.StartTime(pid); err == nil && !gone {
		t.Fatalf("orphaned QEMU %d survived a new backend", pid)
	}
}

// TestProbeBoot checks the probe's verdict on real boots: the guest kernel reaches its root-mount panic under TCG
// (what the KVM probe requires of KVM), and a file that is not a kernel fails. On this machine's kind, KVM itself
// only runs special guests, so ProbeKVM's answer is logged, not asserted.
func TestProbeBoot(t *testing.T) {
	requireGuests(t)
	bin, _ := exec.LookPath(DefaultBinary)
	tsc, err := hostTSCKHz()
	if err != nil {
		t.Fatal(err)
	}
	if err := probeBoot(context.Background(), bin, kernelPath, "tcg", "qemu64,+arat",
		"tsc_early_khz="+strconv.Itoa(tsc)+" tsc=reliable"); err != nil {
		t.Fatalf("the guest kernel failed the probe under TCG: %v", err)
	}
	if err := probeBoot(context.Background(), bin, "/etc/hostname", "tcg", "qemu64", ""); err == nil {
		t.Fatal("the probe passed with /etc/hostname as the kernel")
	}
	start := time.Now()
	err = ProbeKVM(context.Background(), bin, kernelPath)
	t.Logf("ProbeKVM on this host: %v (%s)", err, time.Since(start).Round(time.Millisecond))
}

// dfAtLeast reports whether `df -m` output shows a filesystem of at least mib MiB.
func dfAtLeast(out string, mib int64) bool {
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) < 2 {
		return false
	}
	f := strings.Fields(lines[len(lines)-1])
	if len(f) < 2 {
		return false
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	return err == nil && n >= mib
}
