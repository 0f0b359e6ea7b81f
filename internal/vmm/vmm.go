// Package vmm defines the VM orchestrator seam. Backends (qemu, firecracker and docker, in the subpackages of
// those names) implement Orchestrator; the worker drives them and never knows which one it has.
package vmm

import (
	"context"
	"errors"
	"io"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
)

// ErrNotFound is returned (wrapped) when a backend has no VM with the given id.
var ErrNotFound = errors.New("vm not found in backend")

// ErrNotRunning is returned (wrapped) when an operation needs a running VM.
var ErrNotRunning = errors.New("vm not running")

// ErrInvalidConfig is returned (wrapped) when a VM cannot be made as asked (an unknown image, an impossible size):
// retrying cannot help, so the worker fails the VM at once with the backend's message.
var ErrInvalidConfig = errors.New("invalid vm configuration")

// VMConfig describes a VM to create.
type VMConfig struct {
	ID       string // the store's VM id; the backend names its resources after it
	Name     string
	VCPUs    int
	MemoryMB int
	// Image selects the root filesystem (a Docker image for the docker backend). Empty: the backend's default.
	Image string
	// WorkerID is recorded on the backend's resources so that a restarted worker finds what it owns.
	WorkerID string
	// Egress is the VM's egress policy, for backends that give VMs a network (nil: the default policy).
	Egress *EgressPolicy
}

// EgressPolicy says what a VM may connect to: IPv4 CIDRs and DNS names (validated by the API).
type EgressPolicy struct {
	AllowCIDRs, DenyCIDRs, AllowDomains, DenyDomains []string
}

// IsSet reports whether p asks for anything (a nil or empty policy means the default).
func (p *EgressPolicy) IsSet() bool {
	return p != nil && len(p.AllowCIDRs)+len(p.DenyCIDRs)+len(p.AllowDomains)+len(p.DenyDomains) > 0
}

// NetworkInfo is a VM's address on its host's network.
type NetworkInfo struct {
	IP, MAC, Gateway string
}

// State is what a backend knows about a VM.
type State string

const (
	StateCreated State = "created" // resources exist, not started
	StateRunning State = "running"
	StateStopped State = "stopped"
)

// Instance is a backend's view of one VM.
type Instance struct {
	ID         string
	Name       string
	State      State
	WorkerID   string
	Image      string
	SocketPath string // where the host reaches the agent
	// Detail says why a VM stopped, when the backend knows (exit code, OOM kill...).
	Detail string
	// Network is the VM's address, when the backend gives it a network.
	Network *NetworkInfo
}

// Orchestrator runs VMs on this host. Every method is idempotent, so a retried task never fails because a previous
// attempt got half way: creating an existing VM returns it, deleting a missing VM succeeds.
type Orchestrator interface {
	// Name is the backend's name ("docker", "qemu", "firecracker").
	Name() string
	CreateVM(ctx context.Context, cfg VMConfig) (*Instance, error)
	// StartVM boots the VM and returns once its agent answers, or fails with a clear error at ctx's deadline.
	StartVM(ctx context.Context, id string) error
	StopVM(ctx context.Context, id string) error
	// DeleteVM stops the VM if needed and removes everything the backend made for it.
	DeleteVM(ctx context.Context, id string) error
	GetVMStatus(ctx context.Context, id string) (*Instance, error)
	ExecuteCommand(ctx context.Context, id string, req agent.ExecRequest) (*agent.ExecResult, error)
	// ExecuteStream runs a command like ExecuteCommand but copies its stdout and stderr to the writers as they are
	// produced (nil discards); the result holds no output. The writers are called from one goroutine, one at a
	// time, and may block to slow the command down. A writer's error kills the command and is returned.
	ExecuteStream(ctx context.Context, id string, req agent.ExecRequest, stdout, stderr io.Writer) (*agent.ExecResult, error)
	// Agent returns the client of the VM's guest agent, for interactive work (files, PTY, background processes).
	// The backend owns it: callers must not Close it. It fails with ErrNotFound or ErrNotRunning like ExecuteCommand.
	Agent(ctx context.Context, id string) (*agentclient.Client, error)
	// ListVMs lists the VMs of this worker (as given by VMConfig.WorkerID) that the backend knows.
	ListVMs(ctx context.Context) ([]*Instance, error)
	Health(ctx context.Context) error
	Close() error
}

// Pauser is implemented by backends that can freeze a VM and let it run again (issue 15). A paused VM keeps its
// memory, disk, processes and network address, uses no CPU, and takes no commands: its agent does not answer.
// Both methods are idempotent (pausing a paused VM succeeds), fail with ErrNotFound or ErrNotRunning (wrapped)
// like ExecuteCommand, and leave the VM as it was on any other error. A paused VM is listed as StateRunning, so
// that a restarted worker adopts it as it is; Paused says which it is.
type Pauser interface {
	PauseVM(ctx context.Context, id string) error
	ResumeVM(ctx context.Context, id string) error
	// Paused reports whether the VM is paused now.
	Paused(ctx context.Context, id string) (bool, error)
}
