//go:build linux

package firecracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/vmm"
)

// vmState is a VM's state file: what a restarted worker needs to find the VM and its process again.
type vmState struct {
	ID       string `json:"id"`
	Name     string `json:"name,omitempty"`
	WorkerID string `json:"worker_id"`
	// InstallationID is the installation that made the VM (Config.InstallationID).
	InstallationID string `json:"installation_id,omitempty"`
	Image          string `json:"image"` // the root filesystem template the disk was cloned from
	VCPUs          int    `json:"vcpus"`
	MemoryMB       int    `json:"memory_mb"`
	CID            uint32 `json:"guest_cid"`
	// Egress is the VM's policy and Net its attachment (TAP, MAC, address), when the backend has a network.
	Egress *network.Policy     `json:"egress,omitempty"`
	Net    *network.Attachment `json:"net,omitempty"`

	// Host paths of what the VM uses (the sockets inside the jailer's chroot when jailed; the disk always in the
	// VM's directory, hard-linked into each fresh jail).
	APISock   string `json:"api_sock"`
	VsockUDS  string `json:"vsock_uds"`
	Disk      string `json:"disk"`
	ChrootDir string `json:"chroot_dir,omitempty"` // the jailer's <base>/<exec>/<id> directory, removed on delete

	// PID and PIDStart (the process's start time in clock ticks since boot, from /proc/<pid>/stat) identify the
	// firecracker process; both are checked so that a reused pid is never taken for it.
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	Started  bool   `json:"started"` // InstanceStart was attempted at least once

	CreatedAt time.Time `json:"created_at"`
	// Detail is why the VM last stopped, when known.
	Detail string `json:"detail,omitempty"`
}

func (b *Backend) statePath(id string) string { return filepath.Join(b.vmDir(id), stateFile) }

// loadState reads VM id's state file; vmm.ErrNotFound (wrapped) when there is none.
func (b *Backend) loadState(id string) (*vmState, error) {
	data, err := os.ReadFile(b.statePath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("firecracker backend: vm %s: %w", id, vmm.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("firecracker backend: read state of vm %s: %w", id, err)
	}
	var st vmState
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, fmt.Errorf("firecracker backend: state of vm %s is corrupt: %w", id, err)
	}
	if st.ID != id {
		return nil, fmt.Errorf("firecracker backend: state file of vm %s names vm %q", id, st.ID)
	}
	return &st, nil
}

// saveState writes the state file atomically (a crash leaves the old or the new file, never half of one).
func (b *Backend) saveState(st *vmState) error {
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("firecracker backend: encode state of vm %s: %w", st.ID, err)
	}
	path := b.statePath(st.ID)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return fmt.Errorf("firecracker backend: write state of vm %s: %w", st.ID, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("firecracker backend: write state of vm %s: %w", st.ID, err)
	}
	return nil
}

// allStates reads every state file under DataDir/vms, of every worker (CIDs are unique per host). Unreadable
// ones are skipped with a warning.
func (b *Backend) allStates() ([]*vmState, error) {
	entries, err := os.ReadDir(b.vmsDir())
	if err != nil {
		return nil, fmt.Errorf("firecracker backend: list vms: %w", err)
	}
	var out []*vmState
	for _, e := range entries {
		if !e.IsDir() || checkID(e.Name()) != nil {
			continue
		}
		st, err := b.loadState(e.Name())
		if errors.Is(err, vmm.ErrNotFound) {
			continue // a directory being created or deleted
		}
		if err != nil {
			b.log.Warn("skipping vm with unreadable state", "vm_id", e.Name(), "err", err)
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// allocateCID finds the lowest guest CID not held by any VM's state file and writes st with it, under an exclusive
// lock on DataDir/cid.lock, so that concurrent creates (in this process or in another worker sharing DataDir)
// never get the same CID. A CID stays taken until DeleteVM removes the state file.
func (b *Backend) allocateCID(st *vmState) error {
	lf, err := os.OpenFile(filepath.Join(b.cfg.DataDir, "cid.lock"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("firecracker backend: open cid lock: %w", err)
	}
	defer lf.Close()
	if err := unix.Flock(int(lf.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("firecracker backend: lock cid allocation: %w", err)
	}
	defer unix.Flock(int(lf.Fd()), unix.LOCK_UN) //nolint:errcheck // closing the file releases it anyway
	states, err := b.allStates()
	if err != nil {
		return err
	}
	used := make(map[uint32]bool, len(states))
	for _, s := range states {
		used[s.CID] = true
	}
	cid := b.cfg.FirstCID
	for used[cid] {
		cid++
		if cid == 0xFFFFFFFF { // VMADDR_CID_ANY
			return fmt.Errorf("firecracker backend: no guest CID left")
		}
	}
	st.CID = cid
	return b.saveState(st)
}
