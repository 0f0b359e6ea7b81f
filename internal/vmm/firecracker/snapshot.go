//go:build linux

package firecracker

import (
	"context"
	"fmt"
	"net/http"

	"github.com/aetherium/aetherium/internal/vmm"
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

// CreateSnapshot writes the state of a running VM to snapshotPath and its memory to memPath (host paths; inside
// the VM's jail when jailed). The VM is paused for the copy and resumed afterwards. Its disk is not copied: a
// snapshot is restored onto the same VM (LoadSnapshot), whose disk the guest saw.
func (b *Backend) CreateSnapshot(ctx context.Context, id, snapshotPath, memPath string, typ SnapshotType) error {
	unlock := b.lockVM(id)
	defer unlock()
	st, api, err := b.runningAPI(id)
	if err != nil {
		return err
	}
	defer api.http.CloseIdleConnections()
	snap, err := b.fcPath(st, snapshotPath)
	if err != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: %w", id, err)
	}
	mem, err := b.fcPath(st, memPath)
	if err != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: %w", id, err)
	}
	if err := api.call(ctx, http.MethodPatch, "/vm", vmStateBody{State: "Paused"}); err != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: pause: %w", id, err)
	}
	serr := api.call(ctx, http.MethodPut, "/snapshot/create",
		snapshotCreate{SnapshotPath: snap, MemFilePath: mem, SnapshotType: typ})
	// Resume even when the snapshot failed: a paused VM is of no use to anyone.
	rerr := api.call(context.WithoutCancel(ctx), http.MethodPatch, "/vm", vmStateBody{State: "Resumed"})
	if serr != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: %w", id, serr)
	}
	if rerr != nil {
		return fmt.Errorf("firecracker backend: snapshot vm %s: resume: %w", id, rerr)
	}
	return nil
}

// LoadSnapshot boots a stopped VM from a snapshot made by CreateSnapshot (PUT /snapshot/load into a fresh
// firecracker, resumed at once) and waits for its agent, like StartVM.
func (b *Backend) LoadSnapshot(ctx context.Context, id, snapshotPath, memPath string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return b.boot(ctx, id, "snapshot load", func(ctx context.Context, st *vmState, api *apiClient) error {
		snap, err := b.fcPath(st, snapshotPath)
		if err != nil {
			return err
		}
		mem, err := b.fcPath(st, memPath)
		if err != nil {
			return err
		}
		return api.call(ctx, http.MethodPut, "/snapshot/load", snapshotLoad{
			SnapshotPath: snap,
			MemBackend:   &memoryBackend{BackendType: "File", BackendPath: mem},
			ResumeVM:     true,
		})
	})
}
