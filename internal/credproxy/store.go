package credproxy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// StoreVMs is the VMSource of a worker: a VM's tokens work while its row says it runs on workerID with a leased
// address. It reads the row on every request (one primary-key read), so a deleted VM's tokens die the moment its
// row leaves running, and a VM whose address is leased again to another VM is never mistaken for it.
func StoreVMs(vms store.VMStore, workerID string) VMSource {
	return storeVMs{vms: vms, worker: workerID}
}

type storeVMs struct {
	vms    store.VMStore
	worker string
}

func (s storeVMs) ProxyVM(ctx context.Context, id string) (VM, error) {
	v, err := s.vms.Get(ctx, id)
	if errors.Is(err, model.ErrNotFound) {
		return VM{}, fmt.Errorf("vm %s: %w", id, ErrVMGone)
	}
	if err != nil {
		return VM{}, err
	}
	if v.Status != model.VMRunning || v.WorkerID != s.worker || v.Network == nil {
		return VM{}, fmt.Errorf("vm %s is %s on worker %q: %w", id, v.Status, v.WorkerID, ErrVMGone)
	}
	ip, err := netip.ParseAddr(v.Network.IP)
	if err != nil {
		return VM{}, fmt.Errorf("vm %s has no address: %w", id, ErrVMGone)
	}
	return VM{ID: v.ID, OwnerID: v.OwnerID, IP: ip}, nil
}
