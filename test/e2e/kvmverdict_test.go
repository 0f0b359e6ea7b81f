package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm/qemu"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest"
)

// kvmVerdict is the QEMU backend's KVM probe, made once for the whole test binary. Every server these tests start
// gets a fresh data directory, and without a remembered verdict each QEMU server would boot its own probe guest
// (up to 20 s on a host whose KVM cannot run guests, as on CI's machines) before it serves. The verdict is the
// product's own file (qemu.KVMVerdictFile, keyed by boot, host kernel, QEMU binary and guest kernel), so a server
// still probes for itself whenever its inputs differ from the ones probed here.
var kvmVerdict struct {
	once    sync.Once
	verdict []byte // nil when there is nothing to share
}

// seedKVMVerdict copies the shared verdict into the data directory of a server about to start with the QEMU
// backend (the last AETHERIUM_BACKEND and AETHERIUM_DATA_DIR in env, as the server reads them).
func seedKVMVerdict(t testing.TB, env []string) {
	t.Helper()
	var backend, dataDir string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "AETHERIUM_BACKEND="); ok {
			backend = v
		} else if v, ok := strings.CutPrefix(kv, "AETHERIUM_DATA_DIR="); ok {
			dataDir = v
		}
	}
	if backend != "qemu" || dataDir == "" {
		return
	}
	kvmVerdict.once.Do(func() {
		kernel, err := vmmtest.Kernel()
		if err != nil {
			return
		}
		dir := filepath.Join(binDir, "kvm-probe") // removed with the binaries when the test binary ends
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		_, probeErr := qemu.CachedProbeKVM(ctx, dir, qemu.DefaultBinary, kernel)
		t.Logf("kvm probe for every QEMU server of this test binary: %v", probeErr)
		kvmVerdict.verdict, _ = os.ReadFile(filepath.Join(dir, qemu.KVMVerdictFile))
	})
	if kvmVerdict.verdict == nil {
		return
	}
	err := os.MkdirAll(dataDir, 0o700)
	if err == nil {
		err = os.WriteFile(filepath.Join(dataDir, qemu.KVMVerdictFile), kvmVerdict.verdict, 0o600)
	}
	if err != nil {
		t.Logf("kvm verdict not shared (the server probes for itself): %v", err)
	}
}
