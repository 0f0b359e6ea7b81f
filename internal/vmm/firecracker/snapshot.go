//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"time"

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

func (b *Backend) setVMState(ctx context.Context, id, state string) error {
	unlock := b.lockVM(id)
	defer unlock()
	_, api, err := b.runningAPI(id)
	if err != nil {
		return err
	}
	defer api.http.CloseIdleConnections()
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
	}
	diskCopy := SnapshotDisk(snapshotPath)
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
	if serr == nil {
		serr = vmproc.WriteJSON(snapshotManifestPath(snapshotPath), snapshotManifest{VMID: id, Type: typ,
			Memory: memPath, Disk: diskCopy, CreatedAt: time.Now().UTC()})
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

// LoadSnapshot boots a stopped VM from a Full snapshot made by CreateSnapshot: the VM's disk is replaced by the
// snapshot's, then a fresh firecracker (in a fresh jail) gets the logger and PUT /snapshot/load, resumed at once,
// and the agent is waited for like StartVM. A VM that runs is refused: only a firecracker that has configured
// nothing but its logger and metrics can load a snapshot. Diff snapshots are refused too: Firecracker loads only
// a complete memory file, and merging a diff onto its base is not implemented here.
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
			"can be loaded (merging a diff onto its base is not implemented)", id, vmm.ErrInvalidConfig, snapshotPath, man.Type)
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
		prepare: func(st *vmState) error {
			// The snapshot's disk replaces the VM's: the restored memory knows that one.
			tmp := st.Disk + ".restore"
			_ = os.Remove(tmp)
			if _, err := vmproc.CloneDisk(man.Disk, tmp); err != nil {
				return fmt.Errorf("restore disk: %w", err)
			}
			if err := os.Rename(tmp, st.Disk); err != nil {
				_ = os.Remove(tmp)
				return fmt.Errorf("restore disk: %w", err)
			}
			return nil
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
			return api.call(ctx, http.MethodPut, "/snapshot/load", snapshotLoad{
				SnapshotPath:    snap,
				MemBackend:      &memoryBackend{BackendType: "File", BackendPath: mem},
				ResumeVM:        true,
				TrackDirtyPages: b.cfg.TrackDirtyPages,
			})
		},
	})
}
