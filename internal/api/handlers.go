package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// readyTimeout bounds the readiness checks so a hung dependency makes the probe fail rather than hang.
const readyTimeout = 5 * time.Second

// pathID returns the {id} of the route when it is a canonical UUID. Anything else cannot name a resource, so it is
// answered 404 here, without touching the store.
func (s *server) pathID(w http.ResponseWriter, r *http.Request, kind string) (string, bool) {
	id := chi.URLParam(r, "id")
	if len(id) == 36 && uuid.Validate(id) == nil {
		return strings.ToLower(id), true
	}
	shown := id
	if len(shown) > 64 {
		shown = shown[:64] + "..."
	}
	s.writeError(w, r, http.StatusNotFound, client.CodeNotFound, model.NotFound(kind, shown).Error())
	return "", false
}

// parseWait reads ?wait=<Go duration>. It returns 0 when the caller does not want to wait; a present but invalid
// value is answered 400 before anything is changed.
func (s *server) parseWait(w http.ResponseWriter, r *http.Request) (time.Duration, bool) {
	q := r.URL.Query()
	if !q.Has("wait") {
		return 0, true
	}
	raw := q.Get("wait")
	d, err := time.ParseDuration(raw)
	switch {
	case err != nil:
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
			fmt.Sprintf("wait: %q is not a duration (use a value like 30s or 2m)", raw))
		return 0, false
	case d <= 0:
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, "wait: must be a positive duration")
		return 0, false
	case d > s.maxWait:
		s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
			fmt.Sprintf("wait: must be at most %s", s.maxWait))
		return 0, false
	}
	return d, true
}

// parsePage reads ?limit= and ?cursor=. Ranges are the service's to check; only a limit that is not a number is
// refused here.
func (s *server) parsePage(w http.ResponseWriter, r *http.Request) (store.Page, bool) {
	q := r.URL.Query()
	var p store.Page
	if raw := q.Get("limit"); raw != "" {
		n, err := strconv.Atoi(raw)
		if err != nil {
			s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest, fmt.Sprintf("limit: %q is not an integer", raw))
			return p, false
		}
		if n == 0 {
			n = -1 // an explicit 0 is out of range, not "the default"
		}
		p.Limit = n
	}
	p.After = q.Get("cursor")
	return p, true
}

func (s *server) health(w http.ResponseWriter, r *http.Request) {
	s.writeJSON(w, r, http.StatusOK, client.Health{Status: "ok", Version: s.version})
}

func (s *server) ready(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), readyTimeout)
	defer cancel()
	checks := s.svc.Ready(ctx)
	out := client.Ready{Status: "ready", Checks: make(map[string]string, len(checks))}
	status := http.StatusOK
	for name, err := range checks {
		if err == nil {
			out.Checks[name] = "ok"
			continue
		}
		out.Checks[name] = err.Error()
		out.Status = "not_ready"
		status = http.StatusServiceUnavailable
	}
	s.writeJSON(w, r, status, out)
}

// mutationTimeout bounds a service call that changes state once it no longer ends with its request.
const mutationTimeout = 30 * time.Second

// mutationContext is the context of a service call that stores rows and enqueues a task: it does not end when the
// client goes away. A client that disconnects halfway would otherwise leave a VM without its task (the store
// write cancelled between the two), and its retry would find the name taken instead of its first answer. Waits
// (?wait) keep the request's own context, so they end with the client.
func mutationContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), mutationTimeout)
}

// status reports the cluster behind this gateway: how many workers can take tasks. Always 200 when the store
// answers; "degraded" is a state of the cluster, not of this process (that is /ready's business).
func (s *server) status(w http.ResponseWriter, r *http.Request) {
	c, err := s.svc.WorkerStatus(r.Context())
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.Status{Status: "ok", Workers: client.WorkersStatus{
		Registered: c.Registered, Live: c.Live, StaleAfterSeconds: int(c.StaleAfter / time.Second)}}
	if c.Live == 0 {
		out.Status = "degraded"
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// createVM answers 202 with the pending VM and its task. With ?wait it waits for the task: 201 when the VM was
// created, 200 when creation failed (the request itself succeeded; task.status and vm.status say "failed"), and
// still 202 when the wait ends first.
func (s *server) createVM(w http.ResponseWriter, r *http.Request) {
	wait, ok := s.parseWait(w, r)
	if !ok {
		return
	}
	var req client.CreateVMRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	vm, t, err := s.svc.CreateVM(mctx, owner, req)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	tk := ToTask(t)
	accepted := client.VMAccepted{TaskID: t.ID, VM: ToVM(vm), Task: &tk}
	if wait == 0 {
		s.writeJSON(w, r, http.StatusAccepted, accepted)
		return
	}
	s.checkpoint(r, http.StatusAccepted, accepted)
	if t, err = s.svc.WaitTask(ctx, owner, t.ID, wait); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	if vm, err = s.svc.GetVM(ctx, owner, vm.ID); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	status := http.StatusAccepted
	switch t.Status {
	case model.TaskCompleted:
		status = http.StatusCreated
	case model.TaskFailed:
		status = http.StatusOK
	}
	tk = ToTask(t)
	s.writeJSON(w, r, status, client.VMAccepted{TaskID: t.ID, VM: ToVM(vm), Task: &tk})
}

func (s *server) listVMs(w http.ResponseWriter, r *http.Request) {
	page, ok := s.parsePage(w, r)
	if !ok {
		return
	}
	// ?status=running,failed and ?status=running&status=failed mean the same.
	var statuses []model.VMStatus
	for _, v := range r.URL.Query()["status"] {
		for _, st := range strings.Split(v, ",") {
			if st = strings.TrimSpace(st); st != "" {
				statuses = append(statuses, model.VMStatus(st))
			}
		}
	}
	vms, next, err := s.svc.ListVMs(r.Context(), ownerFrom(r.Context()), statuses, page)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.VMList{VMs: make([]client.VM, 0, len(vms)), NextCursor: next}
	for _, vm := range vms {
		out.VMs = append(out.VMs, ToVM(vm))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) getVM(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	vm, err := s.svc.GetVM(r.Context(), ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ToVM(vm))
}

// deleteVM answers 202 with the deletion task, or with ?wait 200 with the task once it has finished.
func (s *server) deleteVM(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	wait, ok := s.parseWait(w, r)
	if !ok {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	t, err := s.svc.DeleteVM(mctx, owner, id, r.URL.Query().Get("priority"))
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeTaskAccepted(w, r, owner, t, wait)
}

// writeTaskAccepted answers an accepted task: 202 at once, or with wait (?wait) 200 once the task has finished
// within it (202 with its state then if it has not).
func (s *server) writeTaskAccepted(w http.ResponseWriter, r *http.Request, owner string, t *model.Task, wait time.Duration) {
	status := http.StatusAccepted
	if wait > 0 {
		tk := ToTask(t)
		s.checkpoint(r, http.StatusAccepted, client.TaskAccepted{TaskID: t.ID, Task: &tk})
		var err error
		if t, err = s.svc.WaitTask(r.Context(), owner, t.ID, wait); err != nil {
			s.writeServiceError(w, r, err)
			return
		}
		if t.Status.Done() {
			status = http.StatusOK
		}
	}
	tk := ToTask(t)
	s.writeJSON(w, r, status, client.TaskAccepted{TaskID: t.ID, Task: &tk})
}

// addTools answers 202 with the task, or with ?wait 200 with the finished task (its result lists the VM's tools).
func (s *server) addTools(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	wait, ok := s.parseWait(w, r)
	if !ok {
		return
	}
	var req client.AddToolsRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	t, err := s.svc.AddTools(mctx, owner, id, req)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeTaskAccepted(w, r, owner, t, wait)
}

// execute answers 202 with the task and execution ids, or with ?wait 200 with the finished execution. A command
// that exits non-zero is a completed execution with its exit code, not an error.
func (s *server) execute(w http.ResponseWriter, r *http.Request) {
	vmID, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	wait, ok := s.parseWait(w, r)
	if !ok {
		return
	}
	var req client.ExecuteRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	e, t, err := s.svc.Execute(mctx, owner, vmID, req)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.ExecuteAccepted{TaskID: t.ID, ExecutionID: e.ID}
	if wait == 0 {
		s.writeJSON(w, r, http.StatusAccepted, out)
		return
	}
	s.checkpoint(r, http.StatusAccepted, out)
	if t, err = s.svc.WaitTask(ctx, owner, t.ID, wait); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	if !t.Status.Done() {
		s.writeJSON(w, r, http.StatusAccepted, out)
		return
	}
	if e, err = s.svc.GetExecution(ctx, owner, e.ID); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	ex := ToExecution(e)
	out.Execution = &ex
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) listExecutions(w http.ResponseWriter, r *http.Request) {
	vmID, ok := s.pathID(w, r, "vm")
	if !ok {
		return
	}
	page, ok := s.parsePage(w, r)
	if !ok {
		return
	}
	es, next, err := s.svc.ListExecutions(r.Context(), ownerFrom(r.Context()), vmID, page)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.ExecutionList{Executions: make([]client.Execution, 0, len(es)), NextCursor: next}
	for _, e := range es {
		out.Executions = append(out.Executions, ToExecution(e))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) getExecution(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "execution")
	if !ok {
		return
	}
	e, err := s.svc.GetExecution(r.Context(), ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ToExecution(e))
}

func (s *server) getTask(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "task")
	if !ok {
		return
	}
	t, err := s.svc.GetTask(r.Context(), ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ToTask(t))
}

// createJob answers 202 with the task and job ids, or with ?wait 200 with the finished job and its executions.
func (s *server) createJob(w http.ResponseWriter, r *http.Request) {
	wait, ok := s.parseWait(w, r)
	if !ok {
		return
	}
	var req client.CreateJobRequest
	if !s.decodeJSON(w, r, &req) {
		return
	}
	ctx, owner := r.Context(), ownerFrom(r.Context())
	mctx, done := mutationContext(ctx)
	defer done()
	j, t, err := s.svc.CreateJob(mctx, owner, req)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.JobAccepted{TaskID: t.ID, JobID: j.ID}
	if wait == 0 {
		s.writeJSON(w, r, http.StatusAccepted, out)
		return
	}
	s.checkpoint(r, http.StatusAccepted, out)
	if t, err = s.svc.WaitTask(ctx, owner, t.ID, wait); err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	if !t.Status.Done() {
		s.writeJSON(w, r, http.StatusAccepted, out)
		return
	}
	j, es, err := s.svc.GetJob(ctx, owner, j.ID)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	job := ToJob(j, es)
	out.Job = &job
	s.writeJSON(w, r, http.StatusOK, out)
}

func (s *server) getJob(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "job")
	if !ok {
		return
	}
	j, es, err := s.svc.GetJob(r.Context(), ownerFrom(r.Context()), id)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	s.writeJSON(w, r, http.StatusOK, ToJob(j, es))
}

// listTasks is GET /tasks: the owner's tasks, newest first (?status= comma-separated or repeated).
func (s *server) listTasks(w http.ResponseWriter, r *http.Request) {
	page, ok := s.parsePage(w, r)
	if !ok {
		return
	}
	var statuses []model.TaskStatus
	for _, v := range r.URL.Query()["status"] {
		for _, st := range strings.Split(v, ",") {
			if st = strings.TrimSpace(st); st != "" {
				statuses = append(statuses, model.TaskStatus(st))
			}
		}
	}
	ts, next, err := s.svc.ListTasks(r.Context(), ownerFrom(r.Context()), statuses, page)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.TaskList{Tasks: make([]client.Task, 0, len(ts)), NextCursor: next}
	for _, t := range ts {
		out.Tasks = append(out.Tasks, ToTask(t))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}

// listJobs is GET /jobs: the owner's jobs, newest first, without their executions.
func (s *server) listJobs(w http.ResponseWriter, r *http.Request) {
	page, ok := s.parsePage(w, r)
	if !ok {
		return
	}
	js, next, err := s.svc.ListJobs(r.Context(), ownerFrom(r.Context()), page)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	out := client.JobList{Jobs: make([]client.Job, 0, len(js)), NextCursor: next}
	for _, j := range js {
		out.Jobs = append(out.Jobs, ToJob(j, nil))
	}
	s.writeJSON(w, r, http.StatusOK, out)
}
