package model

import (
	"encoding/json"
	"time"
)

// RunStatus is where an agent run is in its life:
//
//	pending -> preparing -> running -> completed | failed | cancelled
//
// preparing covers the VM, the clone and the agent's setup; running starts the moment the agent's command is
// started, after which the run is never started again (a redelivered task fails it as interrupted).
type RunStatus string

const (
	RunPending   RunStatus = "pending"
	RunPreparing RunStatus = "preparing"
	RunRunning   RunStatus = "running"
	RunCompleted RunStatus = "completed" // the agent ran to its end and reported success
	RunFailed    RunStatus = "failed"    // the agent failed, or could not run, or its result was lost
	RunCancelled RunStatus = "cancelled" // stopped by POST /runs/{id}/cancel
)

// RunStatuses lists every run status.
var RunStatuses = []RunStatus{RunPending, RunPreparing, RunRunning, RunCompleted, RunFailed, RunCancelled}

// Valid reports whether s is a known status.
func (s RunStatus) Valid() bool {
	for _, x := range RunStatuses {
		if x == s {
			return true
		}
	}
	return false
}

// Done reports whether the run has ended.
func (s RunStatus) Done() bool { return s == RunCompleted || s == RunFailed || s == RunCancelled }

// RunRepo is the repository a run works on.
type RunRepo struct {
	// URL is https://host/path, ssh://[user@]host/path, user@host:path or git://host/path; every form is fetched
	// over HTTPS from the same host (through the credential proxy when the host is a configured git host).
	URL string `json:"url"`
	// Ref is a branch, tag or commit to start from (default: the repository's default branch).
	Ref string `json:"ref,omitempty"`
	// CredentialsSecret names the owner's secret holding the git token for this repository, instead of the git
	// host's default secret (GITHUB_TOKEN for github.com).
	CredentialsSecret string `json:"credentials_secret,omitempty"`
}

// RunPush asks for the agent's work to be pushed as a branch.
type RunPush struct {
	// Branch to push (default aetherium/run-<first 8 characters of the run id>). Never the branch the run started from.
	Branch string `json:"branch,omitempty"`
	// DraftPR asks for a draft pull request of Branch. POST /runs refuses it: the GitHub integration opens draft
	// pull requests itself, for runs it starts from a link that says so.
	DraftPR bool `json:"draft_pr,omitempty"`
}

// RunSpec is what a run was asked to do, as stored.
type RunSpec struct {
	Repo           RunRepo           `json:"repo"`
	Prompt         string            `json:"prompt"`
	Agent          string            `json:"agent"`
	Model          string            `json:"model,omitempty"`
	MaxTurns       int               `json:"max_turns,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds"`
	Env            map[string]string `json:"env,omitempty"`
	SecretEnv      map[string]string `json:"secret_env,omitempty"` // var -> secret name
	// VMSpec is the VM the run creates (and deletes afterwards unless KeepVM); nil when the run uses the existing
	// VM in Run.VMID, which it never deletes.
	VMSpec *VMSpec  `json:"vm_spec,omitempty"`
	KeepVM bool     `json:"keep_vm,omitempty"`
	Push   *RunPush `json:"push,omitempty"`
	Tools  []string `json:"tools,omitempty"` // tools the run's VM must have besides the agent's own
	// GitProxy says the repository is fetched (and pushed) through the worker's credential proxy with the owner's
	// secret GitSecret; otherwise the guest clones it anonymously over HTTPS. Decided when the run is created.
	GitProxy  bool   `json:"git_proxy,omitempty"`
	GitSecret string `json:"git_secret,omitempty"`
}

// RunUsage is what a run's model requests consumed, as the model API reported it to the credential proxy (never
// as the guest reports it).
type RunUsage struct {
	Requests                 int64    `json:"requests"`
	InputTokens              int64    `json:"input_tokens"`
	OutputTokens             int64    `json:"output_tokens"`
	CacheCreationInputTokens int64    `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64    `json:"cache_read_input_tokens"`
	CostUSD                  *float64 `json:"cost_usd,omitempty"` // nil when a model's price is unknown
}

// DiffStat sums a run's changes against the commit it started from.
type DiffStat struct {
	FilesChanged int `json:"files_changed"`
	Insertions   int `json:"insertions"`
	Deletions    int `json:"deletions"`
}

// RunCommit is a commit the run made.
type RunCommit struct {
	SHA     string `json:"sha"`
	Subject string `json:"subject"`
}

// RunResult is what a finished agent left: its answer and exit, and what it changed in the repository.
type RunResult struct {
	// Text is the agent's final answer (claude-code's result event).
	Text string `json:"text,omitempty"`
	// IsError and Subtype are the agent's own verdict (claude-code: subtype success, error_max_turns, ...).
	IsError  bool   `json:"is_error"`
	Subtype  string `json:"subtype,omitempty"`
	ExitCode *int   `json:"exit_code,omitempty"`
	TimedOut bool   `json:"timed_out,omitempty"`
	Turns    int    `json:"turns"`
	// AgentCostUSD is the cost the agent itself reported (untrusted: it comes from the guest); RunUsage is the
	// measured one.
	AgentCostUSD  *float64    `json:"agent_cost_usd,omitempty"`
	BaseCommit    string      `json:"base_commit,omitempty"`
	HeadCommit    string      `json:"head_commit,omitempty"`
	DiffStat      *DiffStat   `json:"diff_stat,omitempty"`
	DiffTruncated bool        `json:"diff_truncated,omitempty"`
	Commits       []RunCommit `json:"commits,omitempty"`
	PushedBranch  string      `json:"pushed_branch,omitempty"`
	// StderrTail is the end of the agent's standard error (scrubbed of the owner's secrets).
	StderrTail string `json:"stderr_tail,omitempty"`
}

// Run is one agent working on one repository in one VM.
type Run struct {
	ID      string    `json:"id"`
	OwnerID string    `json:"owner_id"`
	Spec    RunSpec   `json:"spec"`
	Status  RunStatus `json:"status"`
	// VMID is the run's VM: the one it was given, or the one it creates.
	VMID     string `json:"vm_id,omitempty"`
	TaskID   string `json:"task_id,omitempty"`
	WorkerID string `json:"worker_id,omitempty"`
	Error    string `json:"error,omitempty"`
	// CancelRequested is set by a cancel; the worker running the run stops the agent and marks it cancelled.
	CancelRequested bool       `json:"cancel_requested,omitempty"`
	Usage           RunUsage   `json:"usage"`
	Result          *RunResult `json:"result,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
	UpdatedAt       time.Time  `json:"updated_at"`
	StartedAt       *time.Time `json:"started_at,omitempty"`
	CompletedAt     *time.Time `json:"completed_at,omitempty"`
}

// Run event types: the transcript of a run, in order.
const (
	// RunEventAgent is one event the agent emitted (a line of claude-code's stream-json: system, assistant, user
	// with tool results, result), kept as the agent wrote it.
	RunEventAgent = "agent"
	// RunEventOutput is agent output that is not an event (a line of plain text on stdout), as {"text": ...}.
	RunEventOutput = "output"
	// RunEventStderr is a line of the agent's standard error, as {"text": ...}.
	RunEventStderr = "stderr"
	// RunEventStatus is a step of the run itself, as {"status": ..., "message": ...}.
	RunEventStatus = "status"
	// RunEventEnd is the last event of every run, as {"status": ..., "error": ...}.
	RunEventEnd = "end"
)

// RunEvent is one entry of a run's transcript. Seq numbers a run's events from 1 without gaps.
type RunEvent struct {
	RunID string          `json:"run_id"`
	Seq   int64           `json:"seq"`
	Type  string          `json:"type"`
	Data  json.RawMessage `json:"data"`
	Time  time.Time       `json:"time"`
}
