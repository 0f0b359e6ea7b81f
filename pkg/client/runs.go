package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// RunRepo is the repository of a run.
type RunRepo struct {
	// URL: https://host/path, ssh://[user@]host/path, user@host:path or git://host/path. file:// URLs, host paths
	// and plain http are refused.
	URL string `json:"url"`
	// Ref is the branch, tag or commit to start from (default: the repository's default branch).
	Ref string `json:"ref,omitempty"`
	// CredentialsSecret names the owner's secret with the git token for this repository (default: the git host's
	// own secret, GITHUB_TOKEN for github.com). It is used by the worker's credential proxy, never given to the VM.
	CredentialsSecret string `json:"credentials_secret,omitempty"`
}

// RunPush asks for the agent's work to be pushed as a branch of the repository.
type RunPush struct {
	Branch  string `json:"branch,omitempty"`   // default aetherium/run-<first 8 characters of the run id>
	DraftPR bool   `json:"draft_pr,omitempty"` // needs the GitHub integration
}

// RunVM is the VM of a run: an existing running VM (ID), or the VM to create (the other fields, as in
// CreateVMRequest; the run deletes it afterwards unless keep_vm).
type RunVM struct {
	ID string `json:"id,omitempty"`
	CreateVMRequest
}

// CreateRunRequest is the body of POST /api/v1/runs.
type CreateRunRequest struct {
	Repo   RunRepo `json:"repo"`
	Prompt string  `json:"prompt"`
	// Agent names an agent of the catalog (GET /api/v1/agents); default "claude-code".
	Agent          string            `json:"agent,omitempty"`
	Model          string            `json:"model,omitempty"`
	MaxTurns       int               `json:"max_turns,omitempty"`
	TimeoutSeconds int               `json:"timeout_seconds,omitempty"`
	Tools          []string          `json:"tools,omitempty"`
	Env            map[string]string `json:"env,omitempty"`
	SecretEnv      map[string]string `json:"secret_env,omitempty"`
	VM             *RunVM            `json:"vm,omitempty"`
	KeepVM         bool              `json:"keep_vm,omitempty"`
	Push           *RunPush          `json:"push,omitempty"`
	Priority       string            `json:"priority,omitempty"`
}

// RunUsage is what a run's model requests consumed, as the model API reported it to the credential proxy.
type RunUsage struct {
	Requests                 int64    `json:"requests"`
	InputTokens              int64    `json:"input_tokens"`
	OutputTokens             int64    `json:"output_tokens"`
	CacheCreationInputTokens int64    `json:"cache_creation_input_tokens"`
	CacheReadInputTokens     int64    `json:"cache_read_input_tokens"`
	CostUSD                  *float64 `json:"cost_usd,omitempty"`
}

// DiffStat sums a run's changes.
type DiffStat struct {
	FilesChanged int `json:"files_changed"`
	Insertions   int `json:"insertions"`
	Deletions    int `json:"deletions"`
}

// RunCommit is a commit a run made.
type RunCommit struct {
	SHA     string `json:"sha"`
	Subject string `json:"subject"`
}

// RunResult is what the agent left.
type RunResult struct {
	Text          string      `json:"text,omitempty"`
	IsError       bool        `json:"is_error"`
	Subtype       string      `json:"subtype,omitempty"`
	ExitCode      *int        `json:"exit_code,omitempty"`
	TimedOut      bool        `json:"timed_out,omitempty"`
	Turns         int         `json:"turns"`
	AgentCostUSD  *float64    `json:"agent_cost_usd,omitempty"`
	BaseCommit    string      `json:"base_commit,omitempty"`
	HeadCommit    string      `json:"head_commit,omitempty"`
	DiffStat      *DiffStat   `json:"diff_stat,omitempty"`
	DiffTruncated bool        `json:"diff_truncated,omitempty"`
	Commits       []RunCommit `json:"commits,omitempty"`
	PushedBranch  string      `json:"pushed_branch,omitempty"`
	StderrTail    string      `json:"stderr_tail,omitempty"`
}

// Run is an agent working on a repository (GET /api/v1/runs/{id}).
type Run struct {
	ID              string            `json:"id"`
	Status          string            `json:"status"` // pending, preparing, running, completed, failed, cancelled
	Repo            RunRepo           `json:"repo"`
	Prompt          string            `json:"prompt"`
	Agent           string            `json:"agent"`
	Model           string            `json:"model,omitempty"`
	MaxTurns        int               `json:"max_turns,omitempty"`
	TimeoutSeconds  int               `json:"timeout_seconds"`
	Tools           []string          `json:"tools,omitempty"`
	Env             map[string]string `json:"env,omitempty"` // credential-like values masked
	SecretEnv       map[string]string `json:"secret_env,omitempty"`
	VMID            string            `json:"vm_id,omitempty"`
	KeepVM          bool              `json:"keep_vm"`
	Push            *RunPush          `json:"push,omitempty"`
	TaskID          string            `json:"task_id,omitempty"`
	WorkerID        string            `json:"worker_id,omitempty"`
	Error           string            `json:"error,omitempty"`
	CancelRequested bool              `json:"cancel_requested,omitempty"`
	Usage           RunUsage          `json:"usage"`
	Result          *RunResult        `json:"result,omitempty"`
	CreatedAt       time.Time         `json:"created_at"`
	UpdatedAt       time.Time         `json:"updated_at"`
	StartedAt       *time.Time        `json:"started_at,omitempty"`
	CompletedAt     *time.Time        `json:"completed_at,omitempty"`
}

// Done reports whether the run has ended.
func (r *Run) Done() bool {
	return r.Status == "completed" || r.Status == "failed" || r.Status == "cancelled"
}

// RunAccepted answers POST /api/v1/runs (202).
type RunAccepted struct {
	TaskID string `json:"task_id"`
	Run    *Run   `json:"run"`
}

// RunList is a page of runs.
type RunList struct {
	Runs       []Run  `json:"runs"`
	NextCursor string `json:"next_cursor,omitempty"`
}

// Agent is an entry of the agent catalog (GET /api/v1/agents).
type Agent struct {
	Name        string   `json:"name"`
	Description string   `json:"description,omitempty"`
	Command     []string `json:"command"`
	Tools       []string `json:"tools,omitempty"`
	User        string   `json:"user,omitempty"`
	Output      string   `json:"output"`
	Proxy       []string `json:"proxy,omitempty"` // model APIs it reaches through the credential proxy
}

// RunEvent is one event of a run's transcript (GET /api/v1/runs/{id}/stream). Type is "agent" (an event as the
// agent emitted it, e.g. a line of claude-code's stream-json), "output" and "stderr" ({"text": ...}), "status"
// (a step of the run: {"status": ..., "message": ...}) or "end" (the last: {"status": ..., "error": ...}).
type RunEvent struct {
	Seq  int64           `json:"seq"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
	Time time.Time       `json:"time"`
}

// RunEnd is the data of a run's end event.
type RunEnd struct {
	Status string `json:"status"`
	Error  string `json:"error,omitempty"`
}

// ListRunsOptions filter ListRuns.
type ListRunsOptions struct {
	Status []string
	VMID   string
	Repo   string
	Limit  int
	Cursor string
}

// CreateRun starts an agent run.
func (c *Client) CreateRun(ctx context.Context, req CreateRunRequest) (*RunAccepted, error) {
	acc := new(RunAccepted)
	if _, err := c.do(ctx, http.MethodPost, "/runs", nil, req, acc); err != nil {
		return nil, err
	}
	return acc, nil
}

// GetRun returns a run.
func (c *Client) GetRun(ctx context.Context, id string) (*Run, error) {
	var r Run
	if _, err := c.do(ctx, http.MethodGet, "/runs/"+url.PathEscape(id), nil, nil, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ListRuns lists the caller's runs, newest first.
func (c *Client) ListRuns(ctx context.Context, o ListRunsOptions) (*RunList, error) {
	q := url.Values{}
	for _, s := range o.Status {
		q.Add("status", s)
	}
	if o.VMID != "" {
		q.Set("vm_id", o.VMID)
	}
	if o.Repo != "" {
		q.Set("repo", o.Repo)
	}
	if o.Limit > 0 {
		q.Set("limit", strconv.Itoa(o.Limit))
	}
	if o.Cursor != "" {
		q.Set("cursor", o.Cursor)
	}
	var l RunList
	if _, err := c.do(ctx, http.MethodGet, "/runs", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// CancelRun asks for a run to stop: the agent's processes are killed and the run ends cancelled.
func (c *Client) CancelRun(ctx context.Context, id string) (*Run, error) {
	var r Run
	if _, err := c.do(ctx, http.MethodPost, "/runs/"+url.PathEscape(id)+"/cancel", nil, struct{}{}, &r); err != nil {
		return nil, err
	}
	return &r, nil
}

// RunDiff returns the run's patch against the commit it started from (empty before the agent has finished).
func (c *Client) RunDiff(ctx context.Context, id string) ([]byte, error) {
	req, err := c.newRequest(ctx, http.MethodGet, "/runs/"+url.PathEscape(id)+"/diff", nil, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<20))
}

// ListAgents returns the agent catalog.
func (c *Client) ListAgents(ctx context.Context) ([]Agent, error) {
	var out struct {
		Agents []Agent `json:"agents"`
	}
	if _, err := c.do(ctx, http.MethodGet, "/agents", nil, nil, &out); err != nil {
		return nil, err
	}
	return out.Agents, nil
}

// ErrRunStreamEnded is returned (wrapped) when a run's stream closes before its end event; StreamRunFrom with the
// last seq seen resumes it.
var ErrRunStreamEnded = errors.New("the stream closed before the run ended")

// StreamRun follows a run's transcript from its start: fn gets every event in order (replayed from the store, then
// live), and the stream ends after the run's end event, which fn gets too. It returns the end.
func (c *Client) StreamRun(ctx context.Context, id string, fn func(RunEvent) error) (*RunEnd, error) {
	return c.StreamRunFrom(ctx, id, 0, fn)
}

// StreamRunFrom is StreamRun starting after event after (sent as Last-Event-ID).
func (c *Client) StreamRunFrom(ctx context.Context, id string, after int64, fn func(RunEvent) error) (*RunEnd, error) {
	req, err := c.newRequest(ctx, http.MethodGet, "/runs/"+url.PathEscape(id)+"/stream", nil, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if after > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatInt(after, 10))
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return nil, decodeError(resp)
	}
	if mt, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); mt != "text/event-stream" {
		return nil, &APIError{Status: resp.StatusCode, Message: nonJSONMessage(resp, nil)}
	}
	var end *RunEnd
	err = readEvents(resp.Body, func(event string, data []byte) error {
		var ev RunEvent
		if err := json.Unmarshal(data, &ev); err != nil {
			return fmt.Errorf("decode %s event: %w", event, err)
		}
		if err := fn(ev); err != nil {
			return &callerError{err}
		}
		if ev.Type == "end" {
			end = new(RunEnd)
			if err := json.Unmarshal(ev.Data, end); err != nil {
				return fmt.Errorf("decode end event: %w", err)
			}
			return errStop
		}
		return nil
	})
	var ce *callerError
	switch {
	case errors.Is(err, errStop):
		return end, nil
	case errors.As(err, &ce):
		return nil, ce.err
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case err == nil:
		return nil, fmt.Errorf("stream of run %s: %w", id, ErrRunStreamEnded)
	}
	return nil, fmt.Errorf("stream of run %s: %w: %w", id, ErrRunStreamEnded, err)
}
