//go:build linux

package qemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm/vmmtest"
)

// testInstallation is the installation id of the tests' backends.
const testInstallation = "qemutest01"

// Package-level fixtures, set once by TestMain.
var (
	skipReason   string // why guest tests skip ("" when they run)
	kernelPath   string
	templatePath string
	fixtureDir   string
)

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(crashChild())
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	var err error
	if fixtureDir, err = os.MkdirTemp("", "aeq-"); err != nil {
		fmt.Fprintln(os.Stderr, "temp dir:", err)
		return 1
	}
	defer os.RemoveAll(fixtureDir)
	skipReason = vmmtest.QEMUMissing()
	if skipReason == "" {
		kernelPath, _ = vmmtest.Kernel()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		_, m, err := vmmtest.Template(ctx, fixtureDir, "qemutest")
		cancel()
		if err != nil {
			skipReason = "cannot build a template: " + err.Error()
		} else {
			templatePath = m.Path
		}
	}
	if skipReason != "" {
		if vmmtest.RequireServices() {
			fmt.Fprintln(os.Stderr, "AETHERIUM_REQUIRE_SERVICES=1 but QEMU guests cannot run:", skipReason)
			return 1
		}
		fmt.Fprintln(os.Stderr, "WARNING: QEMU guest tests will be SKIPPED:", skipReason)
	}
	return m.Run()
}

func requireGuests(t testing.TB) {
	t.Helper()
	if skipReason != "" {
		t.Skip("SKIPPED: needs qemu-system-x86_64, a guest kernel and a Docker engine: " + skipReason)
	}
}

// newBackend returns a TCG backend on a fresh data directory (KVM cannot run ordinary guests on the CI machines;
// the probe is tested on its own).
func newBackend(t testing.TB, mod func(*Config)) (*Backend, Config) {
	t.Helper()
	requireGuests(t)
	dir, err := os.MkdirTemp("", "aeq-")
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		KernelPath: kernelPath, RootfsPath: templatePath, DataDir: dir, WorkerID: "w1", Accel: AccelTCG,
		InstallationID: testInstallation, DieWithWorker: true, // a crashed test run leaves no guest behind
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	if mod != nil {
		mod(&cfg)
	}
	b, err := New(context.Background(), cfg)
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
		assertNoQEMU(t, dir)
		_ = os.RemoveAll(dir)
	})
	return b, cfg
}
