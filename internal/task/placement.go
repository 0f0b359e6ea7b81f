package task

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/placement"
	"github.com/aetherium/aetherium/internal/store"
)

// ErrNoCapacity is returned (wrapped in a *NoCapacityError) when no worker has room for a new VM.
var ErrNoCapacity = errors.New("no worker has room")

// NoCapacityError says what did not fit.
type NoCapacityError struct {
	Need    placement.Resources
	Workers int // the workers that could take VMs at all
}

func (e *NoCapacityError) Error() string {
	return fmt.Sprintf("no worker has room for a vm of %d vCPU and %d MB (%d workers take new vms); delete vms or add workers",
		e.Need.VCPUs, e.Need.MemoryMB, e.Workers)
}

func (e *NoCapacityError) Unwrap() error { return ErrNoCapacity }

// ErrQuotaExceeded is returned (wrapped in a *QuotaError) for a new VM beyond its owner's quota.
var ErrQuotaExceeded = errors.New("quota exceeded")

// QuotaError says which limit a new VM would pass.
type QuotaError struct {
	Limit      string // "vms", "vcpus" or "memory_mb"
	Max, Holds int
	Need       int
}

func (e *QuotaError) Error() string {
	return fmt.Sprintf("quota exceeded: this owner may hold at most %d %s and holds %d; the new vm needs %d more "+
		"(delete vms, or ask an admin to raise the quota)", e.Max, e.Limit, e.Holds, e.Need)
}

func (e *QuotaError) Unwrap() error { return ErrQuotaExceeded }

// placer is the state of placement in one process: a lock, so that the quota check, the choice of worker and the
// queueing of the VM's task are one step for the VMs this process creates, and the reservations of VMs placed but
// not yet taken by their worker (a pending VM has no worker in the store until its create runs).
type placer struct {
	mu       sync.Mutex
	reserved map[string]reservation // by VM id
	rnd      *rand.Rand
}

type reservation struct {
	worker string
	res    placement.Resources
	at     time.Time
}

// reservationTTL bounds how long a placement counts against its worker without the VM showing on it.
const reservationTTL = 10 * time.Minute

// placeCandidates is k in placement.Choose.
const placeCandidates = 2

// placeNewVM checks the owner's quota for a new VM of spec and chooses its worker. It returns the worker ("" when
// no worker advertises its capacity, as before placement existed: the task is then not pinned) and done, which the
// caller must call, with the VM's id once its task is queued or "" when it was not. The quota check and the
// placement hold the process's placement lock until done.
func (s *Service) placeNewVM(ctx context.Context, ownerID string, spec model.VMSpec) (string, func(vmID string), error) {
	p := &s.placer
	p.mu.Lock()
	unlock := func(string) { p.mu.Unlock() }
	need := placement.Of(spec.VCPUs, spec.MemoryMB)
	if err := s.checkQuota(ctx, ownerID, need); err != nil {
		p.mu.Unlock()
		return "", nil, err
	}
	s.pruneReservations(ctx)
	loads, err := placement.Loads(ctx, s.store, s.limits.WorkerStaleAfter, s.reservedOn)
	if err != nil {
		p.mu.Unlock()
		return "", nil, err
	}
	if len(loads) == 0 {
		return "", unlock, nil
	}
	if p.rnd == nil {
		p.rnd = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	worker, ok := placement.Choose(loads, need, placeCandidates, "", p.rnd)
	if !ok {
		p.mu.Unlock()
		return "", nil, &NoCapacityError{Need: need, Workers: len(loads)}
	}
	return worker, func(vmID string) {
		if vmID != "" {
			if p.reserved == nil {
				p.reserved = map[string]reservation{}
			}
			p.reserved[vmID] = reservation{worker: worker, res: need, at: time.Now()}
		}
		p.mu.Unlock()
	}, nil
}

// reservedOn is what this process's reservations hold on worker. p.mu is held.
func (s *Service) reservedOn(worker string) placement.Resources {
	var r placement.Resources
	for _, x := range s.placer.reserved {
		if x.worker == worker {
			r = r.Add(x.res)
		}
	}
	return r
}

// pruneReservations drops the reservations whose VM its worker has taken (it counts in the store now), that
// ended, or that are too old. p.mu is held.
func (s *Service) pruneReservations(ctx context.Context) {
	for id, x := range s.placer.reserved {
		if time.Since(x.at) > reservationTTL {
			delete(s.placer.reserved, id)
			continue
		}
		vm, err := s.store.VMs().Get(ctx, id)
		if errors.Is(err, model.ErrNotFound) || (err == nil && (vm.Status != model.VMPending || vm.WorkerID != "")) {
			delete(s.placer.reserved, id)
		}
	}
}

// checkQuota refuses a new VM of need beyond the owner's quota (none: no limit).
func (s *Service) checkQuota(ctx context.Context, ownerID string, need placement.Resources) error {
	q, err := s.store.Quotas().Get(ctx, ownerID)
	if errors.Is(err, model.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the quota: %w", err)
	}
	var holds placement.Resources
	page := store.Page{Limit: 500}
	for {
		vms, err := s.store.VMs().List(ctx, store.VMFilter{OwnerID: ownerID, Statuses: placement.Holding, Page: page})
		if err != nil {
			return fmt.Errorf("count the owner's vms: %w", err)
		}
		for _, vm := range vms {
			holds = holds.Add(placement.Of(vm.VCPUCount, vm.MemoryMB))
		}
		if len(vms) < page.Limit {
			break
		}
		page.After = vms[len(vms)-1].ID
	}
	for _, c := range []struct {
		limit           string
		max, holds, add int
	}{{"vms", q.MaxVMs, holds.VMs, need.VMs}, {"vcpus", q.MaxVCPUs, holds.VCPUs, need.VCPUs},
		{"memory_mb", q.MaxMemoryMB, holds.MemoryMB, need.MemoryMB}} {
		if c.max > 0 && c.holds+c.add > c.max {
			return &QuotaError{Limit: c.limit, Max: c.max, Holds: c.holds, Need: c.add}
		}
	}
	return nil
}

// GetQuota returns an owner's quota (admin).
func (s *Service) GetQuota(ctx context.Context, ownerID string) (*model.Quota, error) {
	return s.store.Quotas().Get(ctx, ownerID)
}

// SetQuota sets an owner's quota (admin); 0 is no limit.
func (s *Service) SetQuota(ctx context.Context, q *model.Quota) error {
	switch {
	case q.OwnerID == "":
		return invalid("owner_id", "is required")
	case q.MaxVMs < 0:
		return invalid("max_vms", "must be 0 (no limit) or more")
	case q.MaxVCPUs < 0:
		return invalid("max_vcpus", "must be 0 (no limit) or more")
	case q.MaxMemoryMB < 0:
		return invalid("max_memory_mb", "must be 0 (no limit) or more")
	}
	return s.store.Quotas().Put(ctx, q)
}

// DeleteQuota removes an owner's quota (admin).
func (s *Service) DeleteQuota(ctx context.Context, ownerID string) error {
	return s.store.Quotas().Delete(ctx, ownerID)
}

// WorkerView is a worker as an admin sees it: what it offers and what its VMs hold.
type WorkerView struct {
	Worker   *model.Worker
	State    string // "live", "drained", "stale" (no heartbeat lately) or "stopped"
	Capacity placement.Resources
	Used     placement.Resources
	HasCap   bool // it advertises its capacity
}

// ListWorkers returns every registered worker with its load (admin).
func (s *Service) ListWorkers(ctx context.Context) ([]WorkerView, error) {
	ws, err := s.store.Workers().List(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]WorkerView, 0, len(ws))
	for _, w := range ws {
		v := WorkerView{Worker: w}
		v.Capacity, v.HasCap = placement.Capacity(w)
		if v.Used, err = placement.Used(ctx, s.store, w.ID, ""); err != nil {
			return nil, err
		}
		switch {
		case w.Status != "active":
			v.State = "stopped"
		case time.Since(w.LastHeartbeat) > s.limits.WorkerStaleAfter:
			v.State = "stale"
		case w.Drained:
			v.State = "drained"
		default:
			v.State = "live"
		}
		out = append(out, v)
	}
	return out, nil
}

// DrainWorker drains or undrains a worker (admin): a drained worker gets no new VMs; its VMs stay until deleted.
func (s *Service) DrainWorker(ctx context.Context, id string, drained bool) (*model.Worker, error) {
	if err := s.store.Workers().SetDrained(ctx, id, drained); err != nil {
		return nil, err
	}
	return s.store.Workers().Get(ctx, id)
}
