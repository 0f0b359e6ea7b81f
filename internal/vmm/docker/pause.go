package docker

import (
	"context"
	"fmt"

	cerrdefs "github.com/containerd/errdefs"

	"github.com/aetherium/aetherium/internal/vmm"
)

// PauseVM freezes every process of the VM's container (docker pause: the cgroup freezer), implementing
// vmm.Pauser. Pausing a paused VM succeeds.
func (b *Backend) PauseVM(ctx context.Context, id string) error {
	return b.setPaused(ctx, id, true)
}

// ResumeVM thaws a paused container (docker unpause); resuming a running VM succeeds.
func (b *Backend) ResumeVM(ctx context.Context, id string) error {
	return b.setPaused(ctx, id, false)
}

// Paused reports whether the VM's container is paused.
func (b *Backend) Paused(ctx context.Context, id string) (bool, error) {
	if err := checkID(id); err != nil {
		return false, err
	}
	c, err := b.inspect(ctx, id)
	if err != nil {
		return false, err
	}
	return c.State != nil && c.State.Paused, nil
}

func (b *Backend) setPaused(ctx context.Context, id string, pause bool) error {
	if err := checkID(id); err != nil {
		return err
	}
	c, err := b.inspect(ctx, id)
	if err != nil {
		return err
	}
	if c.State == nil || !c.State.Running {
		return fmt.Errorf("docker backend: vm %s: %w (%s)", id, vmm.ErrNotRunning, exitDetail(c.State))
	}
	if c.State.Paused == pause {
		return nil
	}
	what := "unpause"
	if pause {
		what = "pause"
		err = b.cli.ContainerPause(ctx, c.ID)
	} else {
		err = b.cli.ContainerUnpause(ctx, c.ID)
	}
	if cerrdefs.IsNotFound(err) {
		return fmt.Errorf("docker backend: %s vm %s: %w", what, id, vmm.ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("docker backend: %s vm %s: %w", what, id, err)
	}
	b.log.Info("vm "+what+"d", "vm_id", id)
	return nil
}
