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
	CodeBadRequest   = "bad_request"
	CodeInvalidJSON  = "invalid_json"
	CodeValidation   = "validation_failed"
	CodeUnauthorized = "unauthorized"
	CodeNotFound     = "not_found"
	CodeConflict     = "conflict"
	CodeVMNotRunning = "vm_not_running"
	// CodeVMPaused (409): the VM is paused and takes no commands, files or shells; resume it first.
	CodeVMPaused         = "vm_paused"
	CodeTooLarge         = "payload_too_large"
	CodeUnsupportedMedia = "unsupported_media_type"
	CodeRateLimited      = "rate_limited"
	CodeQuotaExceeded    = "quota_exceeded" // 403: a new VM beyond the owner's quota
	CodeNoCapacity       = "no_capacity"    // 503: no worker has room for the VM now
	CodeForbidden        = "forbidden"      // 403: the credential may not do this (a scope it lacks, an admin's route)
	CodeInternal         = "internal_error"
	CodeUnavailable      = "service_unavailable"
	// CodeNotImplemented: this server cannot answer that (log queries without a Loki).
	CodeNotImplemented = "not_implemented"
	// CodeRequestTimeout (408): the request's body did not arrive in time.
	CodeRequestTimeout = "request_timeout"
	// CodeIdempotencyKeyInvalid (400): an Idempotency-Key that is empty, longer than 255 characters, not
	// printable ASCII, or sent to a route that does not take one (file uploads).
	CodeIdempotencyKeyInvalid = "idempotency_key_invalid"
	// CodeIdempotencyKeyReused (422): the key was first used for a different request (method, path or body).
	CodeIdempotencyKeyReused = "idempotency_key_reused"
	// CodeIdempotencyInProgress (409): the first request with this key has not answered yet; retry later.
	CodeIdempotencyInProgress = "idempotency_in_progress"
)

// Idempotency headers: IdempotencyKeyHeader on a mutating request makes a retry of it get the first answer
// instead of running it again (keys are per API key owner and kept 24 h); IdempotentReplayedHeader is "true" on
// such a replayed answer.
const (
	IdempotencyKeyHeader     = "Idempotency-Key"
	IdempotentReplayedHeader = "Idempotent-Replayed"
)

// CreateVMRequest is the body of POST /api/v1/vms.
type CreateVMRequest struct {
	Name     string            `json:"name"`
	VCPUs    int               `json:"vcpus,omitempty"`
	MemoryMB int               `json:"memory_mb,omitempty"`
	Image    string            `json:"image,omitempty"`
	Priority string            `json:"priority,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	// Network sets the VM's egress policy (backends with host networking: qemu, firecracker).
	Network *NetworkRequest `json:"network,omitempty"`
	// Tools are installed when the VM's template lacks them: "jq", "node@24". ToolVersions pins versions by name
	// ("node": "22.12.0"), as an alternative to name@version.
	Tools        []string          `json:"tools,omitempty"`
	ToolVersions map[string]string `json:"tool_versions,omitempty"`
	// TimeoutSeconds is the VM's hard lifetime: it is deleted that long after its creation, busy or not (0: the
	// server's vm_default_timeout; the server's vm_max_timeout bounds it).
	TimeoutSeconds int `json:"timeout_seconds,omitempty"`
	// IdleTimeoutSeconds pauses or deletes the VM (OnIdle) once nothing has happened in it for that long (0: the
	// server's vm_default_idle_timeout; vm_max_idle_timeout bounds it).
	IdleTimeoutSeconds int `json:"idle_timeout_seconds,omitempty"`
	// OnIdle is "pause" (the default) or "delete".
	OnIdle string `json:"on_idle,omitempty"`
}

// KeepaliveRequest is the body of POST /api/v1/vms/{id}/keepalive (optional): it counts as activity, and pushes
// the VM's hard expiry to at least Seconds from now (0: the VM's own timeout_seconds).
type KeepaliveRequest struct {
	Seconds int `json:"seconds,omitempty"`
}

// AddToolsRequest asks for tools in a running VM (POST /api/v1/vms/{id}/tools).
type AddToolsRequest struct {
	Tools        []string          `json:"tools,omitempty"`
	ToolVersions map[string]string `json:"tool_versions,omitempty"`
	Priority     string            `json:"priority,omitempty"`
}

// NetworkRequest is the network part of a create request.
type NetworkRequest struct {
	Egress EgressPolicy `json:"egress"`
}

// EgressPolicy says what a VM may open connections to. Empty: the internet, but no private ranges (RFC 1918,
// link-local, CGNAT), other VMs or the host. CIDRs are IPv4 networks; between allow and deny the most specific
// prefix wins. AllowDomains, when set, is the only names the VM's resolver answers and, with AllowCIDRs, the only
// addresses it may reach; DenyDomains are never resolved.
type EgressPolicy struct {
	AllowCIDRs   []string `json:"allow_cidrs,omitempty"`
	DenyCIDRs    []string `json:"deny_cidrs,omitempty"`
	AllowDomains []string `json:"allow_domains,omitempty"`
	DenyDomains  []string `json:"deny_domains,omitempty"`
}

// VMNetwork is a VM's network as the API shows it.
type VMNetwork struct {
	Egress  EgressPolicy `json:"egress"`
	IP      string       `json:"ip,omitempty"`
	MAC     string       `json:"mac,omitempty"`
	Gateway string       `json:"gateway,omitempty"`
}

// VM is a VM as the API shows it.
type VM struct {
	ID       string            `json:"id"`
	Name     string            `json:"name"`
	Status   string            `json:"status"`
	VCPUs    int               `json:"vcpus"`
	MemoryMB int               `json:"memory_mb"`
	Image    string            `json:"image,omitempty"`
	WorkerID string            `json:"worker_id,omitempty"`
	Error    string            `json:"error,omitempty"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Network  *VMNetwork        `json:"network,omitempty"`
	// Tools are the tools asked for at create; InstalledTools maps every tool the VM has to its version.
	Tools          []string          `json:"tools,omitempty"`
	InstalledTools map[string]string `json:"installed_tools,omitempty"`
	CreatedAt      time.Time         `json:"created_at"`
	UpdatedAt      time.Time         `json:"updated_at"`
	StartedAt      *time.Time        `json:"started_at,omitempty"`
	StoppedAt      *time.Time        `json:"stopped_at,omitempty"`
	// Lifetime: the hard timeout and when it deletes the VM, the idle timeout and what it does, and the last
	// activity the VM's worker saw (saved every few seconds). Absent when the VM has none.
	TimeoutSeconds     int        `json:"timeout_seconds,omitempty"`
	ExpiresAt          *time.Time `json:"expires_at,omitempty"`
	IdleTimeoutSeconds int        `json:"idle_timeout_seconds,omitempty"`
	OnIdle             string     `json:"on_idle,omitempty"`
	LastActivityAt     *time.Time `json:"last_activity_at,omitempty"`
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
	SecretEnv      map[string]string `json:"secret_env,omitempty"` // var -> name of a secret of the caller's, injected at run time
	WorkingDir     string            `json:"working_dir,omitempty"`
	User           string            `json:"user,omitempty"`
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
	Env             map[string]string `json:"env,omitempty"`        // values of credential-like names shown as "***"
	SecretEnv       map[string]string `json:"secret_env,omitempty"` // var -> secret name (never a value)
	WorkingDir      string            `json:"working_dir,omitempty"`
	User            string            `json:"user,omitempty"`
	ExitCode        *int              `json:"exit_code"`
	PeakMemoryKB    *int64            `json:"peak_memory_kb,omitempty"`
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
	SecretEnv      map[string]string `json:"secret_env,omitempty"`
	WorkingDir     string            `json:"working_dir,omitempty"`
	User           string            `json:"user,omitempty"`
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

// Status answers GET /api/v1/status: the state of the cluster behind the gateway (unlike Ready, which is about
// the gateway process alone).
type Status struct {
	// Status is "ok" when at least one worker can take tasks now, "degraded" otherwise (requests are still accepted
	// and persisted; they run once a worker is back).
	Status  string        `json:"status"`
	Workers WorkersStatus `json:"workers"`
}

// WorkersStatus counts the registered workers.
type WorkersStatus struct {
	// Registered is every worker the store knows, stopped ones included.
	Registered int `json:"registered"`
	// Live workers are active, sent a heartbeat within StaleAfterSeconds and report a healthy VM backend.
	Live              int `json:"live"`
	StaleAfterSeconds int `json:"stale_after_seconds"`
}

// OutputChunk is the data of a `stdout` or `stderr` event of GET /api/v1/executions/{id}/stream: bytes of one
// stream starting at Offset (bytes of that stream before them). Exactly one of Data (the bytes are valid UTF-8)
// and DataBase64 (they are not) is set.
type OutputChunk struct {
	Offset     int64  `json:"offset"`
	Data       string `json:"data,omitempty"`
	DataBase64 string `json:"data_base64,omitempty"`
}

// ExecutionEnd is the data of the `end` event of GET /api/v1/executions/{id}/stream, the last one.
type ExecutionEnd struct {
	Status          string `json:"status"` // completed or failed
	ExitCode        *int   `json:"exit_code"`
	TimedOut        bool   `json:"timed_out"`
	StdoutTruncated bool   `json:"stdout_truncated"` // the stored copy, not the stream
	StderrTruncated bool   `json:"stderr_truncated"`
	Error           string `json:"error,omitempty"`
	// StdoutBytes and StderrBytes are how many bytes the command wrote, when the server knows (a stream that saw
	// the execution end live); a client that received fewer lost some (see docs/api.md).
	StdoutBytes *int64 `json:"stdout_bytes,omitempty"`
	StderrBytes *int64 `json:"stderr_bytes,omitempty"`
}

// Error codes of the interactive routes (files, processes, shells): what the VM's guest answered, in API terms.
const (
	CodePathNotFound      = "path_not_found"       // 404: no such file or directory in the VM
	CodeProcessNotFound   = "process_not_found"    // 404: no such process in the VM's agent
	CodeAlreadyExists     = "already_exists"       // 409: the file, directory or process id exists
	CodeNotADirectory     = "not_a_directory"      // 409: a path element (or the target) is not a directory
	CodeIsADirectory      = "is_a_directory"       // 409: a file operation on a directory
	CodeNotARegularFile   = "not_a_regular_file"   // 409: a download of a device, socket or fifo
	CodeDirectoryNotEmpty = "directory_not_empty"  // 409: a non-recursive remove of a directory with entries
	CodePermissionDenied  = "permission_denied"    // 403: the guest's permissions refuse it
	CodeReadOnly          = "read_only_filesystem" // 409: a write to a read-only filesystem of the guest
	CodeUnknownUser       = "unknown_user"         // 422: a user or group the guest does not know
	CodeProcessExited     = "process_exited"       // 409: a signal for a process that has exited
	CodeProcessRunning    = "process_running"      // 409: removing a process that still runs
	CodeTooManyProcesses  = "too_many_processes"   // 429: the VM's agent keeps as many processes as it may
	CodeGuestIOError      = "guest_io_error"       // 500: the guest's filesystem failed (full disk, read error...)
	CodeUnsupported       = "unsupported"          // 501: the VM's agent is too old for this
)

// Headers of GET /api/v1/vms/{id}/files (a download), besides Content-Length and Last-Modified.
const (
	// HeaderFileMode is the file's permission bits in octal, with setuid, setgid and sticky as chmod writes them
	// ("0644", "4755").
	HeaderFileMode = "X-Aetherium-File-Mode"
	HeaderFileUID  = "X-Aetherium-File-Uid"
	HeaderFileGID  = "X-Aetherium-File-Gid"
)

// File types of FileInfo.Type.
const (
	FileTypeFile      = "file"
	FileTypeDirectory = "directory"
	FileTypeSymlink   = "symlink"
	FileTypeOther     = "other" // device, socket, fifo
)

// FileInfo describes a file in a VM: GET /api/v1/vms/{id}/fs/stat, the entries of /fs/list, and the answers of
// an upload and of POST /fs/mkdir.
type FileInfo struct {
	Path string `json:"path"` // cleaned absolute path
	Name string `json:"name"` // last element of Path
	Type string `json:"type"` // file, directory, symlink or other
	Size int64  `json:"size"`
	// Mode is the permission bits in octal, with setuid, setgid and sticky as chmod writes them ("0644", "4755").
	Mode    string    `json:"mode"`
	ModTime time.Time `json:"mod_time"`
	// LinkTarget is where a symbolic link points (the link itself is described, not its target).
	LinkTarget string `json:"link_target,omitempty"`
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
}

// FileList answers GET /api/v1/vms/{id}/fs/list: the entries of a directory, sorted by name.
type FileList struct {
	Path    string     `json:"path"`
	Entries []FileInfo `json:"entries"`
}

// MkdirRequest is the body of POST /api/v1/vms/{id}/fs/mkdir.
type MkdirRequest struct {
	Path string `json:"path"`
	// Mode is the permission bits in octal ("0755", the default).
	Mode string `json:"mode,omitempty"`
	// Parents creates missing parents and accepts an existing directory, like mkdir -p.
	Parents bool `json:"parents,omitempty"`
	// Owner is "user[:group]" (names or numbers) of the directory created last; empty: the agent's user (root).
	Owner string `json:"owner,omitempty"`
}

// StartProcessRequest is the body of POST /api/v1/vms/{id}/processes: a background process. Set Command (with
// Args) or Shell (a command line run with /bin/sh -c), not both.
type StartProcessRequest struct {
	Command        string            `json:"command,omitempty"`
	Args           []string          `json:"args,omitempty"`
	Shell          string            `json:"shell,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	WorkingDir     string            `json:"working_dir,omitempty"`
	User           string            `json:"user,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
	// ID names the process (letters, digits, '.', '_', '-'; at most 128); empty: the VM's agent picks one.
	ID string `json:"id,omitempty"`
}

// Process is a process kept by a VM's agent: a background process, or a shell session in progress (Attached).
type Process struct {
	ID       string `json:"id"`
	PID      int    `json:"pid"`
	Command  string `json:"command"`
	TTY      bool   `json:"tty"`
	Attached bool   `json:"attached"`
	// State is running or exited.
	State     string    `json:"state"`
	StartedAt time.Time `json:"started_at"`
	// ExitCode is null while the process runs; 128+n when signal n ended it (Signal names it).
	ExitCode    *int   `json:"exit_code"`
	Signal      string `json:"signal,omitempty"`
	TimedOut    bool   `json:"timed_out"`
	DurationMS  *int64 `json:"duration_ms"`
	StdoutBytes int64  `json:"stdout_bytes"`
	StderrBytes int64  `json:"stderr_bytes"`
}

// ProcessList answers GET /api/v1/vms/{id}/processes, oldest first.
type ProcessList struct {
	Processes []Process `json:"processes"`
}

// ProcessOutput answers GET /api/v1/vms/{id}/processes/{pid}/output: a piece of one output stream. Exactly one
// of Data (valid UTF-8) and DataBase64 is set when there are bytes.
type ProcessOutput struct {
	Stream string `json:"stream"`
	// Offset is where the data starts: the offset asked for, or later when that part is no longer kept.
	Offset int64 `json:"offset"`
	// NextOffset is the offset to ask for next.
	NextOffset int64 `json:"next_offset"`
	// Dropped counts the oldest bytes of the stream that are no longer kept.
	Dropped int64 `json:"dropped"`
	// Total is how many bytes the stream has had so far.
	Total int64 `json:"total"`
	// EOF means the process has exited and NextOffset is the end of the stream.
	EOF        bool   `json:"eof"`
	Data       string `json:"data,omitempty"`
	DataBase64 string `json:"data_base64,omitempty"`
}

// SignalRequest is the body of POST /api/v1/vms/{id}/processes/{pid}/signal.
type SignalRequest struct {
	// Signal is a name ("TERM", "SIGKILL") or a number.
	Signal string `json:"signal"`
}

// Types of ShellMessage: control messages of the WebSocket of GET /api/v1/vms/{id}/shell. Binary messages carry
// the bytes of stdin (client to server) and of stdout, or the terminal's output (server to client).
const (
	ShellMsgResize = "resize" // client: the terminal's new size (Rows, Cols)
	ShellMsgSignal = "signal" // client: send Signal to the command's process group
	ShellMsgEOF    = "eof"    // client: end of stdin (without a terminal; a terminal's EOF is ^D)

	ShellMsgStarted = "started" // server: the command runs, as process ID
	ShellMsgStderr  = "stderr"  // server: bytes of stderr (Data), without a terminal
	ShellMsgExit    = "exit"    // server: the command ended (ExitCode, Signal, TimedOut); the last message
	ShellMsgError   = "error"   // server: the command could not run or the session failed (Code, Message); the last message
)

// ShellMessage is a text (JSON) message of the shell WebSocket; Type says which fields are set.
type ShellMessage struct {
	Type       string `json:"type"`
	Rows       uint16 `json:"rows,omitempty"`
	Cols       uint16 `json:"cols,omitempty"`
	Signal     string `json:"signal,omitempty"`
	ID         string `json:"id,omitempty"`
	Data       []byte `json:"data,omitempty"`
	ExitCode   *int   `json:"exit_code,omitempty"`
	TimedOut   bool   `json:"timed_out,omitempty"`
	DurationMS *int64 `json:"duration_ms,omitempty"`
	Code       string `json:"code,omitempty"`
	Message    string `json:"message,omitempty"`
}

// PutSecretRequest is the body of PUT /api/v1/secrets/{name}.
type PutSecretRequest struct {
	Value string `json:"value"`
}

// Secret describes one of the caller's secrets. No answer of the API ever carries a secret's value.
type Secret struct {
	Name       string     `json:"name"`
	CreatedAt  time.Time  `json:"created_at"`
	UpdatedAt  time.Time  `json:"updated_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
}

// SecretList answers GET /api/v1/secrets.
type SecretList struct {
	Secrets []Secret `json:"secrets"`
}

// Roles of API keys.
const (
	RoleAdmin = "admin"
	RoleUser  = "user"
)

// APIKey describes an API key; neither the key nor its hash is ever sent back.
type APIKey struct {
	ID      string `json:"id"`
	Name    string `json:"name"`
	Prefix  string `json:"prefix"`
	OwnerID string `json:"owner_id"`
	Role    string `json:"role"`
	// Scopes are what the key may do: its own, or every scope of its role when it was made without any.
	Scopes     []string   `json:"scopes"`
	CreatedAt  time.Time  `json:"created_at"`
	ExpiresAt  *time.Time `json:"expires_at"`
	LastUsedAt *time.Time `json:"last_used_at"`
	RevokedAt  *time.Time `json:"revoked_at"`
}

// CreateAPIKeyRequest is the body of POST /api/v1/apikeys.
type CreateAPIKeyRequest struct {
	Name string `json:"name"`
	// Role is admin or user (default user).
	Role string `json:"role,omitempty"`
	// Scopes narrow the key (none: every scope of its role).
	Scopes    []string   `json:"scopes,omitempty"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
	// Owner shares the owner's resources (default: a new owner).
	Owner string `json:"owner,omitempty"`
}

// CreatedAPIKey answers POST /api/v1/apikeys: the key, shown this once.
type CreatedAPIKey struct {
	APIKey
	Key string `json:"key"`
}

// APIKeyList answers GET /api/v1/apikeys.
type APIKeyList struct {
	APIKeys []APIKey `json:"api_keys"`
}

// TokenRequest is the body of POST /api/v1/auth/token (all optional).
type TokenRequest struct {
	// ExpiresIn is the token's lifetime in seconds (default and at most 3600).
	ExpiresIn int `json:"expires_in,omitempty"`
	// Scopes narrow the token (none: the key's).
	Scopes []string `json:"scopes,omitempty"`
}

// Token answers POST /api/v1/auth/token.
type Token struct {
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
	TokenType string    `json:"token_type"`
	Scopes    []string  `json:"scopes"`
}

// AuditEntry is one audited call.
type AuditEntry struct {
	Seq       int64             `json:"seq"`
	At        time.Time         `json:"at"`
	KeyID     string            `json:"key_id"`
	OwnerID   string            `json:"owner_id"`
	Role      string            `json:"role"`
	Method    string            `json:"method"`
	Route     string            `json:"route"`
	Params    map[string]string `json:"params"`
	Status    int               `json:"status"`
	Source    string            `json:"source"`
	RequestID string            `json:"request_id"`
}

// AuditList answers GET /api/v1/audit; NextCursor (empty on the last page) asks for the next, older page.
type AuditList struct {
	Entries    []AuditEntry `json:"entries"`
	NextCursor string       `json:"next_cursor"`
}

// AuditQuery filters GET /api/v1/audit; zero fields select everything.
type AuditQuery struct {
	KeyID, Owner, Method string
	Status               int
	Since, Until         time.Time
	Limit                int
	Cursor               string
}

// WorkerResources is an amount of a worker's capacity.
type WorkerResources struct {
	VCPUs    int `json:"vcpus"`
	MemoryMB int `json:"memory_mb"`
	VMs      int `json:"vms"`
}

// WorkerInfo is a worker as GET /api/v1/workers (admin) shows it.
type WorkerInfo struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	Backend  string `json:"backend"`
	// State: live (takes new VMs), drained (takes none; its VMs stay), stale (no heartbeat lately) or stopped.
	State   string `json:"state"`
	Drained bool   `json:"drained"`
	// Address is where its internal API (files, shells) listens; BackendHealth "ok" or why not.
	Address       string `json:"address,omitempty"`
	BackendHealth string `json:"backend_health,omitempty"`
	// Capacity is what it offers new VMs (nil when it advertises none: placement by capacity is off there); Used
	// is what its VMs hold (VMs: how many).
	Capacity      *WorkerResources `json:"capacity,omitempty"`
	Used          WorkerResources  `json:"used"`
	StartedAt     time.Time        `json:"started_at"`
	LastHeartbeat time.Time        `json:"last_heartbeat"`
}

// WorkerList is the answer of GET /api/v1/workers.
type WorkerList struct {
	Workers []WorkerInfo `json:"workers"`
}

// Quota bounds what an owner may hold at once (VMs not stopped, failed or deleted); 0 is no limit.
type Quota struct {
	OwnerID     string    `json:"owner_id"`
	MaxVMs      int       `json:"max_vms"`
	MaxVCPUs    int       `json:"max_vcpus"`
	MaxMemoryMB int       `json:"max_memory_mb"`
	UpdatedAt   time.Time `json:"updated_at,omitempty"`
}

// TaskList is the answer of GET /api/v1/tasks.
type TaskList struct {
	Tasks      []Task `json:"tasks"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// JobList is the answer of GET /api/v1/jobs (jobs without their executions).
type JobList struct {
	Jobs       []Job  `json:"jobs"`
	NextCursor string `json:"next_cursor,omitempty"`
}
