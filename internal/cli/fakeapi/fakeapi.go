// Package fakeapi is an in-memory stand-in for Aetherium's REST API v1, for tests of the Go SDK and the CLI. It
// answers with the documented status codes and bodies (pkg/client's wire types and error envelope) and keeps VMs,
// tasks, executions and jobs in memory.
//
// Time is replaced by steps so tests never sleep: a new task stays unfinished for Steps polls of GET /tasks/{id},
// then finishes. With ?wait= a mutating call answers with the finished result when Steps is 0 and 202 otherwise,
// as if the wait's deadline had passed first. Commands are not run: a tiny interpreter (see run) gives their output.
// GET /executions/{id}/stream finishes the execution at once and sends its output and end as server-sent events.
// Agent runs (runs.go) play a scripted transcript, streamed live with event ids.
package fakeapi

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/pkg/client"
)

// MaxWait is the server's cap on ?wait=.
const MaxWait = 10 * time.Minute

// Request is a request the server received.
type Request struct {
	Method string
	Path   string // decoded
	// EscapedPath is the path as sent.
	EscapedPath string
	Query       url.Values
	Header      http.Header
	Body        []byte
}

// Server is the fake API.
type Server struct {
	*httptest.Server

	key string

	mu       sync.Mutex
	steps    int
	pageSize int
	notReady bool
	before   func(w http.ResponseWriter, r *http.Request) bool
	vms      map[string]*client.VM
	vmOrder  []string
	tasks    map[string]*taskState
	execs    map[string]*client.Execution
	jobs     map[string]*client.Job
	requests []Request

	runs        map[string]*runState
	runOrder    []string
	runPlan     func(client.Run) RunPlan
	runChanged  chan struct{} // closed (and replaced) whenever a run event is appended
	secrets     []string
	streamBreak int
	logs        []client.LogEntry // logs.go
}

type taskState struct {
	task      client.Task
	remaining int
	finish    func(t *client.Task) // called once, with the mutex held
}

// New starts a fake API that accepts key.
func New(key string) *Server {
	s := &Server{
		key:      key,
		pageSize: 100,
		vms:      map[string]*client.VM{},
		tasks:    map[string]*taskState{},
		execs:    map[string]*client.Execution{},
		jobs:     map[string]*client.Job{},

		runs:       map[string]*runState{},
		runChanged: make(chan struct{}),
		secrets:    []string{"ANTHROPIC_API_KEY"},
	}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// SetSteps sets how many polls of GET /tasks/{id} see a new task unfinished (0 by default).
func (s *Server) SetSteps(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = n
}

// SetPageSize sets the default (and largest) page of GET /vms (100 by default).
func (s *Server) SetPageSize(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pageSize = n
}

// SetNotReady makes GET /ready answer 503.
func (s *Server) SetNotReady(b bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notReady = b
}

// SetBefore installs a function that sees every request first and may answer it itself (returning true), e.g. to
// inject a proxy's error page. It is called without the server's lock held.
func (s *Server) SetBefore(f func(w http.ResponseWriter, r *http.Request) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.before = f
}

// Requests returns the requests received so far.
func (s *Server) Requests() []Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.requests)
}

// Count returns how many requests had this method and path.
func (s *Server) Count(method, path string) int {
	n := 0
	for _, r := range s.Requests() {
		if r.Method == method && r.Path == path {
			n++
		}
	}
	return n
}

// AddVM stores a VM directly (no task) and returns it.
func (s *Server) AddVM(name, status string) client.VM {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm := s.newVM(client.CreateVMRequest{Name: name})
	vm.Status = status
	return *vm
}

// VM returns a stored VM.
func (s *Server) VM(id string) (client.VM, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	vm, ok := s.vms[id]
	if !ok {
		return client.VM{}, false
	}
	return *vm, true
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	s.mu.Lock()
	s.requests = append(s.requests, Request{Method: r.Method, Path: r.URL.Path, EscapedPath: r.URL.EscapedPath(), Query: r.URL.Query(), Header: r.Header.Clone(), Body: body})
	before := s.before
	s.mu.Unlock()
	if before != nil && before(w, r) {
		return
	}

	// Route on the escaped path, as chi does, so an id holding "/" stays one segment.
	path, ok := strings.CutPrefix(r.URL.EscapedPath(), "/api/v1/")
	if !ok {
		writeErr(w, http.StatusNotFound, client.CodeNotFound, "no such route")
		return
	}
	parts := strings.Split(path, "/")
	for i, p := range parts {
		if u, err := url.PathUnescape(p); err == nil {
			parts[i] = u
		}
	}
	if parts[0] == "health" && len(parts) == 1 && r.Method == http.MethodGet {
		writeJSON(w, http.StatusOK, client.Health{Status: "ok", Version: "fake"})
		return
	}
	if parts[0] == "ready" && len(parts) == 1 && r.Method == http.MethodGet {
		s.mu.Lock()
		notReady := s.notReady
		s.mu.Unlock()
		if notReady {
			writeJSON(w, http.StatusServiceUnavailable, client.Ready{Status: "not_ready", Checks: map[string]string{"store": "ok", "queue": "dial tcp: connection refused"}})
		} else {
			writeJSON(w, http.StatusOK, client.Ready{Status: "ready", Checks: map[string]string{"store": "ok", "queue": "ok"}})
		}
		return
	}
	if r.Header.Get("Authorization") != "Bearer "+s.key {
		writeErr(w, http.StatusUnauthorized, client.CodeUnauthorized, "missing or invalid api key")
		return
	}
	wait, err := parseWait(r)
	if err != nil {
		writeErr(w, http.StatusBadRequest, client.CodeBadRequest, err.Error())
		return
	}

	if len(parts) == 3 && parts[0] == "runs" && parts[2] == "stream" && r.Method == http.MethodGet {
		s.streamRun(w, r, parts[1]) // takes the lock itself: it waits for events
		return
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.serveRuns(w, r, parts) || s.serveLogs(w, r, parts) {
		return
	}
	switch {
	case len(parts) == 1 && parts[0] == "vms" && r.Method == http.MethodPost:
		s.createVM(w, r, wait)
	case len(parts) == 1 && parts[0] == "vms" && r.Method == http.MethodGet:
		s.listVMs(w, r)
	case len(parts) == 2 && parts[0] == "vms" && r.Method == http.MethodGet:
		if vm := s.findVM(w, parts[1]); vm != nil {
			writeJSON(w, http.StatusOK, vm)
		}
	case len(parts) == 2 && parts[0] == "vms" && r.Method == http.MethodDelete:
		s.deleteVM(w, parts[1], wait)
	case len(parts) == 3 && parts[0] == "vms" && parts[2] == "execute" && r.Method == http.MethodPost:
		s.execute(w, r, parts[1], wait)
	case len(parts) == 3 && parts[0] == "vms" && parts[2] == "executions" && r.Method == http.MethodGet:
		if vm := s.findVM(w, parts[1]); vm != nil {
			l := client.ExecutionList{Executions: []client.Execution{}}
			for _, e := range s.execs {
				if e.VMID == vm.ID {
					l.Executions = append(l.Executions, *e)
				}
			}
			slices.SortFunc(l.Executions, func(a, b client.Execution) int { return a.CreatedAt.Compare(b.CreatedAt) })
			writeJSON(w, http.StatusOK, l)
		}
	case len(parts) == 2 && parts[0] == "executions" && r.Method == http.MethodGet:
		if e, ok := s.execs[parts[1]]; ok {
			writeJSON(w, http.StatusOK, e)
		} else {
			writeErr(w, http.StatusNotFound, client.CodeNotFound, "execution not found")
		}
	case len(parts) == 3 && parts[0] == "executions" && parts[2] == "stream" && r.Method == http.MethodGet:
		s.stream(w, r, parts[1])
	case len(parts) == 2 && parts[0] == "tasks" && r.Method == http.MethodGet:
		ts, ok := s.tasks[parts[1]]
		if !ok {
			writeErr(w, http.StatusNotFound, client.CodeNotFound, "task not found")
			return
		}
		s.advance(ts)
		writeJSON(w, http.StatusOK, ts.task)
	case len(parts) == 1 && parts[0] == "jobs" && r.Method == http.MethodPost:
		s.createJob(w, r, wait)
	case len(parts) == 2 && parts[0] == "jobs" && r.Method == http.MethodGet:
		if j, ok := s.jobs[parts[1]]; ok {
			writeJSON(w, http.StatusOK, s.jobView(j))
		} else {
			writeErr(w, http.StatusNotFound, client.CodeNotFound, "job not found")
		}
	default:
		writeErr(w, http.StatusNotFound, client.CodeNotFound, "no such route")
	}
}

func parseWait(r *http.Request) (time.Duration, error) {
	v := r.URL.Query().Get("wait")
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("wait: invalid duration %q", v)
	}
	return min(d, MaxWait), nil
}

// decode reads a JSON body strictly, answering the documented errors itself.
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != "application/json" {
		writeErr(w, http.StatusUnsupportedMediaType, client.CodeUnsupportedMedia, "content type must be application/json")
		return false
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeErr(w, http.StatusBadRequest, client.CodeInvalidJSON, "invalid JSON body: "+err.Error())
		return false
	}
	return true
}

func (s *Server) newTask(typ, vmID string, finish func(t *client.Task)) *taskState {
	now := time.Now().UTC()
	ts := &taskState{
		task:      client.Task{ID: uuid.NewString(), Type: typ, Status: "pending", Priority: "default", VMID: vmID, MaxRetries: 3, CreatedAt: now, UpdatedAt: now},
		remaining: s.steps,
		finish:    finish,
	}
	s.tasks[ts.task.ID] = ts
	return ts
}

// advance moves a task one step on; it finishes when no steps remain.
func (s *Server) advance(ts *taskState) {
	if taskDone(ts.task.Status) {
		return
	}
	now := time.Now().UTC()
	if ts.remaining > 0 {
		ts.remaining--
		ts.task.Status = "processing"
		ts.task.Attempts = 1
		ts.task.StartedAt = &now
		ts.task.UpdatedAt = now
		return
	}
	ts.task.Status = "completed"
	ts.task.Attempts = 1
	ts.task.UpdatedAt = now
	ts.task.CompletedAt = &now
	ts.finish(&ts.task)
}

// finishedWithin reports whether a task finishes within a request's ?wait=: in this fake, when it needs no steps.
func (s *Server) finishedWithin(ts *taskState, wait time.Duration) bool {
	if wait <= 0 || ts.remaining > 0 {
		return false
	}
	s.advance(ts)
	return true
}

func (s *Server) newVM(req client.CreateVMRequest) *client.VM {
	now := time.Now().UTC()
	vm := &client.VM{ID: uuid.NewString(), Name: req.Name, Status: "pending", VCPUs: req.VCPUs, MemoryMB: req.MemoryMB, Image: req.Image, Metadata: req.Metadata, CreatedAt: now, UpdatedAt: now}
	if vm.VCPUs == 0 {
		vm.VCPUs = 1
	}
	if vm.MemoryMB == 0 {
		vm.MemoryMB = 512
	}
	s.vms[vm.ID] = vm
	s.vmOrder = append(s.vmOrder, vm.ID)
	return vm
}

func (s *Server) validateVM(w http.ResponseWriter, req client.CreateVMRequest) bool {
	switch {
	case req.Name == "":
		writeErr(w, http.StatusBadRequest, client.CodeValidation, "name: is required")
	case req.VCPUs < 0 || req.VCPUs > 32:
		writeErr(w, http.StatusBadRequest, client.CodeValidation, "vcpus: must be between 1 and 32")
	case req.MemoryMB != 0 && (req.MemoryMB < 128 || req.MemoryMB > 65536):
		writeErr(w, http.StatusBadRequest, client.CodeValidation, "memory_mb: must be between 128 and 65536")
	default:
		for _, vm := range s.vms {
			if vm.Name == req.Name && vm.Status != "deleted" {
				writeErr(w, http.StatusConflict, client.CodeConflict, fmt.Sprintf("a vm named %q already exists", req.Name))
				return false
			}
		}
		return true
	}
	return false
}

// boot finishes a vm:create task: names starting with "fail" fail to boot.
func (s *Server) boot(vm *client.VM, t *client.Task) {
	now := time.Now().UTC()
	vm.UpdatedAt = now
	if strings.HasPrefix(vm.Name, "fail") {
		vm.Status, vm.Error = "failed", "boot failed: kernel panic"
		t.Status, t.Error = "failed", vm.Error
		return
	}
	vm.Status, vm.WorkerID, vm.StartedAt = "running", "worker-1", &now
	t.WorkerID = "worker-1"
	t.Result = json.RawMessage(fmt.Sprintf(`{"vm_id":%q}`, vm.ID))
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request, wait time.Duration) {
	var req client.CreateVMRequest
	if !decode(w, r, &req) || !s.validateVM(w, req) {
		return
	}
	vm := s.newVM(req)
	ts := s.newTask("vm:create", vm.ID, func(t *client.Task) { s.boot(vm, t) })
	vm.Status = "creating"
	if s.finishedWithin(ts, wait) {
		status := http.StatusCreated
		if ts.task.Status == "failed" {
			status = http.StatusOK
		}
		task := ts.task
		writeJSON(w, status, client.VMAccepted{TaskID: ts.task.ID, VM: *vm, Task: &task})
		return
	}
	writeJSON(w, http.StatusAccepted, client.VMAccepted{TaskID: ts.task.ID, VM: *vm})
}

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var statuses []string
	if v := q.Get("status"); v != "" {
		statuses = strings.Split(v, ",")
		for _, st := range statuses {
			if !slices.Contains([]string{"pending", "creating", "running", "stopping", "stopped", "deleted", "failed"}, st) {
				writeErr(w, http.StatusBadRequest, client.CodeValidation, fmt.Sprintf("status: unknown status %q", st))
				return
			}
		}
	}
	limit := s.pageSize
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeErr(w, http.StatusBadRequest, client.CodeValidation, "limit: must be a positive integer")
			return
		}
		limit = min(n, s.pageSize)
	}
	start := 0
	if v := q.Get("cursor"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > len(s.vmOrder) {
			writeErr(w, http.StatusBadRequest, client.CodeValidation, "cursor: invalid")
			return
		}
		start = n
	}
	out := client.VMList{VMs: []client.VM{}}
	i := start
	for ; i < len(s.vmOrder) && len(out.VMs) < limit; i++ {
		vm := s.vms[s.vmOrder[i]]
		if len(statuses) == 0 || slices.Contains(statuses, vm.Status) {
			out.VMs = append(out.VMs, *vm)
		}
	}
	if i < len(s.vmOrder) {
		out.NextCursor = strconv.Itoa(i)
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) findVM(w http.ResponseWriter, id string) *client.VM {
	vm, ok := s.vms[id]
	if !ok {
		writeErr(w, http.StatusNotFound, client.CodeNotFound, "vm not found")
		return nil
	}
	return vm
}

func (s *Server) deleteVM(w http.ResponseWriter, id string, wait time.Duration) {
	vm := s.findVM(w, id)
	if vm == nil {
		return
	}
	ts := s.newTask("vm:delete", vm.ID, func(*client.Task) {
		now := time.Now().UTC()
		vm.Status, vm.StoppedAt, vm.UpdatedAt = "deleted", &now, now
	})
	if s.finishedWithin(ts, wait) {
		task := ts.task
		writeJSON(w, http.StatusOK, client.TaskAccepted{TaskID: ts.task.ID, Task: &task})
		return
	}
	writeJSON(w, http.StatusAccepted, client.TaskAccepted{TaskID: ts.task.ID})
}

func (s *Server) newExecution(vmID, jobID, taskID string, c client.JobCommand) *client.Execution {
	e := &client.Execution{ID: uuid.NewString(), VMID: vmID, JobID: jobID, TaskID: taskID, Status: "pending", Command: c.Command, Args: c.Args, Env: c.Env, WorkingDir: c.WorkingDir, CreatedAt: time.Now().UTC()}
	if e.Args == nil {
		e.Args = []string{}
	}
	s.execs[e.ID] = e
	return e
}

func (s *Server) execute(w http.ResponseWriter, r *http.Request, vmID string, wait time.Duration) {
	vm := s.findVM(w, vmID)
	if vm == nil {
		return
	}
	var req client.ExecuteRequest
	if !decode(w, r, &req) {
		return
	}
	if req.Command == "" {
		writeErr(w, http.StatusBadRequest, client.CodeValidation, "command: is required")
		return
	}
	if vm.Status != "running" {
		writeErr(w, http.StatusConflict, client.CodeVMNotRunning, fmt.Sprintf("vm is %s, not running", vm.Status))
		return
	}
	var exec *client.Execution
	ts := s.newTask("vm:execute", vm.ID, func(t *client.Task) {
		run(exec)
		if exec.Status == "failed" {
			t.Status, t.Error = "failed", exec.Error
		}
	})
	exec = s.newExecution(vm.ID, "", ts.task.ID, client.JobCommand{Command: req.Command, Args: req.Args, Env: req.Env, WorkingDir: req.WorkingDir, TimeoutSeconds: req.TimeoutSeconds})
	if s.finishedWithin(ts, wait) {
		e := *exec
		writeJSON(w, http.StatusOK, client.ExecuteAccepted{TaskID: ts.task.ID, ExecutionID: exec.ID, Execution: &e})
		return
	}
	writeJSON(w, http.StatusAccepted, client.ExecuteAccepted{TaskID: ts.task.ID, ExecutionID: exec.ID})
}

// stream answers GET /executions/{id}/stream: the execution's task is finished at once (a stream waits for the
// end whatever the steps), then its output and end are sent as server-sent events.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, id string) {
	e, ok := s.execs[id]
	if !ok {
		writeErr(w, http.StatusNotFound, client.CodeNotFound, "execution not found")
		return
	}
	if ts, ok := s.tasks[e.TaskID]; ok {
		for !taskDone(ts.task.Status) {
			ts.remaining = 0
			s.advance(ts)
		}
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.WriteHeader(http.StatusOK)
	fmt.Fprintf(w, ": execution %s\n\n", id)
	for _, o := range []struct{ name, data, param string }{{"stdout", e.Stdout, "stdout_offset"}, {"stderr", e.Stderr, "stderr_offset"}} {
		from, _ := strconv.Atoi(r.URL.Query().Get(o.param))
		if from < len(o.data) {
			b, _ := json.Marshal(client.OutputChunk{Offset: int64(from), Data: o.data[from:]})
			fmt.Fprintf(w, "event: %s\ndata: %s\n\n", o.name, b)
		}
	}
	b, _ := json.Marshal(client.ExecutionEnd{
		Status: e.Status, ExitCode: e.ExitCode, TimedOut: e.TimedOut, StdoutTruncated: e.StdoutTruncated,
		StderrTruncated: e.StderrTruncated, Error: e.Error,
	})
	fmt.Fprintf(w, "event: end\ndata: %s\n\n", b)
}

func (s *Server) createJob(w http.ResponseWriter, r *http.Request, wait time.Duration) {
	var req client.CreateJobRequest
	if !decode(w, r, &req) {
		return
	}
	switch {
	case (req.VMID == "") == (req.VM == nil):
		writeErr(w, http.StatusBadRequest, client.CodeValidation, "exactly one of vm_id and vm is required")
		return
	case len(req.Commands) == 0:
		writeErr(w, http.StatusBadRequest, client.CodeValidation, "commands: at least one is required")
		return
	}
	var vm *client.VM
	if req.VMID != "" {
		if vm = s.findVM(w, req.VMID); vm == nil {
			return
		}
		if vm.Status != "running" {
			writeErr(w, http.StatusConflict, client.CodeVMNotRunning, fmt.Sprintf("vm is %s, not running", vm.Status))
			return
		}
	} else if !s.validateVM(w, *req.VM) {
		return
	}
	now := time.Now().UTC()
	job := &client.Job{ID: uuid.NewString(), Status: "pending", Commands: req.Commands, StopOnError: req.StopOnError, DeleteVMAfter: req.DeleteVMAfter, CreatedAt: now, UpdatedAt: now}
	if vm != nil {
		job.VMID = vm.ID
	}
	ts := s.newTask("job:run", job.VMID, func(t *client.Task) { s.runJob(job, req, t) })
	ts.task.JobID, job.TaskID = job.ID, ts.task.ID
	s.jobs[job.ID] = job
	if s.finishedWithin(ts, wait) {
		v := s.jobView(job)
		writeJSON(w, http.StatusOK, client.JobAccepted{TaskID: ts.task.ID, JobID: job.ID, Job: &v})
		return
	}
	writeJSON(w, http.StatusAccepted, client.JobAccepted{TaskID: ts.task.ID, JobID: job.ID})
}

func (s *Server) runJob(job *client.Job, req client.CreateJobRequest, t *client.Task) {
	now := time.Now().UTC()
	job.StartedAt, job.Status = &now, "running"
	defer func() {
		end := time.Now().UTC()
		job.CompletedAt, job.UpdatedAt = &end, end
	}()
	if req.VM != nil {
		vm := s.newVM(*req.VM)
		job.VMID = vm.ID
		s.boot(vm, t)
		if vm.Status != "running" {
			job.Status, job.Error = "failed", "create vm: "+vm.Error
			return
		}
	}
	job.Status = "completed"
	for i, c := range req.Commands {
		e := s.newExecution(job.VMID, job.ID, t.ID, c)
		e.CreatedAt = e.CreatedAt.Add(time.Duration(i)) // keep the order stable
		run(e)
		failed := e.Status == "failed" || e.ExitCode == nil || *e.ExitCode != 0
		if failed && req.StopOnError {
			job.Status, job.Error = "failed", fmt.Sprintf("command %d failed", i+1)
			break
		}
	}
	if req.DeleteVMAfter {
		if vm, ok := s.vms[job.VMID]; ok {
			vm.Status = "deleted"
		}
	}
}

// jobView is a job with its executions, in order.
func (s *Server) jobView(j *client.Job) client.Job {
	v := *j
	v.Executions = []client.Execution{}
	for _, e := range s.execs {
		if e.JobID == j.ID {
			v.Executions = append(v.Executions, *e)
		}
	}
	slices.SortFunc(v.Executions, func(a, b client.Execution) int { return a.CreatedAt.Compare(b.CreatedAt) })
	return v
}

// run "runs" a command. It understands echo, true, false, pwd, printenv NAME, and sh -c SCRIPT where SCRIPT is
// statements separated by ";": echo WORDS [>&2], exit N, bigout (output truncated by the server), hang (killed by
// its timeout) and unreachable (the agent cannot be reached: the execution fails).
func run(e *client.Execution) {
	now := time.Now().UTC()
	e.StartedAt, e.WorkerID = &now, "worker-1"
	defer func() {
		end := time.Now().UTC()
		d := end.Sub(now).Milliseconds()
		e.CompletedAt, e.DurationMS = &end, &d
	}()
	var stmts [][]string
	if e.Command == "sh" && len(e.Args) == 2 && e.Args[0] == "-c" {
		for st := range strings.SplitSeq(e.Args[1], ";") {
			if f := strings.Fields(st); len(f) > 0 {
				stmts = append(stmts, f)
			}
		}
	} else {
		stmts = [][]string{append([]string{e.Command}, e.Args...)}
	}
	var stdout, stderr strings.Builder
	code := 0
	defer func() {
		e.Stdout, e.Stderr = stdout.String(), stderr.String()
	}()
	for _, f := range stmts {
		switch f[0] {
		case "echo":
			words := f[1:]
			dst := &stdout
			if len(words) > 0 && words[len(words)-1] == ">&2" {
				words, dst = words[:len(words)-1], &stderr
			}
			dst.WriteString(strings.Join(words, " ") + "\n")
			code = 0
		case "true":
			code = 0
		case "false":
			code = 1
		case "pwd":
			stdout.WriteString(e.WorkingDir + "\n")
		case "printenv":
			if len(f) > 1 {
				stdout.WriteString(e.Env[f[1]] + "\n")
			}
		case "exit":
			if len(f) > 1 {
				code, _ = strconv.Atoi(f[1])
			}
			e.Status, e.ExitCode = "completed", &code
			return
		case "bigout":
			stdout.WriteString(strings.Repeat("x", 64))
			e.StdoutTruncated = true
		case "hang":
			e.Status, e.TimedOut = "completed", true
			return
		case "unreachable":
			e.Status, e.Error = "failed", "agent unreachable: connection reset"
			return
		default:
			stderr.WriteString("sh: " + f[0] + ": not found\n")
			code = 127
		}
	}
	e.Status, e.ExitCode = "completed", &code
}

func taskDone(status string) bool { return status == "completed" || status == "failed" }

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, client.ErrorBody{Error: client.ErrorDetail{Code: code, Message: msg}})
}
