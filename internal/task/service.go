// Package task is Aetherium's application layer: it validates requests, stores VMs, executions and jobs, turns each
// change of them (create, delete, execute, tools, jobs) into a persisted task on the queue, and lets callers wait
// for a task's end. Files, processes and shells are not tasks: the API proxies them to the VM's worker after
// VMEndpoint's checks. The REST API is a thin layer above it; workers run the tasks it creates (see internal/worker).
package task

import (
	"errors"
	"log/slog"
	"time"

	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/tools"
)

// ErrVMNotRunning is returned (wrapped) when a VM cannot take commands in its current state.
var ErrVMNotRunning = errors.New("vm is not running")

// ErrUnavailable is returned (wrapped) when a dependency (queue, worker) cannot take the request now.
var ErrUnavailable = errors.New("service unavailable")

// ValidationError is bad input, with the field it concerns. It wraps model.ErrInvalidInput.
type ValidationError struct {
	Field   string
	Message string
}

func (e *ValidationError) Error() string { return e.Field + ": " + e.Message }
func (e *ValidationError) Unwrap() error { return model.ErrInvalidInput }

// Limits bound what a request may ask for.
type Limits struct {
	DefaultVCPUs     int
	MaxVCPUs         int
	DefaultMemoryMB  int
	MinMemoryMB      int
	MaxMemoryMB      int
	MaxCommands      int           // per job
	MaxTimeout       time.Duration // per command
	MaxRetries       int           // infrastructure retries per task
	MaxOutputBytes   int           // stored per stream per execution
	WorkerStaleAfter time.Duration // a worker whose heartbeat is older cannot take pinned tasks
	// VM lifetimes (lifecycle.go): the hard timeout and idle timeout a VM gets when its create request names
	// none (0: none), and the most it may ask for (0: no bound).
	DefaultVMTimeout, MaxVMTimeout         time.Duration
	DefaultVMIdleTimeout, MaxVMIdleTimeout time.Duration
}

// DefaultLimits are the limits used when none are configured.
func DefaultLimits() Limits {
	return Limits{
		DefaultVCPUs: 1, MaxVCPUs: 32,
		DefaultMemoryMB: 512, MinMemoryMB: 128, MaxMemoryMB: 65536,
		MaxCommands: 100, MaxTimeout: 24 * time.Hour, MaxRetries: 3,
		MaxOutputBytes: 1 << 20, WorkerStaleAfter: 30 * time.Second,
	}
}

// Service implements the API's use cases.
type Service struct {
	store  store.Store
	queue  queue.Queue
	bus    events.Bus
	limits Limits
	log    *slog.Logger
	tools  *tools.Catalog
	// secrets holds the owners' secrets; nil when no secrets key is configured.
	secrets *secrets.Manager
	// agents is the catalog runs start agents from; gitHosts maps the credential proxy's git hosts to the secret
	// each uses by default.
	agents   *agents.Catalog
	gitHosts map[string]string
	// placer serialises the quota checks and placements of this process's new VMs and keeps its reservations.
	placer placer
}

// Option configures a Service.
type Option func(*Service)

// WithLogger sets the logger of what the service notices but does not return (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(s *Service) { s.log = l } }

// WithToolCatalog sets the catalog that create requests' tools are checked against (default tools.Default()).
func WithToolCatalog(c *tools.Catalog) Option { return func(s *Service) { s.tools = c } }

// New returns a Service over its dependencies.
func New(st store.Store, q queue.Queue, bus events.Bus, limits Limits, opts ...Option) *Service {
	s := &Service{store: st, queue: q, bus: bus, limits: limits, log: slog.Default(), tools: tools.Default(),
		agents: agents.Default(), gitHosts: map[string]string{"github.com": "GITHUB_TOKEN", "gitlab.com": "GITLAB_TOKEN"}}
	for _, o := range opts {
		o(s)
	}
	return s
}

// Payloads carried by tasks. They hold ids only: the rows they point to are the source of truth.
type (
	// VMPayload is the payload of vm:create and vm:delete.
	VMPayload struct {
		VMID string `json:"vm_id"`
	}
	// ExecutePayload is the payload of vm:execute.
	ExecutePayload struct {
		VMID        string `json:"vm_id"`
		ExecutionID string `json:"execution_id"`
	}
	// ToolsPayload is the payload of vm:tools: normalized "name[@version]" entries.
	ToolsPayload struct {
		VMID  string   `json:"vm_id"`
		Tools []string `json:"tools"`
	}
	// JobPayload is the payload of job:run.
	JobPayload struct {
		JobID string `json:"job_id"`
	}
)

// Results recorded by the worker when a task completes.
type (
	// VMResult is the result of vm:create and vm:delete.
	VMResult struct {
		VMID   string         `json:"vm_id"`
		Status model.VMStatus `json:"status"`
		// ToolLog is what installing the VM's tools did, one line per step.
		ToolLog []string `json:"tool_log,omitempty"`
	}
	// ToolsResult is the result of vm:tools: every catalog tool the VM has now, and what installing did.
	ToolsResult struct {
		VMID           string            `json:"vm_id"`
		InstalledTools map[string]string `json:"installed_tools"`
		ToolLog        []string          `json:"tool_log,omitempty"`
	}
	// ExecuteResult is the result of vm:execute.
	ExecuteResult struct {
		ExecutionID string `json:"execution_id"`
		ExitCode    int    `json:"exit_code"`
	}
	// JobResult is the result of job:run.
	JobResult struct {
		JobID  string          `json:"job_id"`
		Status model.JobStatus `json:"status"`
	}
)
