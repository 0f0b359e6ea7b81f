package vmproc

import (
	"context"
	"errors"
	"sync"
)

// ErrDeleting is the cause of a boot cancelled because its VM is being deleted.
var ErrDeleting = errors.New("vm is being deleted")

// Boots lets a delete overtake a start of the same VM. A start holds the VM's lock through its wait for the
// guest's agent (up to a minute under TCG); a delete that simply waited for that lock would wait as long, and then
// remove a VM that had just finished booting. Instead the start runs under a context from Begin, and Cancel
// cancels it: the start kills what it started and returns, and the delete takes the lock at once. The zero value
// is ready to use.
type Boots struct {
	mu       sync.Mutex
	cancel   map[string]context.CancelCauseFunc
	deleting map[string]int
}

// Begin returns the context a start of VM id runs under and the function to call when it ends. It fails with
// ErrDeleting at once when a delete of the VM is under way (it came between the delete's Cancel and its lock).
// Callers hold the VM's lock, so at most one start of a VM is registered at a time.
func (b *Boots) Begin(ctx context.Context, id string) (context.Context, func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deleting[id] > 0 {
		return nil, nil, ErrDeleting
	}
	ctx, cancel := context.WithCancelCause(ctx)
	if b.cancel == nil {
		b.cancel = make(map[string]context.CancelCauseFunc)
	}
	b.cancel[id] = cancel
	return ctx, func() {
		b.mu.Lock()
		delete(b.cancel, id)
		b.mu.Unlock()
		cancel(nil)
	}, nil
}

// Cancel cancels the start of VM id in progress, if any, with cause ErrDeleting, and refuses new ones until the
// returned function is called (when the delete is done).
func (b *Boots) Cancel(id string) (done func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.deleting == nil {
		b.deleting = make(map[string]int)
	}
	b.deleting[id]++
	if cancel := b.cancel[id]; cancel != nil {
		cancel(ErrDeleting)
	}
	return func() {
		b.mu.Lock()
		if b.deleting[id]--; b.deleting[id] == 0 {
			delete(b.deleting, id)
		}
		b.mu.Unlock()
	}
}

// Deleting reports whether ctx (from Begin) was cancelled by a delete.
func Deleting(ctx context.Context) bool { return errors.Is(context.Cause(ctx), ErrDeleting) }
