//go:build linux

package qemu

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCachedProbeKVM checks that the verdict is remembered per key and probed again when an input changes. The
// QEMU binary is a script that "boots" to the root-mount panic and counts its runs; whether /dev/kvm lets the
// probe get as far as running it depends on the host, and both outcomes must be remembered alike.
func TestCachedProbeKVM(t *testing.T) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	bin := filepath.Join(dir, "qemu-system-x86_64")
	script := "#!/bin/sh\necho run >> " + runs + "\necho 'Kernel panic - not syncing: VFS: Unable to mount root fs'\n"
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	kernel := filepath.Join(dir, "vmlinux")
	if err := os.WriteFile(kernel, []byte("kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	countRuns := func() int {
		b, _ := os.ReadFile(runs)
		return strings.Count(string(b), "run")
	}
	ctx := context.Background()

	cached, first := CachedProbeKVM(ctx, dir, bin, kernel)
	if cached {
		t.Fatal("the first probe claims to be remembered")
	}
	ran := countRuns()
	t.Logf("first probe: err=%v, probe guest runs=%d", first, ran)
	for i := 0; i < 3; i++ {
		cached, err := CachedProbeKVM(ctx, dir, bin, kernel)
		if !cached || (err == nil) != (first == nil) {
			t.Fatalf("repeat %d: cached=%v err=%v; first verdict %v", i, cached, err, first)
		}
		if err != nil && !strings.Contains(err.Error(), first.Error()) {
			t.Fatalf("remembered error %q lost the first one %q", err, first)
		}
	}
	if countRuns() != ran {
		t.Fatalf("remembered verdicts still ran the probe guest (%d runs, want %d)", countRuns(), ran)
	}

	// A new guest kernel is probed again.
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(kernel, later, later); err != nil {
		t.Fatal(err)
	}
	if cached, _ := CachedProbeKVM(ctx, dir, bin, kernel); cached {
		t.Fatal("a changed guest kernel reused the old verdict")
	}
	// The doctor's fresh verdict replaces the remembered one.
	if err := RememberKVM(dir, bin, kernel, errors.New("doctor says no")); err != nil {
		t.Fatal(err)
	}
	if cached, err := CachedProbeKVM(ctx, dir, bin, kernel); !cached || err == nil || !strings.Contains(err.Error(), "doctor says no") {
		t.Fatalf("after RememberKVM: cached=%v err=%v", cached, err)
	}
	// A corrupt file is probed over, not trusted.
	if err := os.WriteFile(filepath.Join(dir, KVMVerdictFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if cached, _ := CachedProbeKVM(ctx, dir, bin, kernel); cached {
		t.Fatal("a corrupt verdict file was trusted")
	}
}
