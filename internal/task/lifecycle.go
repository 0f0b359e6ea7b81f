package task

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/pkg/client"
)

// ErrVMPaused is matched (errors.Is) by the error for work asked of a paused VM: commands, files, processes and
// shells need it running. That error matches ErrVMNotRunning too, for callers that do not tell the two apart.
var ErrVMPaused = errors.New("vm is paused")

type pausedError struct{ vmID string }

func (e *pausedError) Error() string { return "vm " + e.vmID + " is paused; resume it" }

func (e *pausedError) Is(target error) bool {
	return target == ErrVMPaused || target == ErrVMNotRunning
}

// notRunning is the error for work asked of a VM in status st (not running).
func notRunning(vmID string, st model.VMStatus) error {
	if st == model.VMPaused {
		return &pausedError{vmID: vmID}
	}
	return fmt.Errorf("%w: vm %s is %s", ErrVMNotRunning, vmID, st)
}

// maxLifetimeSeconds bounds any timeout a request may give when the server sets no maximum (about 10 years), so
// that times stay representable.
const maxLifetimeSeconds = 10 * 365 * 24 * 3600

// normalizeLifetime checks the lifetime part of a create request against the server's defaults and maxima. A
// maximum applies to VMs that ask for nothing too: with vm_max_timeout set, no VM lives for ever.
func (s *Service) normalizeLifetime(req client.CreateVMRequest) (*model.VMLifetime, error) {
	l := s.limits
	timeout, err := lifetimeField("timeout_seconds", req.TimeoutSeconds, l.DefaultVMTimeout, l.MaxVMTimeout)
	if err != nil {
		return nil, err
	}
	idle, err := lifetimeField("idle_timeout_seconds", req.IdleTimeoutSeconds, l.DefaultVMIdleTimeout, l.MaxVMIdleTimeout)
	if err != nil {
		return nil, err
	}
	onIdle := model.OnIdle(req.OnIdle)
	switch {
	case onIdle == "":
		onIdle = model.OnIdlePause
	case !onIdle.Valid():
		return nil, invalid("on_idle", "must be pause or delete (got %q)", req.OnIdle)
	case idle == 0:
		return nil, invalid("on_idle", "needs an idle_timeout_seconds (this server sets no default)")
	}
	if timeout == 0 && idle == 0 {
		return nil, nil
	}
	lt := &model.VMLifetime{TimeoutSeconds: timeout, IdleTimeoutSeconds: idle}
	if idle > 0 {
		lt.OnIdle = onIdle
	}
	return lt, nil
}

// lifetimeField is one timeout of a create request: the request's value, else the default, else the maximum.
func lifetimeField(field string, asked int, def, limit time.Duration) (int, error) {
	maxS := int(limit / time.Second)
	switch {
	case asked < 0:
		return 0, invalid(field, "must not be negative (got %d)", asked)
	case maxS > 0 && asked > maxS:
		return 0, invalid(field, "must be at most %d, this server's maximum (got %d)", maxS, asked)
	case asked > maxLifetimeSeconds:
		return 0, invalid(field, "must be at most %d (got %d)", maxLifetimeSeconds, asked)
	case asked > 0:
		return asked, nil
	}
	if d := int(def / time.Second); d > 0 {
		return d, nil
	}
	return maxS, nil
}

// startLifetime is a new VM's lifetime: its hard timeout counts from its creation, and so does its idle time.
func startLifetime(spec *model.VMLifetime, created time.Time) *model.VMLifetime {
	if spec == nil {
		return nil
	}
	lt := *spec
	if lt.TimeoutSeconds > 0 {
		lt.ExpiresAt = ptr(created.Add(time.Duration(lt.TimeoutSeconds) * time.Second))
	}
	lt.LastActivityAt = ptr(created)
	return &lt
}

// PauseVM queues the pause of a running VM on the worker that hosts it. Pausing a paused VM succeeds at once
// (its task is recorded done); a VM in any other state cannot be paused.
func (s *Service) PauseVM(ctx context.Context, ownerID, id, priority string) (*model.Task, error) {
	return s.pauseResume(ctx, ownerID, id, priority, model.TaskVMPause, model.VMRunning, model.VMPaused)
}

// ResumeVM queues the resume of a paused VM; resuming a running VM succeeds at once.
func (s *Service) ResumeVM(ctx context.Context, ownerID, id, priority string) (*model.Task, error) {
	return s.pauseResume(ctx, ownerID, id, priority, model.TaskVMResume, model.VMPaused, model.VMRunning)
}

func (s *Service) pauseResume(ctx context.Context, ownerID, id, priority string, typ model.TaskType, from, to model.VMStatus) (*model.Task, error) {
	prio, err := parsePriority(priority, model.PriorityHigh)
	if err != nil {
		return nil, err
	}
	vm, err := s.GetVM(ctx, ownerID, id)
	if err != nil {
		return nil, err
	}
	switch vm.Status {
	case to:
		return s.recordDone(ctx, &model.Task{OwnerID: ownerID, Type: typ, Priority: prio, VMID: id, TargetWorker: vm.WorkerID},
			LifecyclePayload{VMID: id}, VMResult{VMID: id, Status: to})
	case from:
	default:
		return nil, fmt.Errorf("%w: vm %s is %s, it can only be %s when %s", ErrVMNotRunning, id, vm.Status,
			map[model.VMStatus]string{model.VMPaused: "paused", model.VMRunning: "resumed"}[to], from)
	}
	if err := s.checkWorker(ctx, vm.ID, vm.WorkerID); err != nil {
		return nil, err
	}
	t := &model.Task{OwnerID: ownerID, Type: typ, Priority: prio, VMID: id, TargetWorker: vm.WorkerID}
	if err := s.submit(ctx, t, LifecyclePayload{VMID: id}); err != nil {
		return nil, err
	}
	return t, nil
}

// LifecyclePayload is the payload of vm:pause and vm:resume, and of a vm:delete the reaper asks for. Reason, when
// set, says why the worker itself asked ("idle for 5m0s", "expired"): it is logged and announced.
type LifecyclePayload struct {
	VMID   string `json:"vm_id"`
	Reason string `json:"reason,omitempty"`
}

// Keepalive counts as activity in one of the owner's VMs (its idle time starts again) and, with seconds > 0,
// pushes its hard expiry to at least that far from now. seconds 0 renews the VM's own timeout from now. A VM
// without a lifetime has nothing to extend and is returned as it is; a paused VM stays paused.
func (s *Service) Keepalive(ctx context.Context, ownerID, id string, seconds int) (*model.VM, error) {
	if seconds < 0 {
		return nil, invalid("seconds", "must not be negative (got %d)", seconds)
	}
	if maxS := int(s.limits.MaxVMTimeout / time.Second); maxS > 0 && seconds > maxS {
		return nil, invalid("seconds", "must be at most %d, this server's maximum timeout (got %d)", maxS, seconds)
	}
	if seconds > maxLifetimeSeconds {
		return nil, invalid("seconds", "must be at most %d (got %d)", maxLifetimeSeconds, seconds)
	}
	vm, err := s.GetVM(ctx, ownerID, id)
	if err != nil {
		return nil, err
	}
	switch vm.Status {
	case model.VMPending, model.VMCreating, model.VMRunning, model.VMPaused:
	default:
		return nil, fmt.Errorf("%w: vm %s is %s", ErrVMNotRunning, id, vm.Status)
	}
	out, err := s.store.VMs().Update(ctx, id, func(v *model.VM) error {
		l := v.Lifetime
		if l == nil {
			return errNoLifetime
		}
		n := now()
		if l.LastActivityAt == nil || l.LastActivityAt.Before(n) {
			l.LastActivityAt = &n
		}
		extend := seconds
		if extend == 0 {
			extend = l.TimeoutSeconds
		}
		if l.ExpiresAt != nil && extend > 0 {
			if until := n.Add(time.Duration(extend) * time.Second); until.After(*l.ExpiresAt) {
				l.ExpiresAt = &until
			}
		}
		return nil
	})
	if errors.Is(err, errNoLifetime) {
		return vm, nil
	}
	return out, err
}

var errNoLifetime = errors.New("vm has no lifetime")
