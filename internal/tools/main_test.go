//go:build linux

package tools_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/image/imagetest"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/qemu"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest"
)

// Package-level fixtures, set once by TestMain.
var (
	guestSkip    string // why guest tests skip ("" when they run)
	kernelPath   string
	busyboxPath  string // a busybox template with the agent as init
	fixtureDir   string
	agentBinPath string
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	var err error
	if fixtureDir, err = os.MkdirTemp("", "aetools-"); err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(fixtureDir)
	guestSkip = vmmtest.QEMUMissing()
	if guestSkip == "" {
		kernelPath, _ = vmmtest.Kernel()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		_, tm, err := vmmtest.Template(ctx, fixtureDir, "toolstest")
		cancel()
		if err != nil {
			guestSkip = "cannot build the busybox template: " + err.Error()
		} else {
			busyboxPath = tm.Path
		}
		if guestSkip == "" {
			if agentBinPath, err = imagetest.BuildAgent(fixtureDir); err != nil {
				guestSkip = "cannot build the agent: " + err.Error()
			}
		}
	}
	if guestSkip != "" {
		if vmmtest.RequireServices() {
			fmt.Fprintln(os.Stderr, "AETHERIUM_REQUIRE_SERVICES=1 but QEMU guests cannot run:", guestSkip)
			return 1
		}
		fmt.Fprintln(os.Stderr, "WARNING: guest tests of internal/tools will be SKIPPED:", guestSkip)
	}
	return m.Run()
}

func requireGuests(t testing.TB) {
	t.Helper()
	if guestSkip != "" {
		t.Skip("SKIPPED: needs qemu-system-x86_64, a guest kernel and a Docker engine: " + guestSkip)
	}
}

// newBackend returns a TCG QEMU backend on a fresh data directory (KVM cannot run guests on these machines).
func newBackend(t testing.TB, rootfs string, mod func(*qemu.Config)) *qemu.Backend {
	t.Helper()
	requireGuests(t)
	dir, err := os.MkdirTemp("", "aetq-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := qemu.Config{KernelPath: kernelPath, RootfsPath: rootfs, DataDir: dir, WorkerID: "tools", Accel: qemu.AccelTCG,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))}
	if mod != nil {
		mod(&cfg)
	}
	b, err := qemu.New(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if vms, err := b.ListVMs(ctx); err == nil {
			for _, vm := range vms {
				_ = b.DeleteVM(ctx, vm.ID)
			}
		}
		_ = b.Close()
		_ = os.RemoveAll(dir)
	})
	return b
}

// boot creates and starts a VM and returns its agent client (owned by the backend).
func boot(t testing.TB, b *qemu.Backend, id string, mem int) *agentclient.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, Name: id, MemoryMB: mem}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	c, err := b.Agent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// sh runs a shell command in the guest and returns its output; a non-zero exit fails the test unless allowed.
func sh(t testing.TB, c *agentclient.Client, cmd string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	res, err := c.Exec(ctx, agent.ExecRequest{Shell: cmd, Env: map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "HOME": "/root"}})
	if err != nil {
		t.Fatalf("exec %q: %v", cmd, err)
	}
	return string(res.Stdout) + string(res.Stderr), res.ExitCode
}

func mustSh(t testing.TB, c *agentclient.Client, cmd string) string {
	t.Helper()
	out, code := sh(t, c, cmd)
	if code != 0 {
		t.Fatalf("%q exited %d: %s", cmd, code, out)
	}
	return out
}
