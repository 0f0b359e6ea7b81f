package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"
)

// Defaults of the waiting helpers.
const (
	// DefaultWaitChunk is how long one request asks the server to hold its answer (?wait=). It stays well under the
	// server's 10 minute cap and under the idle timeouts of common proxies.
	DefaultWaitChunk = 60 * time.Second
	// DefaultMaxPoll is the longest pause between two polls of a task.
	DefaultMaxPoll = time.Second
	// minPoll is the first pause between two polls of a task; pauses double from there up to the maximum.
	minPoll = 50 * time.Millisecond
	// maxTransientFailures is how many polls in a row may fail for transient reasons (network, 502/503/504, 429)
	// before WaitTask gives up: a server restart during a long wait should not lose the wait.
	maxTransientFailures = 5
	// maxErrorBody bounds how much of an error response is read.
	maxErrorBody     = 64 << 10
	defaultUserAgent = "aetherium-go-client/1"
	apiPrefix        = "/api/v1"
)

// Client calls Aetherium's REST API v1. It is safe for concurrent use.
type Client struct {
	base      *url.URL
	apiKey    string
	http      *http.Client
	userAgent string
	waitChunk time.Duration
	maxPoll   time.Duration
	// retries is how many times a mutating call is sent again after a transient failure (WithRetries).
	retries int
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient sets the http.Client used for requests. Its Timeout, if any, bounds every request including the
// ones that ask the server to wait (up to DefaultWaitChunk), so prefer contexts over a client timeout.
func WithHTTPClient(h *http.Client) Option {
	return func(c *Client) {
		if h != nil {
			c.http = h
		}
	}
}

// WithUserAgent sets the User-Agent header sent with every request.
func WithUserAgent(ua string) Option {
	return func(c *Client) {
		if ua != "" {
			c.userAgent = ua
		}
	}
}

// WithWaitChunk sets how long a single request asks the server to wait (?wait=) in the ...AndWait helpers.
// Values above the server's cap (10m) are pointless; zero or less keeps the default.
func WithWaitChunk(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.waitChunk = d
		}
	}
}

// WithMaxPollInterval sets the longest pause between polls of a task in the ...AndWait helpers.
func WithMaxPollInterval(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.maxPoll = d
		}
	}
}

// WithRetries makes every mutating call (create, delete, execute, tools, jobs, mkdir, remove, processes) carry an
// Idempotency-Key of its own, generated per call, and sends it again up to n times after a transient failure: a
// network error or timeout, 429, 502, 503, 504, or 409 idempotency_in_progress, with growing pauses (Retry-After
// when the server sends one, at most 5 s). The server answers a retry with the first request's answer, so a
// command never runs twice and a VM is never created twice. n <= 0 (the default) sends every call once, with a key
// only when the context carries one (WithIdempotencyKey). File uploads are never retried (their body is a
// stream, and the server refuses keys there); sending an upload again is safe by itself.
func WithRetries(n int) Option {
	return func(c *Client) { c.retries = max(n, 0) }
}

type idempotencyKeyCtx struct{}

// WithIdempotencyKey returns a context whose mutating calls send key as their Idempotency-Key: a call repeated
// with the same key and the same request (within 24 h) gets the first call's answer instead of running again.
// Use one key per logical operation, for example one stored with the job that needs the VM, so a process that
// restarts and asks again gets the same VM. Keys are 1 to 255 printable ASCII characters; uploads ignore them.
func WithIdempotencyKey(ctx context.Context, key string) context.Context {
	return context.WithValue(ctx, idempotencyKeyCtx{}, key)
}

// New returns a client of the API at baseURL (e.g. "http://127.0.0.1:8080"; a trailing "/api/v1" is accepted and
// dropped). apiKey is sent as a bearer token; it may be empty for the unauthenticated routes (health, ready).
func New(baseURL, apiKey string, opts ...Option) (*Client, error) {
	u, err := parseBaseURL(baseURL)
	if err != nil {
		return nil, err
	}
	// The key is a header value: reject what net/http would refuse later, and never echo the key in the message.
	for _, r := range apiKey {
		if unicode.IsSpace(r) || unicode.IsControl(r) || r > unicode.MaxASCII {
			return nil, errors.New("client: api key contains whitespace, control or non-ASCII characters")
		}
	}
	c := &Client{
		base:      u,
		apiKey:    apiKey,
		http:      &http.Client{},
		userAgent: defaultUserAgent,
		waitChunk: DefaultWaitChunk,
		maxPoll:   DefaultMaxPoll,
	}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

func parseBaseURL(raw string) (*url.URL, error) {
	raw = strings.TrimSpace(raw)
	if raw == "" {
		return nil, errors.New("client: empty server URL")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("client: invalid server URL %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("client: invalid server URL %q: want http://host[:port] or https://host[:port]", raw)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("client: invalid server URL %q: no host", raw)
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("client: invalid server URL %q: must not have a query or fragment", raw)
	}
	u.Path = strings.TrimSuffix(strings.TrimRight(u.Path, "/"), apiPrefix)
	u.RawPath = ""
	return u, nil
}

// BaseURL returns the server URL the client talks to, without credentials.
func (c *Client) BaseURL() string {
	u := *c.base
	u.User = nil
	return u.String()
}

// String describes the client without its API key, so printing a Client by mistake leaks nothing. (A value
// receiver, so that printing a dereferenced Client is covered too.)
func (c Client) String() string { return "client.Client{" + c.BaseURL() + "}" }

// GoString is String, for %#v.
func (c Client) GoString() string { return c.String() }

// APIError is an error answer of the API. Code is one of the Code... constants when the server sent the error
// envelope, and empty when the body was something else (a proxy's HTML page, say).
type APIError struct {
	Status  int
	Code    string
	Message string
}

func (e *APIError) Error() string {
	if e.Code == "" {
		return e.Message
	}
	return e.Message + " (" + e.Code + ")"
}

// IsCode reports whether err is (or wraps) an *APIError with the given code.
func IsCode(err error, code string) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Code == code
}

// IsNotFound reports whether err is (or wraps) a 404 answer of the API.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && (ae.Code == CodeNotFound || ae.Status == http.StatusNotFound)
}

// TaskError reports that a task ran to its end and failed (an infrastructure failure: a command's non-zero exit
// code is a result, not a TaskError).
type TaskError struct {
	TaskID  string
	Message string
}

func (e *TaskError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = "no error message"
	}
	return fmt.Sprintf("task %s failed: %s", e.TaskID, msg)
}

// WaitError reports that a wait ended (the context was cancelled or its deadline passed) before the task finished.
// The task goes on server-side; TaskID lets the caller look at it later.
type WaitError struct {
	TaskID string
	Err    error
}

func (e *WaitError) Error() string {
	return fmt.Sprintf("task %s not finished: %v", e.TaskID, e.Err)
}

func (e *WaitError) Unwrap() error { return e.Err }

// ListVMsOptions filters and pages GET /api/v1/vms.
type ListVMsOptions struct {
	Status []string // any of these statuses; empty means all
	Limit  int      // page size; 0 means the server's default
	Cursor string   // NextCursor of the previous page
}

// ListOptions pages a list.
type ListOptions struct {
	Limit  int
	Cursor string
}

// Health calls GET /api/v1/health.
func (c *Client) Health(ctx context.Context) (*Health, error) {
	var h Health
	if _, err := c.do(ctx, http.MethodGet, "/health", nil, nil, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// Ready calls GET /api/v1/ready. A 503 answer that carries the checks is not an error: the result says "not_ready"
// and which checks failed.
func (c *Client) Ready(ctx context.Context) (*Ready, error) {
	var r Ready
	_, err := c.do(ctx, http.MethodGet, "/ready", nil, nil, &r, http.StatusServiceUnavailable)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

// Status calls GET /api/v1/status: how many workers can take tasks now.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var st Status
	if _, err := c.do(ctx, http.MethodGet, "/status", nil, nil, &st); err != nil {
		return nil, err
	}
	return &st, nil
}

// CreateVM asks for a VM and returns at once (202): the VM is pending and TaskID follows its creation.
func (c *Client) CreateVM(ctx context.Context, req CreateVMRequest) (*VMAccepted, error) {
	acc, _, err := c.CreateVMWait(ctx, req, 0)
	return acc, err
}

// CreateVMWait asks for a VM and lets the server hold the answer up to wait (capped at 10m server-side). done
// reports whether the task finished in that time (201, or 200 when it failed); then acc.VM is final.
func (c *Client) CreateVMWait(ctx context.Context, req CreateVMRequest, wait time.Duration) (acc *VMAccepted, done bool, err error) {
	acc = new(VMAccepted)
	status, err := c.do(ctx, http.MethodPost, "/vms", waitQuery(wait), req, acc)
	if err != nil {
		return nil, false, err
	}
	return acc, status != http.StatusAccepted, nil
}

// ListVMs returns one page of VMs.
func (c *Client) ListVMs(ctx context.Context, opts ListVMsOptions) (*VMList, error) {
	q := url.Values{}
	if len(opts.Status) > 0 {
		q.Set("status", strings.Join(opts.Status, ","))
	}
	setPage(q, opts.Limit, opts.Cursor)
	var l VMList
	if _, err := c.do(ctx, http.MethodGet, "/vms", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// GetVM returns a VM by id.
func (c *Client) GetVM(ctx context.Context, id string) (*VM, error) {
	var vm VM
	if _, err := c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(id), nil, nil, &vm); err != nil {
		return nil, err
	}
	return &vm, nil
}

// DeleteVM asks for a VM's deletion and returns at once (202).
func (c *Client) DeleteVM(ctx context.Context, id string) (*TaskAccepted, error) {
	acc, _, err := c.DeleteVMWait(ctx, id, 0)
	return acc, err
}

// DeleteVMWait asks for a VM's deletion and lets the server hold the answer up to wait. done reports whether the
// task finished in that time; then acc.Task is final.
func (c *Client) DeleteVMWait(ctx context.Context, id string, wait time.Duration) (acc *TaskAccepted, done bool, err error) {
	acc = new(TaskAccepted)
	status, err := c.do(ctx, http.MethodDelete, "/vms/"+url.PathEscape(id), waitQuery(wait), nil, acc)
	if err != nil {
		return nil, false, err
	}
	return acc, status != http.StatusAccepted, nil
}

// AddTools installs tools into a running VM and lets the server hold the answer up to wait (0: answer at once).
// done reports whether the task finished in that time; then acc.Task is final and its result lists the tools.
func (c *Client) AddTools(ctx context.Context, vmID string, req AddToolsRequest, wait time.Duration) (acc *TaskAccepted, done bool, err error) {
	acc = new(TaskAccepted)
	status, err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(vmID)+"/tools", waitQuery(wait), req, acc)
	if err != nil {
		return nil, false, err
	}
	return acc, status != http.StatusAccepted, nil
}

// Execute starts a command in a VM and returns at once (202).
func (c *Client) Execute(ctx context.Context, vmID string, req ExecuteRequest) (*ExecuteAccepted, error) {
	acc, _, err := c.ExecuteWait(ctx, vmID, req, 0)
	return acc, err
}

// ExecuteWait starts a command in a VM and lets the server hold the answer up to wait. done reports whether the
// command finished in that time; then acc.Execution is final.
func (c *Client) ExecuteWait(ctx context.Context, vmID string, req ExecuteRequest, wait time.Duration) (acc *ExecuteAccepted, done bool, err error) {
	acc = new(ExecuteAccepted)
	status, err := c.do(ctx, http.MethodPost, "/vms/"+url.PathEscape(vmID)+"/execute", waitQuery(wait), req, acc)
	if err != nil {
		return nil, false, err
	}
	return acc, status != http.StatusAccepted, nil
}

// ListExecutions returns one page of a VM's executions.
func (c *Client) ListExecutions(ctx context.Context, vmID string, opts ListOptions) (*ExecutionList, error) {
	q := url.Values{}
	setPage(q, opts.Limit, opts.Cursor)
	var l ExecutionList
	if _, err := c.do(ctx, http.MethodGet, "/vms/"+url.PathEscape(vmID)+"/executions", q, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// GetExecution returns an execution by id.
func (c *Client) GetExecution(ctx context.Context, id string) (*Execution, error) {
	var e Execution
	if _, err := c.do(ctx, http.MethodGet, "/executions/"+url.PathEscape(id), nil, nil, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// GetTask returns a task by id.
func (c *Client) GetTask(ctx context.Context, id string) (*Task, error) {
	var t Task
	if _, err := c.do(ctx, http.MethodGet, "/tasks/"+url.PathEscape(id), nil, nil, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// CreateJob starts a multi-command job and returns at once (202).
func (c *Client) CreateJob(ctx context.Context, req CreateJobRequest) (*JobAccepted, error) {
	acc, _, err := c.CreateJobWait(ctx, req, 0)
	return acc, err
}

// CreateJobWait starts a job and lets the server hold the answer up to wait. done reports whether the job finished
// in that time; then acc.Job is final.
func (c *Client) CreateJobWait(ctx context.Context, req CreateJobRequest, wait time.Duration) (acc *JobAccepted, done bool, err error) {
	acc = new(JobAccepted)
	status, err := c.do(ctx, http.MethodPost, "/jobs", waitQuery(wait), req, acc)
	if err != nil {
		return nil, false, err
	}
	return acc, status != http.StatusAccepted, nil
}

// GetJob returns a job with its executions.
func (c *Client) GetJob(ctx context.Context, id string) (*Job, error) {
	var j Job
	if _, err := c.do(ctx, http.MethodGet, "/jobs/"+url.PathEscape(id), nil, nil, &j); err != nil {
		return nil, err
	}
	return &j, nil
}

// WaitTask polls a task until it is done (completed or failed) or ctx ends. Pauses start at 50ms and double up to
// poll (DefaultMaxPoll when poll <= 0). The API has no long-polling GET for tasks, hence the polling; the
// ...AndWait helpers first let the server wait (?wait=) and only poll for what runs longer.
//
// A failed task is returned with a nil error: its Status and Error say what happened. When ctx ends first the
// error is a *WaitError (wrapping ctx.Err()) and the task is the last one seen, possibly nil. A few transient
// failures in a row (network errors, 429, 502, 503, 504) are retried; others end the wait at once.
func (c *Client) WaitTask(ctx context.Context, id string, poll time.Duration) (*Task, error) {
	if poll <= 0 {
		poll = DefaultMaxPoll
	}
	pause := min(minPoll, poll)
	var last *Task
	transient := 0
	for {
		t, err := c.GetTask(ctx, id)
		switch {
		case err == nil:
			transient = 0
			last = t
			if taskDone(t.Status) {
				return t, nil
			}
		case ctx.Err() != nil:
			return last, &WaitError{TaskID: id, Err: ctx.Err()}
		case isTransient(err) && transient < maxTransientFailures:
			transient++
		default:
			return last, fmt.Errorf("wait for task %s: %w", id, err)
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return last, &WaitError{TaskID: id, Err: ctx.Err()}
		case <-timer.C:
		}
		pause = min(pause*2, poll)
	}
}

// CreateVMAndWait creates a VM and waits until its creation task ends or ctx does, however long that takes: the
// first request lets the server wait (up to the wait chunk), then the task is polled.
//
// It returns the final VM when it is running. When the task failed the error is a *TaskError and the VM (in its
// failed state) is returned too; when ctx ends first the error is a *WaitError and the VM is the one last seen, so
// its id is known. Other errors (transport, *APIError) come with a nil VM when nothing was created.
func (c *Client) CreateVMAndWait(ctx context.Context, req CreateVMRequest) (*VM, error) {
	acc, done, err := c.CreateVMWait(ctx, req, c.chunk(ctx))
	if err != nil {
		return nil, err
	}
	vm := acc.VM
	task := acc.Task
	if !done || task == nil {
		// Either the server's wait ran out, or it answered without the task: poll it.
		t, err := c.WaitTask(ctx, acc.TaskID, c.maxPoll)
		if err != nil {
			return &vm, err
		}
		task = t
		latest, err := c.GetVM(ctx, vm.ID)
		if err != nil {
			return &vm, fmt.Errorf("get vm %s: %w", vm.ID, err)
		}
		vm = *latest
	}
	if task.Status != "completed" {
		msg := task.Error
		if msg == "" {
			msg = vm.Error
		}
		return &vm, &TaskError{TaskID: task.ID, Message: msg}
	}
	return &vm, nil
}

// DeleteVMAndWait deletes a VM and waits until the deletion task ends or ctx does. It returns the finished task; a
// failed task also gives a *TaskError, and ctx ending first a *WaitError.
func (c *Client) DeleteVMAndWait(ctx context.Context, id string) (*Task, error) {
	acc, done, err := c.DeleteVMWait(ctx, id, c.chunk(ctx))
	if err != nil {
		return nil, err
	}
	task := acc.Task
	if !done || task == nil || !taskDone(task.Status) {
		if task, err = c.WaitTask(ctx, acc.TaskID, c.maxPoll); err != nil {
			return task, err
		}
	}
	if task.Status != "completed" {
		return task, &TaskError{TaskID: task.ID, Message: task.Error}
	}
	return task, nil
}

// ExecAndWait runs a command in a VM and waits for its result however long it runs. The command's exit code,
// whatever it is, is a result: the error is nil. When the command could not be run (the execution failed) the
// execution is returned with a *TaskError; when ctx ends first the error is a *WaitError.
func (c *Client) ExecAndWait(ctx context.Context, vmID string, req ExecuteRequest) (*Execution, error) {
	acc, done, err := c.ExecuteWait(ctx, vmID, req, c.chunk(ctx))
	if err != nil {
		return nil, err
	}
	if !done || acc.Execution == nil {
		return c.WaitExecution(ctx, acc)
	}
	return acc.Execution, executionError(acc, acc.Execution, nil)
}

// WaitExecution waits until an execution started with Execute has ended, however long it runs, and returns it
// like ExecAndWait does: a *TaskError when it could not be run, a *WaitError when ctx ends first.
func (c *Client) WaitExecution(ctx context.Context, acc *ExecuteAccepted) (*Execution, error) {
	task, err := c.WaitTask(ctx, acc.TaskID, c.maxPoll)
	if err != nil {
		return nil, err
	}
	exec, err := c.GetExecution(ctx, acc.ExecutionID)
	if err != nil {
		return nil, fmt.Errorf("get execution %s: %w", acc.ExecutionID, err)
	}
	return exec, executionError(acc, exec, task)
}

// executionError is the *TaskError of an execution that could not be run (task may be nil), or nil.
func executionError(acc *ExecuteAccepted, exec *Execution, task *Task) error {
	if exec.Status == "failed" || (exec.ExitCode == nil && task != nil && task.Status == "failed") {
		msg := exec.Error
		if msg == "" && task != nil {
			msg = task.Error
		}
		return &TaskError{TaskID: acc.TaskID, Message: msg}
	}
	return nil
}

// RunJobAndWait starts a job and waits until it ends or ctx does, then returns it with its executions. A job that
// ended "failed" (a command failed under stop_on_error, or its VM could not be made) is a result: see its Status,
// Error and Executions. When ctx ends first the error is a *WaitError.
func (c *Client) RunJobAndWait(ctx context.Context, req CreateJobRequest) (*Job, error) {
	acc, done, err := c.CreateJobWait(ctx, req, c.chunk(ctx))
	if err != nil {
		return nil, err
	}
	if done && acc.Job != nil {
		return acc.Job, nil
	}
	if _, err := c.WaitTask(ctx, acc.TaskID, c.maxPoll); err != nil {
		return nil, err
	}
	job, err := c.GetJob(ctx, acc.JobID)
	if err != nil {
		return nil, fmt.Errorf("get job %s: %w", acc.JobID, err)
	}
	return job, nil
}

// chunk is the ?wait= of the first request of a ...AndWait helper. It ends before ctx's deadline, with a margin for
// the answer to travel: a request cut by the deadline would lose the task id the caller needs to follow up.
func (c *Client) chunk(ctx context.Context) time.Duration {
	d := c.waitChunk
	if dl, ok := ctx.Deadline(); ok {
		left := time.Until(dl)
		left -= max(left/10, 200*time.Millisecond)
		d = min(d, left)
	}
	if d < 100*time.Millisecond {
		return 0 // not worth a server-side wait; the task is polled instead
	}
	return d
}

func taskDone(status string) bool { return status == "completed" || status == "failed" }

func waitQuery(wait time.Duration) url.Values {
	if wait <= 0 {
		return nil
	}
	// The server parses a Go duration; whole milliseconds keep the value short and readable in logs.
	return url.Values{"wait": {wait.Round(time.Millisecond).String()}}
}

func setPage(q url.Values, limit int, cursor string) {
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	if cursor != "" {
		q.Set("cursor", cursor)
	}
}

// isTransient reports whether a failed poll is worth repeating.
func isTransient(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		switch ae.Status {
		case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var ne net.Error
	return errors.As(err, &ne) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)
}

// do sends one request and decodes a 2xx answer (or one of alsoOK) into out. Other answers become *APIError.
// Mutating calls carry an Idempotency-Key when the context has one or retries are on, and are then retried after
// transient failures (see WithRetries).
func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any, alsoOK ...int) (int, error) {
	key, _ := ctx.Value(idempotencyKeyCtx{}).(string)
	mutating := method == http.MethodPost || method == http.MethodPut || method == http.MethodPatch || method == http.MethodDelete
	attempts := 1
	if mutating && c.retries > 0 {
		if key == "" {
			key = newIdempotencyKey()
		}
		attempts += c.retries
	}
	for attempt := 1; ; attempt++ {
		status, retryAfter, err := c.doOnce(ctx, method, path, query, body, out, mutating, key, alsoOK)
		if err == nil || attempt >= attempts || ctx.Err() != nil || !retryable(err) {
			return status, err
		}
		pause := min(100*time.Millisecond<<(attempt-1), 5*time.Second)
		if retryAfter > 0 {
			pause = min(retryAfter, 5*time.Second)
		}
		timer := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			timer.Stop()
			return status, err
		case <-timer.C:
		}
	}
}

func (c *Client) doOnce(ctx context.Context, method, path string, query url.Values, body, out any, mutating bool, key string,
	alsoOK []int) (status int, retryAfter time.Duration, err error) {
	req, err := c.newRequest(ctx, method, path, query, body)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Accept", "application/json")
	if mutating && key != "" {
		req.Header.Set(IdempotencyKeyHeader, key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, 0, err // a *url.Error: it names the method and URL, never the headers
	}
	defer resp.Body.Close()

	ok := resp.StatusCode >= 200 && resp.StatusCode < 300
	for _, s := range alsoOK {
		ok = ok || resp.StatusCode == s
	}
	if !ok {
		if secs, err := strconv.Atoi(resp.Header.Get("Retry-After")); err == nil && secs > 0 {
			retryAfter = time.Duration(secs) * time.Second
		}
		return resp.StatusCode, retryAfter, decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, 0, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if !isJSON(resp.Header.Get("Content-Type")) {
			return resp.StatusCode, 0, &APIError{Status: resp.StatusCode, Message: nonJSONMessage(resp, nil)}
		}
		// A body cut short is a transport failure (the answer is replayed on a retry).
		return resp.StatusCode, 0, fmt.Errorf("decode %s %s answer (%d): %w", method, path, resp.StatusCode, err)
	}
	return resp.StatusCode, 0, nil
}

// retryable reports whether a mutating call that failed with err may be sent again with its Idempotency-Key.
func retryable(err error) bool {
	var ae *APIError
	if errors.As(err, &ae) {
		return isTransient(err) || (ae.Status == http.StatusConflict && ae.Code == CodeIdempotencyInProgress)
	}
	return isTransient(err)
}

// newIdempotencyKey is a random UUID (version 4), the kind of key the server expects.
func newIdempotencyKey() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand does not fail on Linux; a failure would panic in Go 1.24+
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// decodeError turns an error answer into an *APIError, from the envelope when there is one.
func decodeError(resp *http.Response) error {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	var env ErrorBody
	if err := json.Unmarshal(b, &env); err == nil && env.Error.Code != "" {
		msg := env.Error.Message
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return &APIError{Status: resp.StatusCode, Code: env.Error.Code, Message: msg}
	}
	return &APIError{Status: resp.StatusCode, Message: nonJSONMessage(resp, b)}
}

// nonJSONMessage describes an answer that is not the API's JSON, typically a proxy's error page. It quotes a short
// plain-text body (often the useful part), never HTML.
func nonJSONMessage(resp *http.Response, body []byte) string {
	msg := fmt.Sprintf("unexpected answer from server: HTTP %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	ct := resp.Header.Get("Content-Type")
	mt, _, _ := mime.ParseMediaType(ct)
	switch {
	case mt == "text/plain" && len(body) > 0:
		line, _, _ := strings.Cut(strings.TrimSpace(string(body)), "\n")
		line = strings.Map(func(r rune) rune {
			if unicode.IsPrint(r) {
				return r
			}
			return -1
		}, line)
		if len(line) > 200 {
			line = line[:200] + "..."
		}
		if line != "" {
			msg += ": " + line
		}
	case ct != "" && !isJSON(ct):
		msg += " (" + mt + " body; is a proxy in the way?)"
	}
	return msg
}

func isJSON(ct string) bool {
	mt, _, err := mime.ParseMediaType(ct)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

// newRequest builds a request of the API at path (under /api/v1), with the credentials and the JSON body if any.
func (c *Client) newRequest(ctx context.Context, method, path string, query url.Values, body any) (*http.Request, error) {
	u := *c.base
	// path holds PathEscape'd ids, which must reach the server as written: RawPath keeps the escaped form, Path the
	// decoded one (url.URL wants both when they differ).
	u.RawPath = c.base.EscapedPath() + apiPrefix + path
	p, err := url.PathUnescape(u.RawPath)
	if err != nil {
		return nil, fmt.Errorf("build %s %s request: %w", method, path, err)
	}
	u.Path = p
	if len(query) > 0 {
		u.RawQuery = query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, fmt.Errorf("encode %s %s request: %w", method, path, err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u.String(), rd)
	if err != nil {
		return nil, fmt.Errorf("build %s %s request: %w", method, path, err)
	}
	req.Header.Set("User-Agent", c.userAgent)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+c.apiKey)
	}
	return req, nil
}
