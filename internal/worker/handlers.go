package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel/attribute"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/tracing"
	"github.com/aetherium/aetherium/internal/vmm"
)

func utcNow() *time.Time { t := time.Now().UTC(); return &t }

func (w *Worker) handleCreate(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.VMPayload
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	tl := &toolLog{w: w, taskID: t.ID, vmID: p.VMID}
	vm, err := w.createVM(ctx, p.VMID, lastAttempt(t), tl)
	if err != nil {
		return nil, err
	}
	return encode(task.VMResult{VMID: vm.ID, Status: vm.Status, ToolLog: tl.all()})
}

// createVM takes a pending VM to running on this worker. On a failed attempt it removes whatever the backend made,
// so the next attempt starts clean; on the last attempt it marks the VM failed with the reason.
func (w *Worker) createVM(ctx context.Context, vmID string, last bool, tl *toolLog) (*model.VM, error) {
	unlock, err := w.admit(ctx, vmID)
	if err != nil {
		return nil, err
	}
	vm, err := w.cfg.Store.VMs().Update(ctx, vmID, func(v *model.VM) error {
		switch {
		case v.Status == model.VMPending:
			v.Status, v.WorkerID = model.VMCreating, w.cfg.ID
			return nil
		case v.Status == model.VMDeleted:
			return errSkip // deleted before it was created
		case v.Status == model.VMCreating:
			// A retry, here or from another worker: the VM has one create task and this worker holds it now, and a
			// failed attempt removes what it made, so taking the VM over is safe. (What a crashed worker left behind
			// is removed by its own reconciliation, since the VM is no longer its.)
			if v.WorkerID != w.cfg.ID {
				w.log.Info("taking over vm creation", "vm_id", v.ID, "from_worker", v.WorkerID)
				v.WorkerID = w.cfg.ID
			}
			return nil
		case v.WorkerID != w.cfg.ID:
			return queue.Permanent(fmt.Errorf("vm %s is %s on worker %q", v.ID, v.Status, v.WorkerID))
		case v.Status == model.VMRunning:
			return nil // a redelivery of a finished create
		default:
			return errSkip
		}
	})
	unlock() // the VM is creating here now (or was not to be): the next admission counts it
	if errors.Is(err, errSkip) || (err == nil && vm.Status == model.VMRunning) {
		vm, err = w.cfg.Store.VMs().Get(ctx, vmID)
		if err != nil {
			return nil, err
		}
		if vm.Status == model.VMRunning || vm.Status == model.VMDeleted {
			return vm, nil // nothing to do: done already, or deleted before it was created
		}
		msg := fmt.Sprintf("vm %s is %s and cannot be created", vm.ID, vm.Status)
		if vm.Error != "" {
			msg += " (" + vm.Error + ")"
		}
		return nil, queue.Permanent(errors.New(msg))
	}
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	log := w.log.With("vm_id", vm.ID, "vm_name", vm.Name)
	start := time.Now()
	var egress *vmm.EgressPolicy
	if vm.Network != nil {
		e := vm.Network.Egress
		egress = &vmm.EgressPolicy{AllowCIDRs: e.AllowCIDRs, DenyCIDRs: e.DenyCIDRs, AllowDomains: e.AllowDomains,
			DenyDomains: e.DenyDomains}
	}
	backend := attribute.String("aetherium.backend", w.cfg.Backend.Name())
	sctx, span := stepSpan(ctx, "vm.create", backend) // the disk and the network
	inst, err := w.cfg.Backend.CreateVM(sctx, vmm.VMConfig{
		ID: vm.ID, Name: vm.Name, VCPUs: vm.VCPUCount, MemoryMB: vm.MemoryMB, Image: vm.Image, WorkerID: w.cfg.ID,
		Egress: egress,
	})
	tracing.End(span, err)
	if err == nil {
		bootStart := time.Now()
		sctx, span := stepSpan(ctx, "vm.boot", backend) // until the agent answers
		if err = w.cfg.Backend.StartVM(sctx, vm.ID); err == nil {
			w.cfg.Metrics.ObserveBoot(w.cfg.Backend.Name(), time.Since(bootStart))
		}
		tracing.End(span, err)
	}
	if err == nil {
		sctx, span := stepSpan(ctx, "guest.setup")
		err = w.setupGuest(sctx, vm) // CA certificates and proxy settings (guestenv.go)
		tracing.End(span, err)
	}
	var installed map[string]string
	if err == nil {
		sctx, span := stepSpan(ctx, "tools.provision")
		installed, err = w.provisionTools(sctx, vm, tl)
		tracing.End(span, err)
	}
	if err != nil {
		log.Warn("vm creation attempt failed", "err", err, "last_attempt", last)
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := w.cfg.Backend.DeleteVM(cctx, vm.ID); derr != nil {
			log.Error("cleanup after failed creation", "err", derr)
		}
		if last || queue.IsPermanent(err) || errors.Is(err, vmm.ErrInvalidConfig) {
			w.setVMFailed(cctx, vm.ID, fmt.Sprintf("creation failed: %v", err))
			return nil, queue.Permanent(fmt.Errorf("create vm %s: %w", vm.ID, err))
		}
		return nil, fmt.Errorf("create vm %s: %w", vm.ID, err)
	}
	vm, err = w.cfg.Store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
		v.Status, v.StartedAt, v.Error = model.VMRunning, utcNow(), ""
		if installed != nil {
			v.InstalledTools = installed
		}
		if inst != nil {
			v.SocketPath = inst.SocketPath
			if v.Image == "" {
				v.Image = inst.Image
			}
			if inst.Network != nil {
				if v.Network == nil {
					v.Network = &model.VMNetwork{}
				}
				v.Network.IP, v.Network.MAC, v.Network.Gateway = inst.Network.IP, inst.Network.MAC, inst.Network.Gateway
			}
		}
		return nil
	})
	if errors.Is(err, model.ErrInvalidTransition) {
		// Deleted while it booted: do not leave it running.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if derr := w.cfg.Backend.DeleteVM(cctx, vmID); derr != nil {
			return nil, fmt.Errorf("remove vm %s deleted during creation: %w", vmID, derr)
		}
		return w.cfg.Store.VMs().Get(ctx, vmID)
	}
	if err != nil {
		return nil, err
	}
	took := time.Since(start)
	w.cfg.Metrics.ObserveReady(w.cfg.Backend.Name(), took)
	log.Info("vm running", "took_ms", took.Milliseconds())
	return vm, nil
}

var errSkip = errors.New("skip")

func (w *Worker) setVMFailed(ctx context.Context, id, reason string) {
	if _, err := w.cfg.Store.VMs().Update(ctx, id, func(v *model.VM) error {
		v.Status, v.Error, v.StoppedAt = model.VMFailed, reason, utcNow()
		return nil
	}); err != nil {
		w.log.Error("mark vm failed", "vm_id", id, "err", err)
	}
}

func (w *Worker) handleDelete(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.LifecyclePayload // a task.VMPayload, with the reaper's reason when it asked (lifecycle.go)
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	if p.Reason != "" {
		return w.reapDelete(ctx, p)
	}
	if err := w.deleteVM(ctx, p.VMID); err != nil {
		return nil, err
	}
	return encode(task.VMResult{VMID: p.VMID, Status: model.VMDeleted})
}

func (w *Worker) deleteVM(ctx context.Context, vmID string) error {
	vm, err := w.cfg.Store.VMs().Update(ctx, vmID, func(v *model.VM) error {
		if v.Status == model.VMDeleted {
			return errSkip
		}
		if v.WorkerID != "" && v.WorkerID != w.cfg.ID {
			return queue.Permanent(fmt.Errorf("vm %s is hosted by worker %q", v.ID, v.WorkerID))
		}
		v.Status = model.VMStopping
		return nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		if errors.Is(err, model.ErrNotFound) || errors.Is(err, model.ErrInvalidTransition) {
			return queue.Permanent(err)
		}
		return err
	}
	w.shipConsole(ctx, vm.ID, vm.OwnerID) // before the backend removes the VM's console log
	if err := w.cfg.Backend.DeleteVM(ctx, vm.ID); err != nil {
		return fmt.Errorf("delete vm %s from %s backend: %w", vm.ID, w.cfg.Backend.Name(), err)
	}
	_, err = w.cfg.Store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
		v.Status, v.StoppedAt = model.VMDeleted, utcNow()
		return nil
	})
	if err == nil {
		w.activity.Forget(vm.ID)
		w.log.Info("vm deleted", "vm_id", vm.ID)
	}
	return err
}

func (w *Worker) handleExecute(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.ExecutePayload
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	e, err := w.cfg.Store.Executions().Get(ctx, p.ExecutionID)
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	if e.Status == model.ExecutionPending {
		// Only a command that is about to run needs a permit (see execgate.go).
		release, err := w.admitExec(ctx, e.VMID, execAdmitWait)
		if errors.Is(err, errVMBusy) {
			// Waits in the queue, out of any slot, without using up a retry; the execution stays pending.
			return nil, queue.Defer(execDeferDelay, err)
		}
		if err != nil {
			return nil, err
		}
		defer release()
	}
	e, err = w.runExecution(ctx, e)
	if err != nil {
		return nil, err
	}
	return encode(task.ExecuteResult{ExecutionID: e.ID, ExitCode: derefInt(e.ExitCode)})
}

func derefInt(p *int) int {
	if p == nil {
		return -1
	}
	return *p
}

// persistFor bounds how long a worker keeps trying to record a finished command.
const persistFor = 2 * time.Minute

// persist retries fn with backoff until it succeeds, fails for a reason retrying cannot fix, or persistFor passes.
// It runs on a context detached from ctx's cancellation, because the work it records is already done.
func persist[T any](ctx context.Context, log *slog.Logger, fn func(context.Context) (T, error)) (T, error) {
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), persistFor)
	defer cancel()
	delay := 100 * time.Millisecond
	for {
		v, err := fn(pctx)
		if err == nil || errors.Is(err, model.ErrNotFound) || errors.Is(err, model.ErrInvalidInput) || queue.IsPermanent(err) {
			return v, err
		}
		log.Warn("could not record a result; retrying", "err", err, "in", delay)
		select {
		case <-pctx.Done():
			return v, fmt.Errorf("record result: %w", err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
}

// errExecutionFailed marks an execution that could not run; the execution row says why.
var errExecutionFailed = errors.New("execution failed")

// runExecution runs a stored execution once. A finished execution is returned as it is; one that was already
// running was interrupted (a worker died mid-command) and is failed rather than run again.
func (w *Worker) runExecution(ctx context.Context, e *model.Execution) (*model.Execution, error) {
	switch e.Status {
	case model.ExecutionCompleted:
		return e, nil
	case model.ExecutionFailed:
		return e, queue.Permanent(fmt.Errorf("%w: %s", errExecutionFailed, e.Error))
	case model.ExecutionRunning:
		return w.failExecution(ctx, e, "interrupted: the worker stopped while the command was running; it is not run twice")
	}
	vm, err := w.cfg.Store.VMs().Get(ctx, e.VMID)
	if err != nil {
		return nil, err
	}
	if vm.Status != model.VMRunning || vm.WorkerID != w.cfg.ID {
		return w.failExecution(ctx, e, fmt.Sprintf("vm %s is %s", vm.ID, vm.Status))
	}
	// Secrets are resolved before the command is marked running: a database blip is retried, a missing secret
	// fails the execution without running it.
	env, scrub, reason, err := w.resolveSecrets(ctx, e)
	if err != nil {
		return nil, err
	}
	if reason != "" {
		return w.failExecution(ctx, e, reason)
	}
	// Then the credential proxy's settings, for an execution that asks for them (proxyenv.go).
	if env, err = w.execEnv(ctx, vm, e, env); err != nil {
		return w.failExecution(ctx, e, fmt.Sprintf("not run: %v", err))
	}
	env = w.guestExecEnv(vm, env) // the host's proxy settings and extra CAs (guestenv.go)
	e, err = w.cfg.Store.Executions().Update(ctx, e.ID, func(x *model.Execution) error {
		if x.Status != model.ExecutionPending {
			return queue.Permanent(fmt.Errorf("execution %s is already %s", x.ID, x.Status))
		}
		x.Status, x.StartedAt, x.WorkerID = model.ExecutionRunning, utcNow(), w.cfg.ID
		// A running execution is never run again, so credential-like env values are needed no more: the agent
		// gets them from env above, and the row keeps the mask.
		x.Env = secrets.MaskEnv(x.Env)
		return nil
	})
	if err != nil {
		return nil, err
	}
	req := agent.ExecRequest{
		Argv: append([]string{e.Command}, e.Args...), Env: env, WorkingDir: e.WorkingDir, User: e.User,
		Timeout: time.Duration(e.TimeoutSeconds) * time.Second, MaxOutputBytes: w.cfg.MaxOutputBytes,
	}
	// The output streams to live readers as it comes (execOutput) and is kept, up to the cap, for the row.
	out := w.newExecOutput(ctx, e, scrub)
	execStart := time.Now()
	busy := w.activity.Begin(vm.ID) // a VM running a command is never idle, and its output is activity
	xctx, span := stepSpan(ctx, "exec", attribute.String("aetherium.execution_id", e.ID))
	res, err := w.cfg.Backend.ExecuteStream(xctx, vm.ID, req, w.activity.Writer(vm.ID, out.writer(0)),
		w.activity.Writer(vm.ID, out.writer(1)))
	if err == nil {
		span.SetAttributes(attribute.Int("aetherium.exit_code", res.ExitCode))
	}
	tracing.End(span, err)
	busy()
	execTook := time.Since(execStart)
	out.finish()
	if err != nil {
		// The command may or may not have started: never run it again. Say what happened instead.
		if ctx.Err() != nil {
			return w.failExecutionWithOutput(context.WithoutCancel(ctx), e, "interrupted: the worker stopped while the command was running; it is not run twice", out)
		}
		if isTransportError(err) {
			w.cfg.Metrics.TransportError(w.cfg.Backend.Name(), metrics.OpExec)
		}
		w.Kick() // the VM may have died: let the resync loop look now
		return w.failExecutionWithOutput(ctx, e, fmt.Sprintf("could not run the command: %v", err), out)
	}
	w.cfg.Metrics.ObserveExec(w.cfg.Backend.Name(), execTook)
	out.fillResult(res)
	// The command ran: its result must not be lost to a database blip, or the retry would find the execution
	// "running" and report it interrupted. Keep trying for a while, even past the task's cancellation.
	e, err = persist(ctx, w.log, func(ctx context.Context) (*model.Execution, error) {
		return w.saveResult(ctx, e.ID, res)
	})
	if err != nil {
		return e, err
	}
	// Announced only now, so that a reader told of the end finds the final row.
	w.announceEnd(ctx, e, out)
	return e, nil
}

// isTransportError reports whether a call to the agent failed on the way (no agent, a broken connection, no answer in
// time) rather than being answered with an error. A command that ran and failed is a result, never an error.
func isTransportError(err error) bool {
	var answered *agentclient.Error
	return errors.Is(err, agentclient.ErrUnavailable) || !errors.As(err, &answered)
}

func (w *Worker) saveResult(ctx context.Context, id string, res *agent.ExecResult) (*model.Execution, error) {
	return w.cfg.Store.Executions().Update(ctx, id, func(x *model.Execution) error {
		code := res.ExitCode
		dur := res.Duration.Milliseconds()
		x.Status, x.ExitCode, x.DurationMS = model.ExecutionCompleted, &code, &dur
		// Stored byte for byte (bytea in PostgreSQL, blob-safe text in SQLite); JSON output shows invalid UTF-8 as U+FFFD.
		x.Stdout, x.StdoutTruncated = string(res.Stdout), res.StdoutTruncated
		x.Stderr, x.StderrTruncated = string(res.Stderr), res.StderrTruncated
		x.TimedOut = res.TimedOut
		if res.PeakMemoryKB > 0 {
			kb := res.PeakMemoryKB
			x.PeakMemoryKB = &kb
		}
		if !res.StartedAt.IsZero() {
			s := res.StartedAt.UTC()
			x.StartedAt = &s
			c := s.Add(res.Duration)
			x.CompletedAt = &c
		} else {
			x.CompletedAt = utcNow()
		}
		return nil
	})
}

func (w *Worker) failExecution(ctx context.Context, e *model.Execution, reason string) (*model.Execution, error) {
	return w.failExecutionWithOutput(ctx, e, reason, nil)
}

// failExecutionWithOutput fails e with reason, keeping the output it printed before it failed (out may be nil),
// and announces its end to live readers.
func (w *Worker) failExecutionWithOutput(ctx context.Context, e *model.Execution, reason string, out *execOutput) (*model.Execution, error) {
	if out != nil {
		reason = out.scrub.String(reason)
	}
	e, err := w.cfg.Store.Executions().Update(ctx, e.ID, func(x *model.Execution) error {
		x.Status, x.Error, x.CompletedAt = model.ExecutionFailed, reason, utcNow()
		if x.StartedAt != nil {
			d := x.CompletedAt.Sub(*x.StartedAt).Milliseconds()
			x.DurationMS = &d
		}
		if out != nil {
			out.fillRow(x)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	w.announceEnd(ctx, e, out)
	return e, queue.Permanent(fmt.Errorf("%w: %s", errExecutionFailed, reason))
}

func (w *Worker) handleJob(ctx context.Context, t *model.Task) (json.RawMessage, error) {
	var p task.JobPayload
	if err := decode(t, &p); err != nil {
		return nil, err
	}
	job, err := w.cfg.Store.Jobs().Update(ctx, p.JobID, func(j *model.Job) error {
		if j.Status == model.JobCompleted || j.Status == model.JobFailed {
			return errSkip
		}
		if j.Status == model.JobPending {
			j.Status, j.StartedAt = model.JobRunning, utcNow()
		}
		return nil
	})
	if errors.Is(err, errSkip) {
		job, err = w.cfg.Store.Jobs().Get(ctx, p.JobID)
		if err != nil {
			return nil, err
		}
		return encode(task.JobResult{JobID: job.ID, Status: job.Status})
	}
	if err != nil {
		if errors.Is(err, model.ErrNotFound) {
			return nil, queue.Permanent(err)
		}
		return nil, err
	}
	// Every attempt of a job runs on the worker that hosts its VM: its executions and its VM are there.
	if host, err := w.jobHost(ctx, job); err != nil {
		return nil, err
	} else if host != "" {
		w.log.Info("job's vm is on another worker; rerouting the job there", "job_id", job.ID, "vm_id", job.VMID, "to", host)
		return nil, queue.Reroute(host)
	}
	status, reason, err := w.runJob(ctx, t, job)
	if err != nil && !queue.IsPermanent(err) && !lastAttempt(t) {
		return nil, err // retried: the job stays running and resumes where it stopped
	}
	if err != nil {
		status, reason = model.JobFailed, err.Error()
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		// A command an earlier attempt left running (its worker died) will never end: say so.
		w.failRunningJobExecutions(dctx, job, "the job failed before the command ended: "+reason)
		// However it failed, a job asked to delete its VM does: nothing else would, and it would leak.
		if job.DeleteVMAfter && job.VMID != "" {
			if derr := w.deleteVM(dctx, job.VMID); derr != nil {
				w.log.Error("could not delete the vm of a failed job", "job_id", job.ID, "vm_id", job.VMID, "err", derr)
				reason += "; its vm could not be deleted: " + derr.Error()
			}
		}
		cancel()
	}
	job, uerr := w.cfg.Store.Jobs().Update(context.WithoutCancel(ctx), job.ID, func(j *model.Job) error {
		j.Status, j.Error, j.CompletedAt = status, reason, utcNow()
		for i := range j.Commands {
			j.Commands[i].Env = secrets.MaskEnv(j.Commands[i].Env) // no command of a finished job runs again
		}
		return nil
	})
	if uerr != nil {
		return nil, uerr
	}
	if err := task.AnnounceJobFinished(context.WithoutCancel(ctx), w.cfg.Events, job); err != nil {
		w.log.Warn("could not announce the end of a job", "job_id", job.ID, "err", err)
	}
	return encode(task.JobResult{JobID: job.ID, Status: job.Status})
}

// failRunningJobExecutions fails the job's executions that are still running or pending, with reason.
func (w *Worker) failRunningJobExecutions(ctx context.Context, job *model.Job, reason string) {
	es, err := w.cfg.Store.Executions().List(ctx, store.ExecutionFilter{JobID: job.ID, Page: store.Page{Limit: 500}})
	if err != nil {
		w.log.Error("could not list the executions of a failed job", "job_id", job.ID, "err", err)
		return
	}
	for _, e := range es {
		if e.Status != model.ExecutionRunning && e.Status != model.ExecutionPending {
			continue
		}
		if _, err := w.failExecution(ctx, e, reason); err != nil && !errors.Is(err, errExecutionFailed) {
			w.log.Error("could not fail an execution of a failed job", "job_id", job.ID, "execution_id", e.ID, "err", err)
		}
	}
}

// jobHost returns the worker the job must run on when it is not this one: the one that hosts (or hosted) the job's
// VM. A VM still being created on another worker is taken over by createVM instead, as any retried creation is.
func (w *Worker) jobHost(ctx context.Context, job *model.Job) (string, error) {
	if job.VMID == "" {
		return "", nil
	}
	vm, err := w.cfg.Store.VMs().Get(ctx, job.VMID)
	if errors.Is(err, model.ErrNotFound) {
		return "", nil // runJob says so
	}
	if err != nil {
		return "", err
	}
	switch vm.Status {
	case model.VMPending, model.VMCreating, model.VMDeleted:
		return "", nil
	}
	if vm.WorkerID == "" || vm.WorkerID == w.cfg.ID {
		return "", nil
	}
	return vm.WorkerID, nil
}

// pinTask pins a task to this worker, so that its retries come back here (see queue.RerouteError). The queue's
// reroute covers a pin that could not be written, so a failure is only logged.
func (w *Worker) pinTask(ctx context.Context, taskID string) {
	_, err := w.cfg.Store.Tasks().Update(ctx, taskID, func(x *model.Task) error {
		if x.TargetWorker == w.cfg.ID {
			return errSkip
		}
		x.TargetWorker = w.cfg.ID
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		w.log.Warn("could not pin task to this worker", "task_id", taskID, "err", err)
	}
}

// runJob creates the job's VM if it has to, runs the commands that have not run yet in order, and deletes the VM
// when asked. It returns the job's final status and, for a failed job, why.
func (w *Worker) runJob(ctx context.Context, t *model.Task, job *model.Job) (model.JobStatus, string, error) {
	if job.VMSpec != nil {
		vm, err := w.createVM(ctx, job.VMID, lastAttempt(t), &toolLog{w: w, vmID: job.VMID})
		if err != nil {
			return "", "", err
		}
		if vm.Status != model.VMRunning {
			return model.JobFailed, fmt.Sprintf("vm %s is %s", vm.ID, vm.Status), nil
		}
		// The VM lives here now: so does the job, and its retries must come back here.
		w.pinTask(ctx, t.ID)
	}
	done, err := w.cfg.Store.Executions().List(ctx, store.ExecutionFilter{JobID: job.ID, Page: store.Page{Limit: 500}})
	if err != nil {
		return "", "", err
	}
	bySeq := make(map[int]*model.Execution, len(done))
	for _, e := range done {
		bySeq[e.Seq] = e
	}
	status, reason := model.JobCompleted, ""
	for seq := range job.Commands {
		e := bySeq[seq]
		if e == nil {
			e = task.NewJobExecution(job, job.VMID, seq)
			e.TaskID = t.ID
			if err := w.cfg.Store.Executions().Create(ctx, e); err != nil {
				return "", "", fmt.Errorf("store execution %d of job %s: %w", seq, job.ID, err)
			}
		}
		e, err = w.runExecution(ctx, e)
		if err != nil && !errors.Is(err, errExecutionFailed) {
			return "", "", err
		}
		if e.Status == model.ExecutionFailed {
			status, reason = model.JobFailed, fmt.Sprintf("command %d could not run: %s", seq, e.Error)
			break
		}
		if job.StopOnError && derefInt(e.ExitCode) != 0 {
			status, reason = model.JobFailed, fmt.Sprintf("command %d exited with code %d (stop_on_error)", seq, derefInt(e.ExitCode))
			break
		}
	}
	if job.DeleteVMAfter {
		if err := w.deleteVM(ctx, job.VMID); err != nil {
			return "", "", fmt.Errorf("delete vm after job: %w", err)
		}
	}
	return status, reason, nil
}
