//go:build linux

package firecracker

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
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
// with it); it cannot be loaded as it is, only once merged onto its parent (RebaseSnapshot: the base's memory with
// the diff's pages over it), and only onto its parent.
func TestDiffSnapshots(t *testing.T) {
	e := newEnv(t, "")
	ctx := ctxT(t, time.Minute)
	plain := e.backend(t, nil)
	if _, err := plain.CreateVM(ctx, vmm.VMConfig{ID: "vm-nodiff", MemoryMB: 64}); err != nil {
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
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, MemoryMB: 64}); err != nil {
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
	vd := b.vmDir(id)
	path := func(name string) (string, string) {
		return filepath.Join(vd, name+".state"), filepath.Join(vd, name+".mem")
	}
	boot, bootMem := path("boot")
	base, baseMem := path("base")
	diff, diffMem := path("diff")
	for _, s := range []struct {
		state, mem string
		typ        SnapshotType
	}{{boot, bootMem, SnapshotDiff}, {base, baseMem, SnapshotFull}, {diff, diffMem, SnapshotDiff}} {
		if err := b.CreateSnapshot(ctx, id, s.state, s.mem, s.typ); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	err := b.LoadSnapshot(ctx, id, diff, diffMem)
	if !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "only Full snapshots") ||
		!strings.Contains(err.Error(), base) {
		t.Fatalf("load of a diff: %v; want a refusal that names its parent", err)
	}
	if inst, _ := b.GetVMStatus(ctx, id); inst.State != vmm.StateStopped {
		t.Fatalf("a refused load started the vm: %+v", inst)
	}
	// Only onto its parent, and not a diff made after a fresh boot.
	if err := b.RebaseSnapshot(ctx, boot, diff); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("rebase onto another snapshot: %v", err)
	}
	if err := b.RebaseSnapshot(ctx, base, boot); !errors.Is(err, vmm.ErrInvalidConfig) ||
		!strings.Contains(err.Error(), "fresh boot") {
		t.Fatalf("rebase of a diff made after boot: %v", err)
	}
	// A parent replaced by a later snapshot at its path is not the parent any more.
	var baseMan snapshotManifest
	if err := vmproc.ReadJSON(snapshotManifestPath(base), &baseMan); err != nil {
		t.Fatal(err)
	}
	replaced := baseMan
	replaced.CreatedAt = replaced.CreatedAt.Add(time.Second)
	if err := vmproc.WriteJSON(snapshotManifestPath(base), replaced); err != nil {
		t.Fatal(err)
	}
	if err := b.RebaseSnapshot(ctx, base, diff); !errors.Is(err, vmm.ErrInvalidConfig) || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("rebase onto a replaced parent: %v", err)
	}
	if err := vmproc.WriteJSON(snapshotManifestPath(base), baseMan); err != nil {
		t.Fatal(err)
	}
	if err := b.RebaseSnapshot(ctx, base, diff); err != nil {
		t.Fatal(err)
	}
	page := func(file string, n int64) string {
		t.Helper()
		p, err := readPage(file, n)
		if err != nil {
			t.Fatal(err)
		}
		return string(bytes.TrimRight(p, "\x00"))
	}
	// base is snapshot 2 (pages 0 and 256), diff snapshot 3 (page 256 only).
	if p0, p256 := page(diffMem, 0), page(diffMem, 256); p0 != "snapshot 2" || p256 != "snapshot 3" {
		t.Fatalf("merged memory: page 0 %q, page 256 %q; want the base's page 0 and the diff's page 256", p0, p256)
	}
	if p256 := page(baseMem, 256); p256 != "snapshot 2" {
		t.Fatalf("the base changed: page 256 %q", p256)
	}
	if err := b.LoadSnapshot(ctx, id, diff, diffMem); err != nil {
		t.Fatalf("load of the merged diff: %v", err)
	}
	var load snapshotLoad
	for _, r := range e.requests(t, id) {
		if r.Path == "/snapshot/load" {
			_ = json.Unmarshal(r.Body, &load)
		}
	}
	if !load.EnableDiffSnapshots {
		t.Error("the restored vm has no dirty page tracking: it could not make diffs")
	}
	// The next diff is relative to the loaded snapshot.
	next, nextMem := path("next")
	if err := b.CreateSnapshot(ctx, id, next, nextMem, SnapshotDiff); err != nil {
		t.Fatal(err)
	}
	var man snapshotManifest
	if err := vmproc.ReadJSON(snapshotManifestPath(next), &man); err != nil || man.Parent != diff || man.ParentCreatedAt.IsZero() {
		t.Fatalf("diff after a load: parent %q (%v); want %s", man.Parent, err, diff)
	}

	// A snapshot of another VM, or one without its manifest, is refused.
	if err := b.LoadSnapshot(ctx, "vm-other", base, baseMem); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("load of another vm's snapshot: %v", err)
	}
	if err := os.Remove(snapshotManifestPath(base)); err != nil {
		t.Fatal(err)
	}
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.LoadSnapshot(ctx, id, base, baseMem); !errors.Is(err, vmm.ErrInvalidConfig) {
		t.Fatalf("load without a manifest: %v", err)
	}
	e.requests(t, id)
}

// TestFailedRestoreKeepsTheDisk: a restore that fails (here Firecracker refuses the load) leaves the VM with the
// disk it had, not the snapshot's: nothing the guest wrote since the snapshot is lost.
func TestFailedRestoreKeepsTheDisk(t *testing.T) {
	e := newEnv(t, "fault:/snapshot/load")
	b := e.backend(t, nil)
	ctx := ctxT(t, time.Minute)
	const id = "vm-badload"
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
		t.Fatal(err)
	}
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, _ := b.loadState(id)
	mark := func(s string) {
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
	mark("before")
	snap, mem := filepath.Join(b.vmDir(id), "a.state"), filepath.Join(b.vmDir(id), "a.mem")
	if err := b.CreateSnapshot(ctx, id, snap, mem, SnapshotFull); err != nil {
		t.Fatal(err)
	}
	mark("after!")
	if err := b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.LoadSnapshot(ctx, id, snap, mem); err == nil || !strings.Contains(err.Error(), "fake fault") {
		t.Fatalf("LoadSnapshot: %v; want the fault", err)
	}
	f, err := os.Open(st.Disk)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 6)
	if _, err := f.ReadAt(buf, 4<<20); err != nil || string(buf) != "after!" {
		t.Fatalf("disk after a failed restore holds %q (%v); want the vm's own %q", buf, err, "after!")
	}
	if _, err := os.Stat(st.Disk + ".before-restore"); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the kept disk was left: %v", err)
	}
}
