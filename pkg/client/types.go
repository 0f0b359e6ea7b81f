// Package client is the Go SDK of Aetherium's REST API v1. The wire types in this file are shared with the server,
// so the SDK and the API cannot drift apart.
package client

import (
	"encoding/json"
	"time"
)

// ErrorBody is the envelope of every error response: {"error": {"code": "...", "message": "..."}}.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail is a machine-readable code and a human message.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// Error codes returned by the API.
const (
	CodeBadRequest       = "bad_request"
	CodeInvalidJSON      = "invalid_json"
	CodeValidation       = "validation_failed"
	CodeUnauthorized     = "unauthorized"
	CodeNotFound         = "not_found"
	CodeConflict         = "conflict"
	CodeVMNotRunning     = "vm_not_running"
	CodeTooLarge         = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeRateLimited      = "rate_limited"
	CodeInternal         = "internal_error"
	CodeUnavailable      = "service_unavailable"
)

// CreateVMRequest is the body of POST /api/v1/vms.
type CreateVMRequest struct {
	Name     string            `json:"name"`
	VCPUs    int               `json:"vcpus,omitempty"`
	MemoryMB int               `json:"memory_mb,omitempty"`
	Image    string            `json:"image,omitempty"`
	Priority string            `json:"priority,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
}

// VM is a VM as the API shows it.
type VM struct {
	ID        string            `json:"id"`
	Name      string            `json:"name"`
	Status    string            `json:"status"`
	VCPUs     int               `json:"vcpus"`
	MemoryMB  int               `json:"memory_mb"`
	Image     string            `json:"image,omitempty"`
	WorkerID  string            `json:"worker_id,omitempty"`
	Error     string            `json:"error,omitempty"`
	Metadata  map[string]string `json:"metadata,omitempty"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	StartedAt *time.Time        `json:"started_at,omitempty"`
	StoppedAt *time.Time        `json:"stopped_at,omitempty"`
}

// VMAccepted answers POST /api/v1/vms: 202 with the task, or 201 with the finished VM when ?wait was given and the
// task finished in time.
type VMAccepted struct {
	TaskID string `json:"task_id"`
	VM     VM     `json:"vm"`
	Task   *Task  `json:"task,omitempty"`
}

// VMList answers GET /api/v1/vms.
type VMList struct {
	VMs []VM `json:"vms"`
	// NextCursor, when not empty, is passed as ?cursor= to get the next page.
	NextCursor string `json:"next_cursor,omitempty"`
}

// ExecuteRequest is the body of POST /api/v1/vms/{id}/execute.
type ExecuteRequest struct {
	Command        string            `json:"command"`
	Args           []string          `json:"args,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	WorkingDir     string            `json:"working_dir,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
	Priority       string            `json:"priority,omitempty"`
}

// ExecuteAccepted answers POST /api/v1/vms/{id}/execute (202), or carries the finished execution (200) with ?wait.
type ExecuteAccepted struct {
	TaskID      string     `json:"task_id"`
	ExecutionID string     `json:"execution_id"`
	Execution   *Execution `json:"execution,omitempty"`
}

// Execution is one command run.
type Execution struct {
	ID              string            `json:"id"`
	VMID            string            `json:"vm_id"`
	JobID           string            `json:"job_id,omitempty"`
	TaskID          string            `json:"task_id,omitempty"`
	Status          string            `json:"status"`
	Command         string            `json:"command"`
	Args            []string          `json:"args"`
	Env             map[string]string `json:"env,omitempty"`
	WorkingDir      string            `json:"working_dir,omitempty"`
	ExitCode        *int              `json:"exit_code"`
	Stdout          string            `json:"stdout"`
	Stderr          string            `json:"stderr"`
	StdoutTruncated bool              `json:"stdout_truncated"`
	StderrTruncated bool              `json:"stderr_truncated"`
	TimedOut        bool              `json:"timed_out"`
	Error           string            `json:"error,omitempty"`
	WorkerID        string            `json:"worker_id,omitempty"`
	CreatedAt       time.Time         `json:"created_at"`
	StartedAt       *time.Time        `json:"started_at"`
	CompletedAt     *time.Time        `json:"completed_at"`
	DurationMS      *int64            `json:"duration_ms"`
}

// ExecutionList answers GET /api/v1/vms/{id}/executions.
type ExecutionList struct {
	Executions []Execution `json:"executions"`
	NextCursor string      `json:"next_cursor,omitempty"`
}

// TaskAccepted answers mutating calls that only start a task (DELETE /api/v1/vms/{id}).
type TaskAccepted struct {
	TaskID string `json:"task_id"`
	Task   *Task  `json:"task,omitempty"`
}

// Task is an asynchronous unit of work.
type Task struct {
	ID          string          `json:"id"`
	Type        string          `json:"type"`
	Status      string          `json:"status"`
	Priority    string          `json:"priority"`
	VMID        string          `json:"vm_id,omitempty"`
	JobID       string          `json:"job_id,omitempty"`
	WorkerID    string          `json:"worker_id,omitempty"`
	Result      json.RawMessage `json:"result,omitempty"`
	Error       string          `json:"error,omitempty"`
	Attempts    int             `json:"attempts"`
	MaxRetries  int             `json:"max_retries"`
	CreatedAt   time.Time       `json:"created_at"`
	UpdatedAt   time.Time       `json:"updated_at"`
	ScheduledAt *time.Time      `json:"scheduled_at,omitempty"`
	StartedAt   *time.Time      `json:"started_at,omitempty"`
	CompletedAt *time.Time      `json:"completed_at,omitempty"`
}

// JobCommand is one command of a job.
type JobCommand struct {
	Command        string            `json:"command"`
	Args           []string          `json:"args,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	WorkingDir     string            `json:"working_dir,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
}

// CreateJobRequest is the body of POST /api/v1/jobs: exactly one of VMID and VM.
type CreateJobRequest struct {
	VMID          string           `json:"vm_id,omitempty"`
	VM            *CreateVMRequest `json:"vm,omitempty"`
	Commands      []JobCommand     `json:"commands"`
	StopOnError   bool             `json:"stop_on_error,omitempty"`
	DeleteVMAfter bool             `json:"delete_vm_after,omitempty"`
	Priority      string           `json:"priority,omitempty"`
}

// Job is a multi-command run with its executions.
type Job struct {
	ID            string       `json:"id"`
	VMID          string       `json:"vm_id,omitempty"`
	Status        string       `json:"status"`
	TaskID        string       `json:"task_id"`
	Commands      []JobCommand `json:"commands"`
	StopOnError   bool         `json:"stop_on_error"`
	DeleteVMAfter bool         `json:"delete_vm_after"`
	Error         string       `json:"error,omitempty"`
	Executions    []Execution  `json:"executions"`
	CreatedAt     time.Time    `json:"created_at"`
	UpdatedAt     time.Time    `json:"updated_at"`
	StartedAt     *time.Time   `json:"started_at,omitempty"`
	CompletedAt   *time.Time   `json:"completed_at,omitempty"`
}

// JobAccepted answers POST /api/v1/jobs: 202, or 200 with the finished job when ?wait was given.
type JobAccepted struct {
	TaskID string `json:"task_id"`
	JobID  string `json:"job_id"`
	Job    *Job   `json:"job,omitempty"`
}

// Health answers GET /api/v1/health.
type Health struct {
	Status  string `json:"status"`
	Version string `json:"version"`
}

// Ready answers GET /api/v1/ready: 200 when every check passes, 503 otherwise.
type Ready struct {
	Status string            `json:"status"` // "ready" or "not_ready"
	Checks map[string]string `json:"checks"` // name -> "ok" or the error
}
