//go:build linux

package firecracker

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
)

// TestSnapshotCapturesDiskAndRestoresIt: the disk is copied at the snapshot's pause, the guest's later writes are
// undone by a restore, the logger is set again before /snapshot/load (the only resource a fresh process may have
// before it), and a load into a running VM fails instead of doing nothing.
func TestSnapshotCapturesDiskAndRestoresIt(t *testing.T) {
	e := newEnv(t, "")
	b := e.backend(t, func(c *Config) { c.FirecrackerLogLevel = "Info" })
	ctx := ctxT(t, time.Minute)
	const id = "vm-snap"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, _ := b.loadState(id)
	writeAt := func(s string) {
		t.Helper()
		f, err := os.OpenFile(st.Disk, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte(s), 4<<20); err != nil {
			t.Fatal(err)
		}
	}
	readAt := func() string {
		t.Helper()
		f, err := os.Open(st.Disk)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 6)
		if _, err := f.ReadAt(buf, 4<<20); err != nil {
			t.Fatal(err)
		}
		return string(buf)
	}
	writeAt("before")
	snap, mem := filepath.Join(b.vmDir(id), "a.state"), filepath.Join(b.vmDir(id), "a.mem")
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotFull); err != nil {
		t.Fatal(err)
	}
	writeAt("after!") // the guest goes on writing after resume

	err := b.LoadSnapshot(ctx, id, snap, mem)
	if !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "stop it first") {
		t.Fatalf("LoadSnapshot into a running vm: %v; want a clear refusal", err)
	}
	if res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("the running vm was disturbed by the refused load: %v", err)
	}
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	n := len(e.requests(t, id))
	if err := b.LoadSnapshot(ctx, id, snap, mem); err != nil {
		t.Fatal(err)
	}
	if got := readAt(); got != "before" {
		t.Fatalf("disk after restore holds %q; want the snapshot's %q", got, "before")
	}
	var seq []string
	for _, r := range e.requests(t, id)[n:] {
		if r.Method != "GET" {
			seq = append(seq, r.Method+" "+r.Path)
		}
		if r.Status >= 300 {
			t.Errorf("%s %s answered %d", r.Method, r.Path, r.Status)
		}
	}
	if got := strings.Join(seq, ","); got != "PUT /logger,PUT /snapshot/load" {
		t.Fatalf("restore sent %s; want the logger, then the load", got)
	}
	if res, err := b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec after restore: %v", err)
	}
}

// TestDiffSnapshots: a Diff snapshot needs dirty page tracking (refused without it, tracked in machine-config
// with it), and loading one is refused with the reason: merging a diff onto its base is not implemented.
func TestDiffSnapshots(t *testing.T) {
	e := newEnv(t, "")
	ctx := ctxT(t, time.Minute)
	plain := e.backend(t, nil)
	if _, err := plain.CreateVM(ctx, vmm.VMConfig{ID: "vm-nodiff"}); err != nil {
		t.Fatal(err)
	}
	if err := plain.StartVM(ctx, "vm-nodiff"); err != nil {
		t.Fatal(err)
	}
	dir := plain.vmDir("vm-nodiff")
	if err := plain.CreateSnapshot(ctx, "vm-nodiff", filepath.Join(dir, "d.state"), filepath.Join(dir, "d.mem"),
		SnapshotDiff); !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "TrackDirtyPages") {
		t.Fatalf("diff snapshot without dirty page tracking: %v", err)
	}

	b := e.backend(t, func(c *Config) { c.TrackDirtyPages = true })
	const id = "vm-diff"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	for _, r := range e.requests(t, id) {
		if r.Path == "/machine-config" && !bytes.Contains(r.Body, []byte(`"track_dirty_pages":true`)) {
			t.Fatalf("machine-config without dirty page tracking: %s", r.Body)
		}
	}
	snap, mem := filepath.Join(b.vmDir(id), "d.state"), filepath.Join(b.vmDir(id), "d.mem")
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotDiff); err != nil {
		t.Fatal(err)
	}
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	err := b.LoadSnapshot(ctx, id, snap, mem)
	if !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "only Full snapshots") {
		t.Fatalf("diff load: %v; want a refusal that says why", err)
	}
	if inst, _ := b.GetVMStatus(ctx, id); inst.State != vmm.StateStopped {
		t.Fatalf("a refused load started the vm: %+v", inst)
	}
	// A snapshot of another VM, or one without its manifest, is refused too.
	if err := b.LoadSnapshot(ctx, "vm-other", snap, mem); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("load of another vm's snapshot: %v", err)
	}
	if err := os.Remove(snapshotManifestPath(snap)); err != nil {
		t.Fatal(err)
	}
	if err := b.LoadSnapshot(ctx, id, snap, mem); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("load without a manifest: %v", err)
	}
	e.requests(t, id)
}
