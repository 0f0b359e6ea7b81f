//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// runningAPI returns the API client of a running VM, or vmm.ErrNotRunning.
func (b *Backend) runningAPI(id string) (*vmState, *apiClient, error) {
	if err := checkID(id); err != nil {
		return nil, nil, err
	}
	st, err := b.loadState(id)
	if err != nil {
		return nil, nil, err
	}
	if !b.alive(st) {
		return nil, nil, fmt.Errorf("firecracker backend: vm %s: %w", id, vmm.ErrNotRunning)
	}
	return st, newAPIClient(st.APISock), nil
}

// Pause freezes the VM's vCPUs (PATCH /vm Paused). The agent does not answer while the VM is paused.
func (b *Backend) Pause(ctx context.Context, id string) error {
	return b.setVMState(ctx, id, "Paused")
}

// Resume lets a paused VM run again (PATCH /vm Resumed).
func (b *Backend) Resume(ctx context.Context, id string) error {
	return b.setVMState(ctx, id, "Resumed")
}

// PauseVM implements vmm.Pauser: Pause, except that pausing a paused VM succeeds without asking Firecracker to
// pause it again (GET / says what it is).
func (b *Backend) PauseVM(ctx context.Context, id string) error {
	return b.setVMStateIf(ctx, id, "Paused", "Paused")
}

// ResumeVM implements vmm.Pauser: Resume, except that resuming a running VM succeeds without a request.
func (b *Backend) ResumeVM(ctx context.Context, id string) error {
	return b.setVMStateIf(ctx, id, "Resumed", "Running")
}

// Paused reports whether Firecracker says the VM is paused (GET /).
func (b *Backend) Paused(ctx context.Context, id string) (bool, error) {
	_, api, err := b.runningAPI(id)
	if err != nil {
		return false, err
	}
	defer api.http.CloseIdleConnections()
	state, err := api.instanceState(ctx)
	if err != nil {
		return false, fmt.Errorf("firecracker backend: vm %s: %w", id, err)
	}
	return state == "Paused", nil
}

func (b *Backend) setVMState(ctx context.Context, id, state string) error {
	return b.setVMStateIf(ctx, id, state, "")
}

// setVMStateIf sends PATCH /vm {state}, unless GET / says the VM is in state unless already ("": always).
func (b *Backend) setVMStateIf(ctx context.Context, id, state, unless string) error {
	unlock := b.lockVM(id)
	defer unlock()
	_, api, err := b.runningAPI(id)
	if err != nil {
		return err
	}
	defer api.http.CloseIdleConnections()
	if unless != "" {
		cur, err := api.instanceState(ctx)
		if err != nil {
			return fmt.Errorf("firecracker backend: vm %s: %w", id, err)
		}
		if cur == unless {
			return nil
		}
	}
	if err := api.call(ctx, http.MethodPatch, "/vm", vmStateBody{State: state}); err != nil {
		return fmt.Errorf("firecracker backend: vm %s: %w", id, err)
	}
	return nil
}

// A snapshot is four files: the VM state (snapshotPath) and guest memory (memPath) that Firecracker writes, and,
// next to the state, a copy of the VM's disk taken at the same pause (SnapshotDisk) and a manifest
// (snapshotPath + ".json"). The disk has to be captured with the memory: the guest's page cache and filesystem
// state in memory describe the disk as it was at the pause, and the guest keeps writing after resume.

// SnapshotDisk is where CreateSnapshot stores the VM's disk of the snapshot whose state file is snapshotPath.
func SnapshotDisk(snapshotPath string) string { return snapshotPath + ".disk" }

func snapshotManifestPath(snapshotPath string) string { return snapshotPath + ".json" }

// snapshotManifest records what a snapshot is, so that a load can refuse what it cannot restore.
type snapshotManifest struct {
	VMID      string       `json:"vm_id"`
	Type      SnapshotType `json:"type"`
	Memory    string       `json:"memory"`
	Disk      string       `json:"disk"`
	CreatedAt time.Time    `json:"created_at"`
	// Parent is the snapshot the VM's firecracker made or loaded last before this one ("" after a fresh boot):
	// a Diff holds the pages dirtied since then, so it can only be merged onto that one.
	Parent string `json:"parent,omitempty"`
	// ParentCreatedAt tells the parent from a later snapshot written to the same path.
	ParentCreatedAt time.Time `json:"parent_created_at,omitempty"`
	// RebasedOnto is the base a Diff was merged onto by RebaseSnapshot (it is then Full).
	RebasedOnto string `json:"rebased_onto,omitempty"`
}

// lineageFile, in a VM's directory, names the snapshot its running firecracker made or loaded last: a
// firecracker resets its dirty page log at each snapshot create and load (and starts with it empty at boot).
const lineageFile = "snapshot-parent"

// snapshotRef names a snapshot: its state file and when it was made.
type snapshotRef struct {
	Path      string    `json:"path,omitempty"`
	CreatedAt time.Time `json:"created_at,omitempty"`
}

func (b *Backend) setLineage(id string, ref snapshotRef) error {
	return vmproc.WriteJSON(filepath.Join(b.vmDir(id), lineageFile), ref)
}

// lineage is the snapshot VM id's firecracker made or loaded last; none after a fresh boot, or when unknown.
func (b *Backend) lineage(id string) snapshotRef {
	var ref snapshotRef
	_ = vmproc.ReadJSON(filepath.Join(b.vmDir(id), lineageFile), &ref)
	return ref
}

// CreateSnapshot writes the state of a running VM to snapshotPath, its memory to memPath and its disk to
// SnapshotDisk(snapshotPath) (host paths, anywhere on the host: a jailed firecracker writes inside its jail and the
// files are moved out). The VM is paused for the copy and resumed afterwards. A Diff snapshot (only the pages
// dirtied since the last snapshot) needs TrackDirtyPages; this backend cannot load one (see LoadSnapshot).
func (b *Backend) CreateSnapshot(ctx context.Context, id, snapshotPath, memPath string, typ SnapshotType) error {
	switch typ {
	case "", SnapshotFull:
		typ = SnapshotFull
	case SnapshotDiff:
		if !b.cfg.TrackDirtyPages {
			return fmt.Errorf("firecracker backend: snapshot vm %s: %w: a Diff snapshot needs dirty page tracking "+
				"(Config.TrackDirtyPages), which this backend has off", id, vmm.ErrInvalidConfig)
		}
	default:
		return fmt.Errorf("firecracker backend: snapshot vm %s: %w: snapshot type %q (want Full or Diff)", id,
			vmm.ErrInvalidConfig, typ)
	}
	if filepath.Base(snapshotPath) == filepath.Base(memPath) {
		return fmt.Errorf("firecracker backend: snapshot vm %s: %w: the state and memory files need different names",
			id, vmm.ErrInvalidConfig)
	}
	unlock := b.lockVM(id)
	defer unlock()
	st, api, err := b.runningAPI(id)
	if err != nil {
		return err
	}
	defer api.http.CloseIdleConnections()
	snap, mem := snapshotPath, memPath
	if st.ChrootDir != "" {
		snap, mem = "/"+filepath.Base(snapshotPath), "/"+filepath.Base(memPath)
		// Firecracker truncates an existing file and writes it; in the jail a file of that name may be the hard
		// link of the memory file that backs this very guest (a restore): unlink, never overwrite.
		for _, p := range []string{snap, mem} {
			if err := os.Remove(filepath.Join(jailRoot(st), p)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("firecracker backend: snapshot vm %s: %w", id, err)
			}
		}
	}
	diskCopy := SnapshotDisk(snapshotPath)
	// Removed, not overwritten: a memory file may back the running guest (it was loaded from it).
	for _, p := range []string{snapshotPath, memPath, diskCopy, snapshotManifestPath(snapshotPath)} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("firecracker backend: snapshot vm %s: %w", id, err)
		}
	}
	if err := api.call(ctx, http.MethodPatch, "/vm", vmStateBody{State: "Paused"}); err != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: pause: %w", id, err)
	}
	serr := api.call(ctx, http.MethodPut, "/snapshot/create",
		snapshotCreate{SnapshotPath: snap, MemFilePath: mem, SnapshotType: typ})
	if serr == nil {
		// At the same pause: the disk as the memory knows it.
		if _, err := vmproc.CloneDisk(st.Disk, diskCopy); err != nil {
			serr = fmt.Errorf("copy disk: %w", err)
		}
	}
	// Resume even when the snapshot failed: a paused VM is of no use to anyone.
	rerr := api.call(context.WithoutCancel(ctx), http.MethodPatch, "/vm", vmStateBody{State: "Resumed"})
	if serr == nil && st.ChrootDir != "" {
		root := jailRoot(st)
		if err := moveOut(filepath.Join(root, snap), snapshotPath); err != nil {
			serr = fmt.Errorf("move snapshot out of the jail: %w", err)
		} else if err := moveOut(filepath.Join(root, mem), memPath); err != nil {
			serr = fmt.Errorf("move memory out of the jail: %w", err)
		}
	}
	created := time.Now().UTC()
	if serr == nil {
		parent := b.lineage(id)
		serr = vmproc.WriteJSON(snapshotManifestPath(snapshotPath), snapshotManifest{VMID: id, Type: typ,
			Memory: memPath, Disk: diskCopy, CreatedAt: created, Parent: parent.Path, ParentCreatedAt: parent.CreatedAt})
	}
	if serr == nil {
		// Firecracker has reset its dirty page log: the next Diff is relative to this snapshot.
		serr = b.setLineage(id, snapshotRef{Path: snapshotPath, CreatedAt: created})
	}
	if serr != nil {
		_ = vmproc.RemoveFiles(snapshotPath, memPath, diskCopy, snapshotManifestPath(snapshotPath))
		return fmt.Errorf("firecracker backend: snapshot vm %s: %w", id, serr)
	}
	if rerr != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: resume: %w", id, rerr)
	}
	return nil
}

// LoadSnapshot boots a stopped VM from a Full snapshot made by CreateSnapshot (or a Diff merged by RebaseSnapshot): the VM's disk is replaced by the
// snapshot's, then a fresh firecracker (in a fresh jail) gets the logger and PUT /snapshot/load, resumed at once,
// and the agent is waited for like StartVM. A VM that runs is refused: only a firecracker that has configured
// nothing but its logger and metrics can load a snapshot. A Diff snapshot is refused: Firecracker loads only a
// complete memory file; RebaseSnapshot makes one.
func (b *Backend) LoadSnapshot(ctx context.Context, id, snapshotPath, memPath string) error {
	if err := checkID(id); err != nil {
		return err
	}
	var man snapshotManifest
	if err := vmproc.ReadJSON(snapshotManifestPath(snapshotPath), &man); err != nil {
		return fmt.Errorf("firecracker backend: snapshot load vm %s: %w: no readable manifest next to %s (made by "+
			"CreateSnapshot): %w", id, vmm.ErrInvalidConfig, snapshotPath, err)
	}
	if man.Type != SnapshotFull {
		return fmt.Errorf("firecracker backend: snapshot load vm %s: %w: %s is a %s snapshot; only Full snapshots "+
			"can be loaded: merge it onto its parent %q first (RebaseSnapshot)", id, vmm.ErrInvalidConfig, snapshotPath,
			man.Type, man.Parent)
	}
	if man.VMID != id {
		return fmt.Errorf("firecracker backend: snapshot load vm %s: %w: %s is a snapshot of vm %s", id,
			vmm.ErrInvalidConfig, snapshotPath, man.VMID)
	}
	for _, p := range []string{snapshotPath, memPath, man.Disk} {
		if _, err := os.Stat(p); err != nil {
			return fmt.Errorf("firecracker backend: snapshot load vm %s: %w: %w", id, vmm.ErrInvalidConfig, err)
		}
	}
	return b.boot(ctx, id, "snapshot load", bootSteps{
		restore: true,
		// The snapshot's disk replaces the VM's (the restored memory knows that one); the VM's own is kept aside
		// until the restore has worked, and put back if it did not.
		prepare: func(st *vmState) error {
			tmp, keep := st.Disk+".restore", st.Disk+".before-restore"
			_ = os.Remove(tmp)
			if _, err := vmproc.CloneDisk(man.Disk, tmp); err != nil {
				return fmt.Errorf("restore disk: %w", err)
			}
			if err := os.Rename(st.Disk, keep); err != nil {
				_ = os.Remove(tmp)
				return fmt.Errorf("restore disk: keep the current one: %w", err)
			}
			if err := os.Rename(tmp, st.Disk); err != nil {
				_ = os.Rename(keep, st.Disk)
				_ = os.Remove(tmp)
				return fmt.Errorf("restore disk: %w", err)
			}
			return nil
		},
		done: func(st *vmState, err error) {
			keep := st.Disk + ".before-restore"
			if err == nil {
				_ = os.Remove(keep)
				return
			}
			if rerr := os.Rename(keep, st.Disk); rerr != nil {
				b.log.Error("put the vm's disk back after a failed restore", "vm_id", st.ID, "disk", keep, "err", rerr)
			}
		},
		setup: func(ctx context.Context, st *vmState, api *apiClient) error {
			// The logger is not part of a snapshot; it is the one resource allowed before a load.
			if err := b.setLogger(ctx, st, api); err != nil {
				return err
			}
			snap, mem := snapshotPath, memPath
			if st.ChrootDir != "" {
				var err error
				if snap, err = b.linkIntoJail(st, snapshotPath); err != nil {
					return fmt.Errorf("put snapshot in jail: %w", err)
				}
				if mem, err = b.linkIntoJail(st, memPath); err != nil {
					return fmt.Errorf("put memory in jail: %w", err)
				}
			}
			if err := api.call(ctx, http.MethodPut, "/snapshot/load", snapshotLoad{
				SnapshotPath:        snap,
				MemBackend:          &memoryBackend{BackendType: "File", BackendPath: mem},
				ResumeVM:            true,
				EnableDiffSnapshots: b.cfg.TrackDirtyPages,
			}); err != nil {
				return err
			}
			return b.setLineage(st.ID, snapshotRef{Path: snapshotPath, CreatedAt: man.CreatedAt})
		},
	})
}

// RebaseSnapshot merges the Diff snapshot diffPath onto basePath, the snapshot its VM made or loaded just before it
// (its manifest's parent): the diff's memory file becomes complete (the base's memory with the diff's pages
// copied over it, as Firecracker's `snapshot-editor edit-memory rebase` does) and the diff a Full snapshot that
// LoadSnapshot accepts. The diff's state file and disk copy are its own, from the same pause. The base is only
// read. A chain of diffs is merged one after the other, oldest first.
func (b *Backend) RebaseSnapshot(ctx context.Context, basePath, diffPath string) error {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("firecracker backend: rebase snapshot %s: %w: "+format, append([]any{diffPath, vmm.ErrInvalidConfig}, a...)...)
	}
	var base, diff snapshotManifest
	if err := vmproc.ReadJSON(snapshotManifestPath(basePath), &base); err != nil {
		return fail("base manifest: %w", err)
	}
	if err := vmproc.ReadJSON(snapshotManifestPath(diffPath), &diff); err != nil {
		return fail("manifest: %w", err)
	}
	switch {
	case diff.Type != SnapshotDiff:
		return fail("it is a %s snapshot, not a Diff", diff.Type)
	case base.Type != SnapshotFull:
		return fail("its base %s is a %s snapshot: merge that one first", basePath, base.Type)
	case diff.VMID != base.VMID:
		return fail("it is of vm %s, the base %s of vm %s", diff.VMID, basePath, base.VMID)
	case diff.Parent == "":
		return fail("it was made after a fresh boot, with no snapshot before it to merge onto")
	case filepath.Clean(diff.Parent) != filepath.Clean(basePath):
		return fail("it holds the pages dirtied since %s, not since %s", diff.Parent, basePath)
	case !diff.ParentCreatedAt.Equal(base.CreatedAt):
		return fail("its parent %s made at %s was replaced by a snapshot made at %s", basePath,
			diff.ParentCreatedAt.Format(time.RFC3339Nano), base.CreatedAt.Format(time.RFC3339Nano))
	}
	merged := diff.Memory + ".rebase"
	_ = os.Remove(merged)
	if _, err := vmproc.CloneDisk(base.Memory, merged); err != nil {
		return fmt.Errorf("firecracker backend: rebase snapshot %s: copy base memory: %w", diffPath, err)
	}
	if err := overlayData(ctx, diff.Memory, merged); err != nil {
		_ = os.Remove(merged)
		return fmt.Errorf("firecracker backend: rebase snapshot %s: %w", diffPath, err)
	}
	if err := os.Rename(merged, diff.Memory); err != nil {
		_ = os.Remove(merged)
		return fmt.Errorf("firecracker backend: rebase snapshot %s: %w", diffPath, err)
	}
	diff.Type, diff.RebasedOnto = SnapshotFull, basePath
	if err := vmproc.WriteJSON(snapshotManifestPath(diffPath), diff); err != nil {
		return fmt.Errorf("firecracker backend: rebase snapshot %s: %w", diffPath, err)
	}
	return nil
}

// overlayData copies every data region of src (a diff memory file: the dirtied pages, holes elsewhere) onto dst
// at the same offsets, zero pages included (a page the guest zeroed must override the base), and syncs dst.
func overlayData(ctx context.Context, src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer out.Close()
	if ofi, err := out.Stat(); err != nil {
		return err
	} else if ofi.Size() < fi.Size() {
		if err := out.Truncate(fi.Size()); err != nil {
			return err
		}
	}
	buf := make([]byte, 1<<20)
	for off := int64(0); off < fi.Size(); {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole is left
		}
		if err != nil {
			return fmt.Errorf("find the diff's pages (SEEK_DATA): %w", err)
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return fmt.Errorf("find the diff's pages (SEEK_HOLE): %w", err)
		}
		if _, err := io.CopyBuffer(io.NewOffsetWriter(out, data), io.NewSectionReader(in, data, hole-data), buf); err != nil {
			return fmt.Errorf("copy the diff's pages: %w", err)
		}
		off = hole
	}
	return out.Sync()
}
