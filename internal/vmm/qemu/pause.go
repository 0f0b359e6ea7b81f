//go:build linux

package qemu

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/aetherium/aetherium/internal/vmm"
)

// PauseVM stops the guest's vCPUs (QMP stop), implementing vmm.Pauser: the QEMU process stays, with the guest's
// memory, devices and TAP, and uses no CPU for the guest. QMP stop on a stopped guest is a no-op, so pausing a
// paused VM succeeds. The state lives in QEMU itself: a restarted worker adopts the process paused as it is.
func (b *Backend) PauseVM(ctx context.Context, id string) error {
	return b.qmpOnRunning(ctx, id, "stop")
}

// ResumeVM lets a paused guest run again (QMP cont); resuming a running VM succeeds.
func (b *Backend) ResumeVM(ctx context.Context, id string) error {
	return b.qmpOnRunning(ctx, id, "cont")
}

// Paused asks QEMU whether the guest runs (QMP query-status).
func (b *Backend) Paused(ctx context.Context, id string) (bool, error) {
	st, err := b.runningState(id)
	if err != nil {
		return false, err
	}
	raw, err := qmpCall(ctx, st.QMPSock, "query-status")
	if err != nil {
		return false, fmt.Errorf("qemu backend: vm %s: %w", id, err)
	}
	var status struct {
		Running bool   `json:"running"`
		Status  string `json:"status"`
	}
	if err := json.Unmarshal(raw, &status); err != nil {
		return false, fmt.Errorf("qemu backend: vm %s: query-status answered %s", id, raw)
	}
	return !status.Running && status.Status == "paused", nil
}

func (b *Backend) qmpOnRunning(ctx context.Context, id, command string) error {
	unlock := b.lockVM(id)
	defer unlock()
	st, err := b.runningState(id)
	if err != nil {
		return err
	}
	if err := qmpCommand(ctx, st.QMPSock, command); err != nil {
		return fmt.Errorf("qemu backend: vm %s: %w", id, err)
	}
	b.log.Info("vm "+map[string]string{"stop": "paused", "cont": "resumed"}[command], "vm_id", id)
	return nil
}

// runningState is the state of a VM whose QEMU runs, or vmm.ErrNotFound / vmm.ErrNotRunning.
func (b *Backend) runningState(id string) (*vmState, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	st, err := b.loadState(id)
	if err != nil {
		return nil, err
	}
	if !b.alive(st) {
		return nil, fmt.Errorf("qemu backend: vm %s: %w", id, vmm.ErrNotRunning)
	}
	return st, nil
}
