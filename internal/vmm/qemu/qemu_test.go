//go:build linux

package qemu

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
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

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
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

// childEnv makes the test binary act as a worker that boots a guest and then waits to be killed.
const childEnv = "AETHERIUM_QEMU_TEST_CHILD"

func crashChild() int {
	dir := os.Getenv(childEnv)
	b, err := New(context.Background(), Config{
		KernelPath: os.Getenv("CHILD_KERNEL"), RootfsPath: os.Getenv("CHILD_TEMPLATE"), DataDir: dir,
		WorkerID: "w1", Accel: AccelTCG,
	})
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	ctx := context.Background()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "crash"}); err != nil {
		fmt.Println("error", err)
		return 1
	}
	if err := b.StartVM(ctx, "crash"); err != nil {
		fmt.Println("error", err)
		return 1
	}
	st, _ := b.loadState("crash")
	fmt.Println("ready", st.PID)
	select {} // until killed
}

// TestWorkerKilledTakesItsGuestsAlong: a worker killed with SIGKILL takes its QEMU processes with it
// (Pdeathsig); the next backend on the same data directory reports the VM stopped and deletes it cleanly.
func TestWorkerKilledTakesItsGuestsAlong(t *testing.T) {
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
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ready ") {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("child worker: %q %v", line, err)
	}
	qemuPID, _ := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "ready ")))
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := vmproc.WaitGone(wctx, func() bool { _, gone, err := vmproc.StartTime(qemuPID); return err == nil && !gone }); err != nil {
		t.Fatalf("QEMU %d outlived its killed worker", qemuPID)
	}

	b, _ := newBackendAt(t, dir)
	inst, err := b.GetVMStatus(context.Background(), "crash")
	if err != nil || inst.State != vmm.StateStopped || !strings.Contains(inst.Detail, "gone") {
		t.Fatalf("after the crash: %+v, %v; want stopped, process gone", inst, err)
	}
	if err := b.DeleteVM(context.Background(), "crash"); err != nil {
		t.Fatal(err)
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "qemu"))
	if len(entries) != 0 {
		t.Fatalf("left in the data directory: %v", entries)
	}
}

func newBackendAt(t testing.TB, dir string) (*Backend, Config) {
	t.Helper()
	cfg := Config{KernelPath: kernelPath, RootfsPath: templatePath, DataDir: dir, WorkerID: "w1", Accel: AccelTCG}
	b, err := New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = b.Close(); assertNoQEMU(t, dir) })
	return b, cfg
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
