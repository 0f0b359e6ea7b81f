// Package model holds Aetherium's domain types: VMs and their state machine, tasks, executions, jobs, workers and
// API keys. It depends on nothing but the standard library so every layer can share it.
package model

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors shared by every layer. Implementations wrap them with %w so callers test with errors.Is.
var (
	ErrNotFound          = errors.New("not found")
	ErrConflict          = errors.New("conflict")
	ErrInvalidTransition = errors.New("invalid state transition")
	ErrInvalidInput      = errors.New("invalid input")
)

// NotFoundError is the one error of a missing resource, whichever layer finds it missing: the store (no row) and
// the service (a row of another owner) both return it, so that the two answers are byte for byte the same and an
// id of another owner cannot be told from an id that does not exist. It wraps ErrNotFound.
type NotFoundError struct {
	Kind string // "vm", "execution", ...
	ID   string
}

// NotFound returns the *NotFoundError of kind and id.
func NotFound(kind, id string) error { return &NotFoundError{Kind: kind, ID: id} }

// Error is `<kind> "<id>": not found`, the id quoted (it comes from the caller and may hold anything).
func (e *NotFoundError) Error() string { return fmt.Sprintf("%s %q: not found", e.Kind, e.ID) }

// Unwrap makes errors.Is(err, ErrNotFound) hold.
func (e *NotFoundError) Unwrap() error { return ErrNotFound }

// VMStatus is a VM's lifecycle state. Transitions are checked by CanTransition.
type VMStatus string

const (
	VMPending  VMStatus = "pending"
	VMCreating VMStatus = "creating"
	VMRunning  VMStatus = "running"
	// VMPaused: the guest is frozen (vCPUs stopped, container frozen); it keeps its memory, disk and network lease
	// and takes no commands until it is resumed.
	VMPaused   VMStatus = "paused"
	VMStopping VMStatus = "stopping"
	VMStopped  VMStatus = "stopped"
	VMDeleted  VMStatus = "deleted"
	VMFailed   VMStatus = "failed"
)

// vmTransitions lists the legal next states of each state. Deleted is terminal. Failed and stopped VMs can only
// be deleted (or stopped again, which is a no-op transition allowed for idempotent retries).
var vmTransitions = map[VMStatus][]VMStatus{
	VMPending:  {VMCreating, VMFailed, VMStopping, VMDeleted},
	VMCreating: {VMRunning, VMFailed, VMStopping},
	VMRunning:  {VMPaused, VMStopping, VMStopped, VMFailed},
	VMPaused:   {VMRunning, VMStopping, VMFailed},
	VMStopping: {VMStopped, VMDeleted, VMFailed},
	VMStopped:  {VMStopping, VMDeleted, VMFailed},
	VMFailed:   {VMStopping, VMDeleted},
	VMDeleted:  {},
}

// Valid reports whether s is a known status.
func (s VMStatus) Valid() bool { _, ok := vmTransitions[s]; return ok }

// Terminal reports whether no further transition is possible.
func (s VMStatus) Terminal() bool { return s == VMDeleted }

// CanTransition reports whether a VM may move from s to next. Staying in the same state is always allowed so that
// retried (idempotent) steps do not fail.
func (s VMStatus) CanTransition(next VMStatus) bool {
	if s == next {
		return true
	}
	for _, n := range vmTransitions[s] {
		if n == next {
			return true
		}
	}
	return false
}

// CheckTransition returns an error wrapping ErrInvalidTransition when s cannot move to next.
func (s VMStatus) CheckTransition(next VMStatus) error {
	if !next.Valid() {
		return fmt.Errorf("%w: unknown vm status %q", ErrInvalidTransition, next)
	}
	if !s.CanTransition(next) {
		return fmt.Errorf("%w: vm cannot go from %s to %s", ErrInvalidTransition, s, next)
	}
	return nil
}

// VM is a virtual machine (or container, for the Docker backend) owned by one API key owner and hosted by one worker.
type VM struct {
	ID         string            `json:"id"`
	OwnerID    string            `json:"owner_id"`
	Name       string            `json:"name"`
	Status     VMStatus          `json:"status"`
	VCPUCount  int               `json:"vcpu_count"`
	MemoryMB   int               `json:"memory_mb"`
	Image      string            `json:"image,omitempty"`
	KernelPath string            `json:"kernel_path,omitempty"`
	RootfsPath string            `json:"rootfs_path,omitempty"`
	SocketPath string            `json:"socket_path,omitempty"`
	WorkerID   string            `json:"worker_id,omitempty"`
	Error      string            `json:"error,omitempty"`
	Metadata   map[string]string `json:"metadata,omitempty"`
	// Network is the VM's egress policy (asked for at create) and the address it got; nil when the backend gives
	// VMs no network.
	Network *VMNetwork `json:"network,omitempty"`
	// Tools are the tools asked for at create ("node@24", "jq"); InstalledTools maps each tool the VM has to its
	// version (baked into its template or installed at create).
	Tools          []string          `json:"tools,omitempty"`
	InstalledTools map[string]string `json:"installed_tools,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	StartedAt      *time.Time        `json:"started_at,omitempty"`
	StoppedAt      *time.Time        `json:"stopped_at,omitempty"`
	// Lifetime is how long the VM may live and idle (see docs/architecture.md, "VM lifetimes"); nil: for ever.
	Lifetime *VMLifetime `json:"lifetime,omitempty"`
}

// OnIdle says what happens to a VM idle for its idle timeout.
type OnIdle string

// What an idle VM becomes.
const (
	OnIdlePause  OnIdle = "pause"
	OnIdleDelete OnIdle = "delete"
)

// Valid reports whether o is a known action.
func (o OnIdle) Valid() bool { return o == OnIdlePause || o == OnIdleDelete }

// VMLifetime bounds a VM's life. A hard timeout always deletes the VM at ExpiresAt, busy or not; an idle timeout
// pauses or deletes it (OnIdle) once nothing has happened in it for that long (commands, shell input and output,
// file transfers, agent runs, background processes printing; never API reads).
type VMLifetime struct {
	TimeoutSeconds     int        `json:"timeout_seconds,omitempty"`
	ExpiresAt          *time.Time `json:"expires_at,omitempty"`
	IdleTimeoutSeconds int        `json:"idle_timeout_seconds,omitempty"`
	OnIdle             OnIdle     `json:"on_idle,omitempty"`
	// LastActivityAt is when the VM's worker last saw activity in it, saved in batches (the worker keeps the
	// newest in memory), or when a keepalive refreshed it.
	LastActivityAt *time.Time `json:"last_activity_at,omitempty"`
}

// IsSet reports whether l bounds anything.
func (l *VMLifetime) IsSet() bool {
	return l != nil && (l.ExpiresAt != nil || l.IdleTimeoutSeconds > 0)
}

// VMNetwork is a VM's network: the egress policy it was created with and the address it was given.
type VMNetwork struct {
	Egress  EgressPolicy `json:"egress"`
	IP      string       `json:"ip,omitempty"`
	MAC     string       `json:"mac,omitempty"`
	Gateway string       `json:"gateway,omitempty"`
}

// EgressPolicy says what a VM may connect to. Empty: the internet, not private ranges.
type EgressPolicy struct {
	AllowCIDRs   []string `json:"allow_cidrs,omitempty"`
	DenyCIDRs    []string `json:"deny_cidrs,omitempty"`
	AllowDomains []string `json:"allow_domains,omitempty"`
	DenyDomains  []string `json:"deny_domains,omitempty"`
}

// TaskType names a kind of asynchronous work.
type TaskType string

const (
	TaskVMCreate  TaskType = "vm:create"
	TaskVMExecute TaskType = "vm:execute"
	TaskVMTools   TaskType = "vm:tools"
	TaskVMDelete  TaskType = "vm:delete"
	TaskVMPause   TaskType = "vm:pause"
	TaskVMResume  TaskType = "vm:resume"
	TaskJobRun    TaskType = "job:run"
	TaskRunAgent  TaskType = "run:agent"
	// TaskWebhookProcess handles a recorded webhook delivery (internal/integrations); its payload names the record.
	TaskWebhookProcess TaskType = "webhook:process"
)

// TaskStatus is where a task is in its life.
type TaskStatus string

const (
	TaskPending    TaskStatus = "pending"
	TaskProcessing TaskStatus = "processing"
	TaskCompleted  TaskStatus = "completed"
	TaskFailed     TaskStatus = "failed"
)

// Done reports whether the task has reached a final state.
func (s TaskStatus) Done() bool { return s == TaskCompleted || s == TaskFailed }

// Priority selects the shared queue a task goes to. Higher priorities are served more often (weighted, not strict).
type Priority string

const (
	PriorityCritical Priority = "critical"
	PriorityHigh     Priority = "high"
	PriorityDefault  Priority = "default"
	PriorityLow      Priority = "low"
)

// Priorities lists every priority, highest first.
var Priorities = []Priority{PriorityCritical, PriorityHigh, PriorityDefault, PriorityLow}

// PriorityWeights are the relative shares each priority gets when all have work.
var PriorityWeights = map[Priority]int{PriorityCritical: 6, PriorityHigh: 3, PriorityDefault: 2, PriorityLow: 1}

// Valid reports whether p is a known priority.
func (p Priority) Valid() bool { _, ok := PriorityWeights[p]; return ok }

// Task is a persisted unit of asynchronous work. The queue carries its id; the tasks table is the source of truth
// for its status, which every queue implementation mirrors as it runs the task.
type Task struct {
	ID       string          `json:"id"`
	OwnerID  string          `json:"owner_id"`
	Type     TaskType        `json:"type"`
	Status   TaskStatus      `json:"status"`
	Priority Priority        `json:"priority"`
	Payload  json.RawMessage `json:"payload,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    string          `json:"error,omitempty"`
	VMID     string          `json:"vm_id,omitempty"`
	JobID    string          `json:"job_id,omitempty"`
	// TargetWorker, when set, pins the task to that worker's own queue (worker affinity).
	TargetWorker string `json:"target_worker,omitempty"`
	// WorkerID is the worker that last picked the task up.
	WorkerID    string     `json:"worker_id,omitempty"`
	MaxRetries  int        `json:"max_retries"`
	RetryCount  int        `json:"retry_count"`
	CreatedAt   time.Time  `json:"created_at"`
	UpdatedAt   time.Time  `json:"updated_at"`
	ScheduledAt *time.Time `json:"scheduled_at,omitempty"`
	StartedAt   *time.Time `json:"started_at,omitempty"`
	CompletedAt *time.Time `json:"completed_at,omitempty"`
}

// ExecutionStatus is where one command run is in its life.
type ExecutionStatus string

const (
	ExecutionPending   ExecutionStatus = "pending"
	ExecutionRunning   ExecutionStatus = "running"
	ExecutionCompleted ExecutionStatus = "completed" // the command ran and exited (any exit code)
	ExecutionFailed    ExecutionStatus = "failed"    // the command could not be run or its result was lost
)

// Execution is one command run in a VM, with its captured output.
type Execution struct {
	ID              string            `json:"id"`
	OwnerID         string            `json:"owner_id"`
	VMID            string            `json:"vm_id"`
	JobID           string            `json:"job_id,omitempty"`
	TaskID          string            `json:"task_id,omitempty"`
	Seq             int               `json:"seq"` // position within a job, 0 otherwise
	Status          ExecutionStatus   `json:"status"`
	Command         string            `json:"command"`
	Args            []string          `json:"args"`
	Env             map[string]string `json:"env,omitempty"`
	SecretEnv       map[string]string `json:"secret_env,omitempty"` // var -> secret name; values are injected at run time, never stored
	WorkingDir      string            `json:"working_dir,omitempty"`
	User            string            `json:"user,omitempty"` // run as this guest user (name or uid[:gid]); empty: root
	TimeoutSeconds  int               `json:"timeout_seconds,omitempty"`
	ExitCode        *int              `json:"exit_code,omitempty"`
	PeakMemoryKB    *int64            `json:"peak_memory_kb,omitempty"`
	Stdout          string            `json:"stdout"`
	Stderr          string            `json:"stderr"`
	StdoutTruncated bool              `json:"stdout_truncated"`
	StderrTruncated bool              `json:"stderr_truncated"`
	TimedOut        bool              `json:"timed_out"`
	Error           string            `json:"error,omitempty"`
	WorkerID        string            `json:"worker_id,omitempty"`
	CreatedAt       time.Time         `json:"created_at"`
	StartedAt       *time.Time        `json:"started_at,omitempty"`
	CompletedAt     *time.Time        `json:"completed_at,omitempty"`
	DurationMS      *int64            `json:"duration_ms,omitempty"`
}

// JobStatus is where a multi-command job is in its life.
type JobStatus string

const (
	JobPending   JobStatus = "pending"
	JobRunning   JobStatus = "running"
	JobCompleted JobStatus = "completed" // every command ran (see executions for exit codes)
	JobFailed    JobStatus = "failed"    // stopped early: a command failed with stop_on_error, or infrastructure failed
)

// JobCommand is one command of a job.
type JobCommand struct {
	Command        string            `json:"command"`
	Args           []string          `json:"args,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	SecretEnv      map[string]string `json:"secret_env,omitempty"`
	WorkingDir     string            `json:"working_dir,omitempty"`
	User           string            `json:"user,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
}

// VMSpec describes a VM to create.
type VMSpec struct {
	Name     string            `json:"name"`
	VCPUs    int               `json:"vcpus"`
	MemoryMB int               `json:"memory_mb"`
	Image    string            `json:"image,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Network  *VMNetwork        `json:"network,omitempty"`
	Tools    []string          `json:"tools,omitempty"` // normalized "name" or "name@version"
	Lifetime *VMLifetime       `json:"lifetime,omitempty"`
}

// Job runs several commands in order in one VM, optionally creating the VM first and deleting it after.
type Job struct {
	ID            string       `json:"id"`
	OwnerID       string       `json:"owner_id"`
	VMID          string       `json:"vm_id,omitempty"`
	VMSpec        *VMSpec      `json:"vm_spec,omitempty"`
	Commands      []JobCommand `json:"commands"`
	StopOnError   bool         `json:"stop_on_error"`
	DeleteVMAfter bool         `json:"delete_vm_after"`
	Status        JobStatus    `json:"status"`
	TaskID        string       `json:"task_id,omitempty"`
	Error         string       `json:"error,omitempty"`
	CreatedAt     time.Time    `json:"created_at"`
	UpdatedAt     time.Time    `json:"updated_at"`
	StartedAt     *time.Time   `json:"started_at,omitempty"`
	CompletedAt   *time.Time   `json:"completed_at,omitempty"`
}

// Worker is a process that runs tasks and hosts VMs. It proves it is alive with a heartbeat.
type Worker struct {
	ID            string            `json:"id"`
	Hostname      string            `json:"hostname"`
	Backend       string            `json:"backend"`
	Status        string            `json:"status"` // "active" or "stopped"
	Capacity      int               `json:"capacity"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	StartedAt     time.Time         `json:"started_at"`
	LastHeartbeat time.Time         `json:"last_heartbeat"`
	// Drained is set by an admin: the worker takes no new VMs, and its VMs stay until deleted. A heartbeat never
	// changes it.
	Drained bool `json:"drained"`
}

// Quota bounds what one owner may hold at once (VMs that are not stopped, failed or deleted); 0 is no limit.
type Quota struct {
	OwnerID     string    `json:"owner_id"`
	MaxVMs      int       `json:"max_vms"`
	MaxVCPUs    int       `json:"max_vcpus"`
	MaxMemoryMB int       `json:"max_memory_mb"`
	UpdatedAt   time.Time `json:"updated_at"`
}

// APIKey is a bearer credential. Only a hash of the secret is stored; the prefix identifies it in lists and logs.
type APIKey struct {
	ID      string `json:"id"`
	OwnerID string `json:"owner_id"`
	Name    string `json:"name"`
	Prefix  string `json:"prefix"`
	Hash    string `json:"-"`
	// Role is "admin" or "user" (RoleAdmin, RoleUser); empty is stored as "user".
	Role string `json:"role"`
	// Scopes narrow what the key may do (internal/auth); none: every scope of its role.
	Scopes     []string   `json:"scopes,omitempty"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at,omitempty"`
	LastUsedAt *time.Time `json:"last_used_at,omitempty"`
	RevokedAt  *time.Time `json:"revoked_at,omitempty"`
}

// Roles of API keys.
const (
	RoleAdmin = "admin"
	RoleUser  = "user"
)

// IsAdmin reports whether the key has the admin role.
func (k *APIKey) IsAdmin() bool { return k.Role == RoleAdmin }
