package task

import (
	"context"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// WorkerAPIURLKey is the key, in a worker's Metadata, of the URL of its internal API (internal/workerapi), which
// serves the interactive operations on its VMs: files, background processes and shells.
const WorkerAPIURLKey = "api_url"

// UnavailableError is ErrUnavailable with a reason written for users: it says what is wrong without naming hosts
// or workers, which stay in the log (Error gives the full detail).
type UnavailableError struct {
	Reason string
	Detail string
}

func (e *UnavailableError) Error() string { return e.Detail }
func (e *UnavailableError) Unwrap() error { return ErrUnavailable }

// WorkerEndpoint is where the interactive operations on a VM are served.
type WorkerEndpoint struct {
	VMID     string
	WorkerID string
	// URL is the base URL of the worker's internal API.
	URL string
}

// VMEndpoint finds the worker API that serves interactive operations on one of the owner's VMs. Another owner's
// VM is not found (model.ErrNotFound), a VM that is not running is ErrVMNotRunning, and a worker that stopped
// sending heartbeats, or that advertises no API, is an *UnavailableError.
func (s *Service) VMEndpoint(ctx context.Context, ownerID, vmID string) (*WorkerEndpoint, error) {
	vm, err := s.GetVM(ctx, ownerID, vmID)
	if err != nil {
		return nil, err
	}
	if vm.Status != model.VMRunning {
		return nil, notRunning(vmID, vm.Status)
	}
	if vm.WorkerID == "" {
		return nil, &UnavailableError{Reason: "the vm has no worker yet; retry later",
			Detail: fmt.Sprintf("vm %s is running but has no worker", vmID)}
	}
	w, err := s.liveWorker(ctx, vm.ID, vm.WorkerID)
	if err != nil {
		return nil, err
	}
	url := w.Metadata[WorkerAPIURLKey]
	if url == "" {
		return nil, &UnavailableError{
			Reason: "the worker hosting this vm does not serve files, processes or shells (it runs an older version)",
			Detail: fmt.Sprintf("worker %s of vm %s advertises no %s", w.ID, vmID, WorkerAPIURLKey),
		}
	}
	return &WorkerEndpoint{VMID: vm.ID, WorkerID: w.ID, URL: url}, nil
}

func staleWord(status string) string {
	if status == "active" {
		return "not responding"
	}
	return status
}

// MaxTimeout is the longest timeout a command may ask for (the limit of background processes too).
func (s *Service) MaxTimeout() time.Duration { return s.limits.MaxTimeout }
