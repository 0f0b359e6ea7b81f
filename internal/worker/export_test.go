package worker

import (
	"context"

	"github.com/aetherium/aetherium/internal/model"
)

// SetupGuest runs the guest setup of VM start again, for tests of its idempotence.
func (w *Worker) SetupGuest(ctx context.Context, vm *model.VM) error { return w.setupGuest(ctx, vm) }
