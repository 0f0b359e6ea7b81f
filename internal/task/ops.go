package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/tracing"
	"github.com/aetherium/aetherium/pkg/client"
)

func now() time.Time { return time.Now().UTC() }

// notFound hides the existence of other owners' resources: they are reported exactly like missing ones.
// notFound is the store's error of a missing row too (model.NotFound): another owner's resource and a missing one
// must not be told apart.
func notFound(kind, id string) error { return model.NotFound(kind, id) }

func validID(id string) bool { return uuid.Validate(id) == nil }

// submit stores a new task and puts it on the queue. If the queue refuses it, the task is marked failed so that
// nothing stays pending forever, and the caller gets ErrUnavailable.
func (s *Service) submit(ctx context.Context, t *model.Task, payload any) (err error) {
	raw, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("encode %s payload: %w", t.Type, err)
	}
	if t.ID == "" {
		t.ID = uuid.NewString() // a caller may name the task: a webhook's is its delivery's record (webhooks.go)
	}
	// The producer's span; its context rides in the stored payload, so the worker's span continues the trace
	// whichever worker takes the task and however long it waits.
	ctx, span := tracing.Start(ctx, "enqueue "+string(t.Type), trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("aetherium.task_id", t.ID), attribute.String("aetherium.task_type", string(t.Type))))
	defer func() { tracing.End(span, err) }()
	t.Payload = tracing.InjectPayload(ctx, raw)
	t.Status = model.TaskPending
	t.MaxRetries = s.limits.MaxRetries
	t.CreatedAt = now()
	t.UpdatedAt = t.CreatedAt
	if err := s.store.Tasks().Create(ctx, t); err != nil {
		return fmt.Errorf("store %s task: %w", t.Type, err)
	}
	err = s.queue.Enqueue(ctx, queue.Message{
		TaskID: t.ID, Type: t.Type, Priority: t.Priority, TargetWorker: t.TargetWorker, MaxRetries: t.MaxRetries,
	})
	if err != nil {
		msg := fmt.Sprintf("could not be queued: %v", err)
		// Use a fresh context: the request's may be the reason the enqueue failed.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_, _ = s.store.Tasks().Update(fctx, t.ID, func(t *model.Task) error {
			t.Status, t.Error = model.TaskFailed, msg
			c := now()
			t.CompletedAt = &c
			return nil
		})
		return fmt.Errorf("%w: task queue: %v", ErrUnavailable, err)
	}
	return nil
}

// CreateVM stores a pending VM and queues its creation on any worker.
func (s *Service) CreateVM(ctx context.Context, ownerID string, req client.CreateVMRequest) (*model.VM, *model.Task, error) {
	spec, err := s.normalizeVMSpec(req)
	if err != nil {
		return nil, nil, err
	}
	prio, err := parsePriority(req.Priority, model.PriorityDefault)
	if err != nil {
		return nil, nil, err
	}
	worker, placed, err := s.placeNewVM(ctx, ownerID, spec)
	if err != nil {
		return nil, nil, err
	}
	queued := ""
	defer func() { placed(queued) }()
	vm, err := s.newVM(ctx, ownerID, spec)
	if err != nil {
		return nil, nil, err
	}
	t := &model.Task{OwnerID: ownerID, Type: model.TaskVMCreate, Priority: prio, VMID: vm.ID, TargetWorker: worker}
	if err := s.submit(ctx, t, VMPayload{VMID: vm.ID}); err != nil {
		s.failVM(ctx, vm.ID, "creation could not be queued")
		return nil, nil, err
	}
	queued = vm.ID
	return vm, t, nil
}

func (s *Service) newVM(ctx context.Context, ownerID string, spec model.VMSpec) (*model.VM, error) {
	vm := &model.VM{
		ID: uuid.NewString(), OwnerID: ownerID, Name: spec.Name, Status: model.VMPending,
		VCPUCount: spec.VCPUs, MemoryMB: spec.MemoryMB, Image: spec.Image, Metadata: spec.Metadata,
		Network: spec.Network, Tools: spec.Tools, CreatedAt: now(),
	}
	vm.UpdatedAt = vm.CreatedAt
	vm.Lifetime = startLifetime(spec.Lifetime, vm.CreatedAt)
	if err := s.store.VMs().Create(ctx, vm); err != nil {
		if errors.Is(err, model.ErrConflict) {
			return nil, fmt.Errorf("a vm named %q already exists: %w", spec.Name, model.ErrConflict)
		}
		return nil, fmt.Errorf("store vm: %w", err)
	}
	return vm, nil
}

func (s *Service) failVM(ctx context.Context, id, reason string) {
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = s.store.VMs().Update(fctx, id, func(vm *model.VM) error {
		vm.Status, vm.Error = model.VMFailed, reason
		return nil
	})
}

// GetVM returns one of the owner's VMs.
func (s *Service) GetVM(ctx context.Context, ownerID, id string) (*model.VM, error) {
	if !validID(id) {
		return nil, notFound("vm", id)
	}
	vm, err := s.store.VMs().Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if vm.OwnerID != ownerID {
		return nil, notFound("vm", id)
	}
	return vm, nil
}

// ListVMs lists the owner's VMs, newest first.
func (s *Service) ListVMs(ctx context.Context, ownerID string, statuses []model.VMStatus, page store.Page) ([]*model.VM, string, error) {
	for _, st := range statuses {
		if !st.Valid() {
			return nil, "", invalid("status", "unknown vm status %q", st)
		}
	}
	page, err := s.checkPage(page)
	if err != nil {
		return nil, "", err
	}
	vms, err := s.store.VMs().List(ctx, store.VMFilter{OwnerID: ownerID, Statuses: statuses, Page: page})
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(vms) == page.Limit {
		next = vms[len(vms)-1].ID
	}
	return vms, next, nil
}

func (s *Service) checkPage(p store.Page) (store.Page, error) {
	if p.Limit == 0 {
		p.Limit = 50
	}
	if p.Limit < 1 || p.Limit > 500 {
		return p, invalid("limit", "must be between 1 and 500")
	}
	if p.After != "" && !validID(p.After) {
		return p, invalid("cursor", "is not a cursor returned by this API")
	}
	return p, nil
}

// DeleteVM queues the deletion of a VM on the worker that hosts it. A VM that no worker has picked up yet is
// deleted at once (its creation task then finds it deleted and does nothing).
func (s *Service) DeleteVM(ctx context.Context, ownerID, id string, priority string) (*model.Task, error) {
	prio, err := parsePriority(priority, model.PriorityDefault)
	if err != nil {
		return nil, err
	}
	vm, err := s.GetVM(ctx, ownerID, id)
	if err != nil {
		return nil, err
	}
	if vm.Status == model.VMDeleted {
		return nil, fmt.Errorf("vm %s is already deleted: %w", id, model.ErrConflict)
	}
	if vm.Status == model.VMPending && vm.WorkerID == "" {
		_, err := s.store.VMs().Update(ctx, id, func(v *model.VM) error {
			if v.Status != model.VMPending || v.WorkerID != "" {
				return errRaced
			}
			v.Status = model.VMDeleted
			t := now()
			v.StoppedAt = &t
			return nil
		})
		switch {
		case err == nil:
			return s.recordDone(ctx, &model.Task{OwnerID: ownerID, Type: model.TaskVMDelete, Priority: prio, VMID: id},
				VMPayload{VMID: id}, VMResult{VMID: id, Status: model.VMDeleted})
		case errors.Is(err, errRaced):
			if vm, err = s.GetVM(ctx, ownerID, id); err != nil {
				return nil, err
			}
		default:
			return nil, err
		}
	}
	if err := s.checkWorker(ctx, vm.ID, vm.WorkerID); err != nil {
		if !errors.Is(err, ErrUnavailable) {
			return nil, err
		}
		// The hosting worker is gone: deleting must still work, or the VM (and its name) would be stuck forever.
		// The record says deleted now; if that worker comes back, its reconciliation removes the leftovers.
		return s.forgetVM(ctx, ownerID, vm, prio, err)
	}
	t := &model.Task{OwnerID: ownerID, Type: model.TaskVMDelete, Priority: prio, VMID: id, TargetWorker: vm.WorkerID}
	if err := s.submit(ctx, t, VMPayload{VMID: id}); err != nil {
		return nil, err
	}
	return t, nil
}

var errRaced = errors.New("state changed concurrently")

// forgetVM marks a VM whose worker is unavailable deleted, through stopping as the state machine requires.
func (s *Service) forgetVM(ctx context.Context, ownerID string, vm *model.VM, prio model.Priority, why error) (*model.Task, error) {
	for _, next := range []model.VMStatus{model.VMStopping, model.VMDeleted} {
		if _, err := s.store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
			v.Status = next
			if next == model.VMDeleted {
				v.StoppedAt = ptr(now())
				v.Error = fmt.Sprintf("deleted while its worker was unavailable (%v); the worker removes its leftovers when it returns", why)
			}
			return nil
		}); err != nil {
			return nil, err
		}
	}
	return s.recordDone(ctx, &model.Task{OwnerID: ownerID, Type: model.TaskVMDelete, Priority: prio, VMID: vm.ID},
		VMPayload{VMID: vm.ID}, VMResult{VMID: vm.ID, Status: model.VMDeleted})
}

func ptr[T any](v T) *T { return &v }

// recordDone stores a task that the service finished itself, so that every mutating call still has a task to show.
func (s *Service) recordDone(ctx context.Context, t *model.Task, payload, result any) (*model.Task, error) {
	p, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	r, err := json.Marshal(result)
	if err != nil {
		return nil, err
	}
	n := now()
	t.ID, t.Payload, t.Result, t.Status = uuid.NewString(), p, r, model.TaskCompleted
	t.CreatedAt, t.UpdatedAt, t.StartedAt, t.CompletedAt = n, n, &n, &n
	if err := s.store.Tasks().Create(ctx, t); err != nil {
		return nil, fmt.Errorf("store %s task: %w", t.Type, err)
	}
	return t, nil
}

// checkWorker refuses to pin work to a worker that has stopped sending heartbeats: the task would wait forever.
func (s *Service) checkWorker(ctx context.Context, vmID, workerID string) error {
	if workerID == "" {
		return nil
	}
	_, err := s.liveWorker(ctx, vmID, workerID)
	return err
}

// liveWorker returns the worker that hosts a VM if it is registered, active and sending heartbeats, and otherwise
// an *UnavailableError whose Reason is for users and whose Detail (with the worker's id) is for the log.
func (s *Service) liveWorker(ctx context.Context, vmID, workerID string) (*model.Worker, error) {
	w, err := s.store.Workers().Get(ctx, workerID)
	if errors.Is(err, model.ErrNotFound) {
		return nil, &UnavailableError{Reason: "the worker hosting this vm is not registered; retry later",
			Detail: fmt.Sprintf("worker %s of vm %s is not registered", workerID, vmID)}
	}
	if err != nil {
		return nil, fmt.Errorf("look up worker %s: %w", workerID, err)
	}
	if age := time.Since(w.LastHeartbeat); w.Status != "active" || age > s.limits.WorkerStaleAfter {
		return nil, &UnavailableError{
			Reason: fmt.Sprintf("the worker hosting this vm is %s (last heartbeat %s ago); retry later",
				staleWord(w.Status), age.Round(time.Second)),
			Detail: fmt.Sprintf("worker %s of vm %s is %s, last heartbeat %s ago", w.ID, vmID, w.Status, age.Round(time.Second)),
		}
	}
	return w, nil
}

// Execute stores a pending execution and queues it on the worker that hosts the VM.
func (s *Service) Execute(ctx context.Context, ownerID, vmID string, req client.ExecuteRequest) (*model.Execution, *model.Task, error) {
	cmd := model.JobCommand{Command: req.Command, Args: req.Args, Env: req.Env, SecretEnv: req.SecretEnv, WorkingDir: req.WorkingDir, User: req.User, TimeoutSeconds: req.TimeoutSeconds}
	if err := s.validateCommand("", cmd); err != nil {
		return nil, nil, err
	}
	if err := s.checkSecretEnv(ctx, ownerID, "", cmd); err != nil {
		return nil, nil, err
	}
	prio, err := parsePriority(req.Priority, model.PriorityHigh)
	if err != nil {
		return nil, nil, err
	}
	vm, err := s.GetVM(ctx, ownerID, vmID)
	if err != nil {
		return nil, nil, err
	}
	if vm.Status != model.VMRunning {
		return nil, nil, notRunning(vmID, vm.Status)
	}
	if err := s.checkWorker(ctx, vm.ID, vm.WorkerID); err != nil {
		return nil, nil, err
	}
	e := newExecution(ownerID, vm.ID, "", 0, cmd)
	if err := s.store.Executions().Create(ctx, e); err != nil {
		return nil, nil, fmt.Errorf("store execution: %w", err)
	}
	t := &model.Task{OwnerID: ownerID, Type: model.TaskVMExecute, Priority: prio, VMID: vm.ID, TargetWorker: vm.WorkerID}
	if err := s.submitExecution(ctx, t, e); err != nil {
		return nil, nil, err
	}
	e.TaskID = t.ID
	return e, t, nil
}

// AddTools queues the installation of tools into a running VM, on the worker that hosts it.
func (s *Service) AddTools(ctx context.Context, ownerID, vmID string, req client.AddToolsRequest) (*model.Task, error) {
	prio, err := parsePriority(req.Priority, model.PriorityDefault)
	if err != nil {
		return nil, err
	}
	if len(req.Tools) == 0 && len(req.ToolVersions) == 0 {
		return nil, invalid("tools", "is required")
	}
	if len(req.Tools) > maxTools || len(req.ToolVersions) > maxTools {
		return nil, invalid("tools", "at most %d tools", maxTools)
	}
	reqs, err := s.tools.Parse(req.Tools, req.ToolVersions)
	if err != nil {
		return nil, invalid("tools", "%v (known tools: %s)", err, strings.Join(s.tools.Names(), ", "))
	}
	vm, err := s.GetVM(ctx, ownerID, vmID)
	if err != nil {
		return nil, err
	}
	if vm.Status != model.VMRunning {
		return nil, notRunning(vmID, vm.Status)
	}
	if err := s.checkWorker(ctx, vm.ID, vm.WorkerID); err != nil {
		return nil, err
	}
	p := ToolsPayload{VMID: vm.ID}
	for _, r := range reqs {
		p.Tools = append(p.Tools, r.String())
	}
	t := &model.Task{OwnerID: ownerID, Type: model.TaskVMTools, Priority: prio, VMID: vm.ID, TargetWorker: vm.WorkerID}
	if err := s.submit(ctx, t, p); err != nil {
		return nil, err
	}
	return t, nil
}

func (s *Service) submitExecution(ctx context.Context, t *model.Task, e *model.Execution) error {
	err := s.submit(ctx, t, ExecutePayload{VMID: e.VMID, ExecutionID: e.ID})
	if t.ID != "" {
		_, uerr := s.store.Executions().Update(ctx, e.ID, func(x *model.Execution) error {
			if x.TaskID == "" {
				x.TaskID = t.ID
			}
			if err != nil {
				x.Status, x.Error = model.ExecutionFailed, "could not be queued"
			}
			return nil
		})
		if err == nil && uerr != nil {
			// Queued already: report success, or a client retry would run the command twice.
			s.log.Warn("could not link execution to its task", "execution_id", e.ID, "task_id", t.ID, "err", uerr)
		}
	}
	return err
}

// NewExecution builds a pending execution of cmd.
func newExecution(ownerID, vmID, jobID string, seq int, cmd model.JobCommand) *model.Execution {
	args := cmd.Args
	if args == nil {
		args = []string{}
	}
	return &model.Execution{
		ID: uuid.NewString(), OwnerID: ownerID, VMID: vmID, JobID: jobID, Seq: seq, Status: model.ExecutionPending,
		Command: cmd.Command, Args: args, Env: cmd.Env, SecretEnv: cmd.SecretEnv, WorkingDir: cmd.WorkingDir, User: cmd.User, TimeoutSeconds: cmd.TimeoutSeconds,
		CreatedAt: now(),
	}
}

// NewJobExecution builds the pending execution of command seq of a job; workers use it as they run jobs.
func NewJobExecution(j *model.Job, vmID string, seq int) *model.Execution {
	return newExecution(j.OwnerID, vmID, j.ID, seq, j.Commands[seq])
}

// GetExecution returns one of the owner's executions.
func (s *Service) GetExecution(ctx context.Context, ownerID, id string) (*model.Execution, error) {
	if !validID(id) {
		return nil, notFound("execution", id)
	}
	e, err := s.store.Executions().Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if e.OwnerID != ownerID {
		return nil, notFound("execution", id)
	}
	return e, nil
}

// ListExecutions lists the executions of one of the owner's VMs, newest first.
func (s *Service) ListExecutions(ctx context.Context, ownerID, vmID string, page store.Page) ([]*model.Execution, string, error) {
	if _, err := s.GetVM(ctx, ownerID, vmID); err != nil {
		return nil, "", err
	}
	page, err := s.checkPage(page)
	if err != nil {
		return nil, "", err
	}
	es, err := s.store.Executions().List(ctx, store.ExecutionFilter{OwnerID: ownerID, VMID: vmID, Page: page})
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(es) == page.Limit {
		next = es[len(es)-1].ID
	}
	return es, next, nil
}

// GetTask returns one of the owner's tasks.
func (s *Service) GetTask(ctx context.Context, ownerID, id string) (*model.Task, error) {
	if !validID(id) {
		return nil, notFound("task", id)
	}
	t, err := s.store.Tasks().Get(ctx, id)
	if err != nil {
		return nil, err
	}
	if t.OwnerID != ownerID {
		return nil, notFound("task", id)
	}
	return t, nil
}

// CreateJob stores a job and queues it: on the worker that hosts its VM, or on any worker when the job creates its VM.
func (s *Service) CreateJob(ctx context.Context, ownerID string, req client.CreateJobRequest) (*model.Job, *model.Task, error) {
	if (req.VMID == "") == (req.VM == nil) {
		return nil, nil, invalid("vm_id", "exactly one of vm_id and vm is required")
	}
	if len(req.Commands) == 0 {
		return nil, nil, invalid("commands", "at least one command is required")
	}
	if len(req.Commands) > s.limits.MaxCommands {
		return nil, nil, invalid("commands", "at most %d commands are allowed", s.limits.MaxCommands)
	}
	cmds := make([]model.JobCommand, len(req.Commands))
	for i, c := range req.Commands {
		cmds[i] = model.JobCommand(c)
		if err := s.validateCommand(fmt.Sprintf("commands[%d].", i), cmds[i]); err != nil {
			return nil, nil, err
		}
		if err := s.checkSecretEnv(ctx, ownerID, fmt.Sprintf("commands[%d].", i), cmds[i]); err != nil {
			return nil, nil, err
		}
	}
	prio, err := parsePriority(req.Priority, model.PriorityDefault)
	if err != nil {
		return nil, nil, err
	}
	job := &model.Job{
		ID: uuid.NewString(), OwnerID: ownerID, Commands: cmds, StopOnError: req.StopOnError,
		DeleteVMAfter: req.DeleteVMAfter, Status: model.JobPending, CreatedAt: now(),
	}
	job.UpdatedAt = job.CreatedAt
	t := &model.Task{OwnerID: ownerID, Type: model.TaskJobRun, Priority: prio, JobID: job.ID}
	var queuedVM string // the new VM, once its job is queued (placeNewVM)
	if req.VM != nil {
		spec, err := s.normalizeVMSpec(*req.VM)
		if err != nil {
			var ve *ValidationError
			if errors.As(err, &ve) {
				ve.Field = "vm." + ve.Field
			}
			return nil, nil, err
		}
		worker, placed, err := s.placeNewVM(ctx, ownerID, spec)
		if err != nil {
			return nil, nil, err
		}
		defer func() { placed(queuedVM) }()
		vm, err := s.newVM(ctx, ownerID, spec)
		if err != nil {
			return nil, nil, err
		}
		job.VMID, job.VMSpec, t.TargetWorker = vm.ID, &spec, worker
	} else {
		vm, err := s.GetVM(ctx, ownerID, req.VMID)
		if err != nil {
			return nil, nil, err
		}
		if vm.Status != model.VMRunning {
			return nil, nil, notRunning(vm.ID, vm.Status)
		}
		if err := s.checkWorker(ctx, vm.ID, vm.WorkerID); err != nil {
			return nil, nil, err
		}
		job.VMID, t.TargetWorker = vm.ID, vm.WorkerID
	}
	t.VMID = job.VMID
	if err := s.store.Jobs().Create(ctx, job); err != nil {
		if job.VMSpec != nil {
			s.failVM(ctx, job.VMID, "its job could not be stored")
		}
		return nil, nil, fmt.Errorf("store job: %w", err)
	}
	if err := s.submit(ctx, t, JobPayload{JobID: job.ID}); err != nil {
		if job.VMSpec != nil {
			s.failVM(ctx, job.VMID, "job could not be queued")
		}
		_, _ = s.store.Jobs().Update(context.WithoutCancel(ctx), job.ID, func(j *model.Job) error {
			j.Status, j.Error = model.JobFailed, "could not be queued"
			return nil
		})
		return nil, nil, err
	}
	if job.VMSpec != nil {
		queuedVM = job.VMID
	}
	// The job runs now whatever happens next: a failure to link it to its task must not tell the client it failed
	// (a retry would run the commands twice).
	if linked, err := s.store.Jobs().Update(ctx, job.ID, func(j *model.Job) error { j.TaskID = t.ID; return nil }); err != nil {
		s.log.Warn("could not link job to its task", "job_id", job.ID, "task_id", t.ID, "err", err)
		job.TaskID = t.ID
	} else {
		job = linked
	}
	return job, t, nil
}

// GetJob returns one of the owner's jobs with the executions it has run so far, in order.
func (s *Service) GetJob(ctx context.Context, ownerID, id string) (*model.Job, []*model.Execution, error) {
	if !validID(id) {
		return nil, nil, notFound("job", id)
	}
	j, err := s.store.Jobs().Get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if j.OwnerID != ownerID {
		return nil, nil, notFound("job", id)
	}
	es, err := s.store.Executions().List(ctx, store.ExecutionFilter{OwnerID: ownerID, JobID: id, Page: store.Page{Limit: 500}})
	if err != nil {
		return nil, nil, err
	}
	return j, es, nil
}

// WaitTask waits until the task is done or timeout passes, and returns the task as it then is (done or not).
// It listens for the task's end on the event bus and re-reads the store now and then, so a lost event (or a bus
// that is down) only costs a little latency. A failed read during the wait is retried at the next poll.
func (s *Service) WaitTask(ctx context.Context, ownerID, id string, timeout time.Duration) (*model.Task, error) {
	var evC <-chan events.Event
	if s.bus != nil {
		if sub, err := s.bus.Subscribe(ctx, events.TaskTopic(id)); err == nil {
			defer sub.Close()
			evC = sub.C()
		}
	}
	t, err := s.GetTask(ctx, ownerID, id)
	if err != nil || t.Status.Done() || timeout <= 0 {
		return t, err
	}
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	poll := 50 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			// The caller stopped waiting (client gone, server shutting down): what is known so far is the answer,
			// and the API turns a task that is not done into 202.
			return t, nil
		case <-deadline.C:
			if last, err := s.GetTask(ctx, ownerID, id); err == nil {
				t = last
			}
			return t, nil
		case _, ok := <-evC:
			if !ok {
				evC = nil // the bus closed the subscription: fall back to polling
			}
		case <-time.After(poll):
			poll = min(2*poll, time.Second)
		}
		last, err := s.GetTask(ctx, ownerID, id)
		if err != nil {
			if errors.Is(err, model.ErrNotFound) {
				return nil, err
			}
			continue
		}
		if t = last; t.Status.Done() {
			return t, nil
		}
	}
}

// Ready checks this process's own dependencies, the store, the queue and the event bus: name -> nil or the error.
// Worker liveness is deliberately not among them: a gateway is ready to accept (and persist) requests with no
// worker alive, and a readiness check failing on every gateway at once would empty a load balancer's pool; see
// WorkerStatus. The endpoint that shows these is public, so dependency errors are reduced to what failed: their
// text can name hosts and users of the deployment.
func (s *Service) Ready(ctx context.Context) map[string]error {
	checks := map[string]error{}
	checks["store"] = redact(s.store.Ping(ctx), "database unreachable")
	_, err := s.queue.Stats(ctx)
	checks["queue"] = redact(err, "task queue unreachable")
	if s.bus != nil {
		checks["events"] = redact(s.bus.Health(ctx), "event bus unreachable")
	}
	return checks
}

func redact(err error, msg string) error {
	if err == nil {
		return nil
	}
	return errors.New(msg)
}

// WorkerCounts is what WorkerStatus found.
type WorkerCounts struct {
	// Registered is every worker row, stopped ones included.
	Registered int
	// Live workers are active, sent a heartbeat within Limits.WorkerStaleAfter and report a healthy backend.
	Live int
	// StaleAfter is the heartbeat age beyond which a worker is not live.
	StaleAfter time.Duration
}

// WorkerStatus counts the workers that can take tasks now. It is the cluster's state, not this process's health.
func (s *Service) WorkerStatus(ctx context.Context) (WorkerCounts, error) {
	ws, err := s.store.Workers().List(ctx)
	if err != nil {
		return WorkerCounts{}, fmt.Errorf("list workers: %w", err)
	}
	c := WorkerCounts{Registered: len(ws), StaleAfter: s.limits.WorkerStaleAfter}
	for _, w := range ws {
		if w.Status != "active" || time.Since(w.LastHeartbeat) > s.limits.WorkerStaleAfter {
			continue
		}
		if h := w.Metadata["backend_health"]; h != "" && h != "ok" {
			continue
		}
		c.Live++
	}
	return c, nil
}

// RequeueStale puts pending tasks older than age back on the queue. A queue that lost its contents (a Redis
// restarted without persistence) would otherwise leave their rows, VMs and jobs pending forever. Enqueue is
// idempotent by task id and handlers skip finished tasks, so a task the queue still holds is not run twice.
func (s *Service) RequeueStale(ctx context.Context, age time.Duration) (int, error) {
	cutoff := now().Add(-age)
	n := 0
	page := store.Page{Limit: 500}
	for {
		ts, err := s.store.Tasks().List(ctx, store.TaskFilter{Statuses: []model.TaskStatus{model.TaskPending}, Page: page})
		if err != nil {
			return n, err
		}
		for _, t := range ts {
			due := t.CreatedAt
			if t.ScheduledAt != nil {
				due = *t.ScheduledAt
			}
			if due.After(cutoff) {
				continue
			}
			err := s.queue.Enqueue(ctx, queue.Message{
				TaskID: t.ID, Type: t.Type, Priority: t.Priority, TargetWorker: t.TargetWorker,
				MaxRetries: max(t.MaxRetries-t.RetryCount, 0),
			})
			if err != nil {
				return n, fmt.Errorf("requeue task %s: %w", t.ID, err)
			}
			n++
		}
		if len(ts) < page.Limit {
			return n, nil
		}
		page.After = ts[len(ts)-1].ID
	}
}

// ListTasks lists the owner's tasks, newest first, optionally only those in statuses.
func (s *Service) ListTasks(ctx context.Context, ownerID string, statuses []model.TaskStatus, p store.Page) ([]*model.Task, string, error) {
	for _, st := range statuses {
		switch st {
		case model.TaskPending, model.TaskProcessing, model.TaskCompleted, model.TaskFailed:
		default:
			return nil, "", invalid("status", "unknown task status %q (pending, processing, completed or failed)", st)
		}
	}
	page, err := s.checkPage(p)
	if err != nil {
		return nil, "", err
	}
	ts, err := s.store.Tasks().List(ctx, store.TaskFilter{OwnerID: ownerID, Statuses: statuses, Page: page})
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(ts) == page.Limit {
		next = ts[len(ts)-1].ID
	}
	return ts, next, nil
}

// ListJobs lists the owner's jobs, newest first (without their executions: GET /jobs/{id} has them).
func (s *Service) ListJobs(ctx context.Context, ownerID string, p store.Page) ([]*model.Job, string, error) {
	page, err := s.checkPage(p)
	if err != nil {
		return nil, "", err
	}
	js, err := s.store.Jobs().List(ctx, ownerID, page)
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(js) == page.Limit {
		next = js[len(js)-1].ID
	}
	return js, next, nil
}
