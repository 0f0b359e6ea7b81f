// Package worker runs tasks on the host that owns the VMs: it registers itself with a heartbeat, reconciles the
// store with what its backend really runs, and handles vm:create, vm:execute, vm:tools, vm:delete, vm:pause,
// vm:resume, job:run and run:agent; its reaper ends VMs' lifetimes (lifecycle.go).
//
// Every handler is written to be retried: it reads the rows it works on, skips what is already done, and never runs
// a command twice (a command is not idempotent, so an execution interrupted mid-run is failed with a reason instead).
package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/activity"
	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/keyedmutex"
	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/placement"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/tools"
	"github.com/aetherium/aetherium/internal/vmm"
)

// Config configures a Worker.
type Config struct {
	ID                string
	Store             store.Store
	Queue             queue.Queue
	Backend           vmm.Orchestrator
	Logger            *slog.Logger
	HeartbeatInterval time.Duration // default 5 s
	MaxOutputBytes    int           // stored per stream per execution; default 1 MiB
	Capacity          int           // advertised concurrent tasks
	// MaxExecPerVM bounds the executions of one VM that run at once (see execgate.go); more wait for a retry
	// outside the queue's slots. Default: half of Capacity, at least 1.
	MaxExecPerVM int
	// Events carries the live output of executions (see task.ExecutionOutputTopic); nil: output is only stored.
	Events events.Bus
	// OutputSaveInterval is how often the output of a running execution is saved in its row (default 1 s).
	OutputSaveInterval time.Duration
	// APIURL is where this worker's internal API (internal/workerapi) serves files, processes and shells of its
	// VMs; it is advertised in the heartbeat (Metadata[task.WorkerAPIURLKey]) for gateways to proxy to.
	APIURL string
	// Tools installs the tools a VM asks for that its template lacks (nil: such VMs fail to create) and reports
	// what every new VM has.
	Tools *tools.Installer
	// Agents is the catalog runs start their agents from (default agents.Default()).
	Agents *agents.Catalog
	// ResyncInterval is how often the store is compared with what the backend really runs (default
	// DefaultResyncInterval); backend events (vmm.VMEvents) and failed commands trigger a pass sooner.
	ResyncInterval time.Duration
	// Secrets resolves the secret_env of executions and scrubs the owner's secrets from their output (secrets.go);
	// nil: executions with secret_env fail, saying the worker has no secrets key.
	Secrets *secrets.Manager
	// ProxyEnv gives the executions that ask for it (ModelProxyEnv) the credential proxy's settings; nil: this
	// worker has no proxy and such executions fail.
	ProxyEnv ProxyEnvFunc
	// Guest is what every VM gets at start and every execution in its environment: extra CA certificates and
	// proxy settings (guestenv.go, LoadGuestSetup); nil: nothing.
	Guest *GuestSetup
	// Metrics records boot and create-to-ready times, exec round trips and agent transport errors; nil: nothing.
	Metrics *metrics.Worker
	// Logs receives every execution's output, line by line (kind "exec", ids in structured metadata); nil: none.
	Logs logs.Sink
	// Activity records what happens in this worker's VMs, for their idle timeouts (lifecycle.go); the worker's
	// internal API shares it, for shells and file transfers. Nil: the worker makes its own.
	Activity *activity.Tracker
	// ReapInterval is how often the reaper looks at VMs' lifetimes (default DefaultReapInterval);
	// ActivitySaveInterval how often their activity is saved to the store (default DefaultActivitySaveInterval).
	ReapInterval, ActivitySaveInterval time.Duration
	// Resources is what this worker offers new VMs (vCPUs and memory after overcommit, a VM count; placement),
	// advertised in its heartbeat and checked when a create arrives. Zero: nothing advertised, everything admitted.
	Resources placement.Resources
	// Tracer makes a span of every task this worker runs, continuing the trace of the request that queued it
	// (tracing.go); nil: no spans.
	Tracer trace.TracerProvider
}

// Worker owns the VMs of one host.
type Worker struct {
	cfg       Config
	log       *slog.Logger
	stop      context.CancelFunc
	wg        sync.WaitGroup
	startedAt time.Time

	toolLocks keyedmutex.Map // per VM: installs into one VM are serialised

	execGates execGates // per-VM limit of running executions

	rs   resyncer
	kick chan struct{} // asks the resync loop for a pass now

	activity *activity.Tracker
	reaper   reaperState

	admitMu sync.Mutex // admissions of new VMs, one at a time (admission.go)
}

// New checks cfg and returns a Worker; Start makes it work.
func New(cfg Config) (*Worker, error) {
	if cfg.ID == "" {
		return nil, errors.New("worker: an id is required")
	}
	if cfg.Store == nil || cfg.Queue == nil || cfg.Backend == nil {
		return nil, errors.New("worker: store, queue and backend are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 5 * time.Second
	}
	if cfg.MaxOutputBytes <= 0 {
		cfg.MaxOutputBytes = 1 << 20
	}
	if cfg.OutputSaveInterval <= 0 {
		cfg.OutputSaveInterval = time.Second
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = DefaultResyncInterval
	}
	if cfg.ReapInterval <= 0 {
		cfg.ReapInterval = DefaultReapInterval
	}
	if cfg.ActivitySaveInterval <= 0 {
		cfg.ActivitySaveInterval = DefaultActivitySaveInterval
	}
	if cfg.Activity == nil {
		cfg.Activity = activity.New()
	}
	return &Worker{cfg: cfg, log: cfg.Logger.With("worker_id", cfg.ID), kick: make(chan struct{}, 1),
		activity: cfg.Activity}, nil
}

// Start registers the worker, reconciles its VMs, and starts consuming tasks and sending heartbeats.
func (w *Worker) Start(ctx context.Context) error {
	w.startedAt = time.Now().UTC()
	if err := w.register(ctx); err != nil {
		return err
	}
	if err := w.Reconcile(ctx); err != nil {
		// One VM the backend cannot remove, or a backend that cannot list right now, must not take the host out:
		// the resync loop tries again every few seconds.
		w.log.Error("reconcile at start was incomplete; the resync loop retries", "err", err)
	}
	if err := w.failInterruptedExecutions(ctx); err != nil {
		return fmt.Errorf("reconcile interrupted tasks: %w", err)
	}
	for typ, h := range map[model.TaskType]queue.Handler{
		model.TaskVMCreate: w.handleCreate, model.TaskVMExecute: w.handleExecute, model.TaskVMDelete: w.handleDelete,
		model.TaskVMPause: w.handlePause, model.TaskVMResume: w.handleResume, model.TaskVMTools: w.handleTools,
		model.TaskJobRun: w.handleJob, model.TaskRunAgent: w.handleRun,
	} {
		w.cfg.Queue.RegisterHandler(typ, w.traced(h))
	}
	if err := w.cfg.Queue.Start(ctx); err != nil {
		return fmt.Errorf("start queue: %w", err)
	}
	hctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.stop = cancel
	w.wg.Add(3)
	go w.heartbeat(hctx)
	go w.resyncLoop(hctx)
	go w.reapLoop(hctx)
	w.log.Info("worker started", "backend", w.cfg.Backend.Name())
	return nil
}

// Stop drains: in-flight tasks finish until ctx ends, then the rest are requeued; the worker is marked stopped.
// The VMs keep running and are adopted again by the next Start.
func (w *Worker) Stop(ctx context.Context) error {
	err := w.cfg.Queue.Stop(ctx)
	if w.stop != nil {
		w.stop()
		w.wg.Wait()
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if serr := w.cfg.Store.Workers().SetStatus(sctx, w.cfg.ID, "stopped"); serr != nil && err == nil {
		err = fmt.Errorf("mark worker stopped: %w", serr)
	}
	w.log.Info("worker stopped")
	return err
}

func (w *Worker) register(ctx context.Context) error {
	host, _ := os.Hostname()
	now := time.Now().UTC()
	meta := map[string]string{"backend_health": w.backendHealth(ctx)}
	if w.cfg.Resources.VCPUs > 0 {
		maps.Copy(meta, placement.Metadata(w.cfg.Resources))
	}
	if w.cfg.APIURL != "" {
		meta[task.WorkerAPIURLKey] = w.cfg.APIURL
	}
	err := w.cfg.Store.Workers().Upsert(ctx, &model.Worker{
		ID: w.cfg.ID, Hostname: host, Backend: w.cfg.Backend.Name(), Status: "active", Capacity: w.cfg.Capacity,
		Metadata: meta, StartedAt: w.startedAt, LastHeartbeat: now,
	})
	if err != nil {
		return fmt.Errorf("register worker %s: %w", w.cfg.ID, err)
	}
	return nil
}

func (w *Worker) backendHealth(ctx context.Context) string {
	hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := w.cfg.Backend.Health(hctx); err != nil {
		return err.Error()
	}
	return "ok"
}

func (w *Worker) heartbeat(ctx context.Context) {
	defer w.wg.Done()
	t := time.NewTicker(w.cfg.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := w.register(ctx); err != nil && ctx.Err() == nil {
				w.log.Warn("heartbeat failed", "err", err)
			}
		}
	}
}

// reconcileInFlight settles a VM this worker was creating or deleting when it stopped. If a task for the VM is
// still pending or processing, the queue will deliver it again and the idempotent handler finishes the work. If not
// (the queue gave up on its last attempt), nobody else will: a half-created VM is removed and marked failed, a
// half-deleted one is deleted. w.rs.mu must be held.
func (w *Worker) reconcileInFlight(ctx context.Context, vm *model.VM, restarted bool) error {
	active, err := w.cfg.Store.Tasks().List(ctx, store.TaskFilter{
		VMID: vm.ID, Statuses: []model.TaskStatus{model.TaskPending, model.TaskProcessing}, Page: store.Page{Limit: 1},
	})
	if err != nil {
		return fmt.Errorf("list tasks of vm %s: %w", vm.ID, err)
	}
	if len(active) > 0 {
		return nil
	}
	// vm was read before the tasks: its task may have finished it in between (a handler writes the VM's new state
	// before it ends its task). Only a VM still in the same state now, with no task left, is stuck.
	cur, err := w.cfg.Store.VMs().Get(ctx, vm.ID)
	if err != nil {
		return fmt.Errorf("settle vm %s: %w", vm.ID, err)
	}
	if cur.Status != vm.Status || cur.WorkerID != w.cfg.ID {
		return nil
	}
	if err := w.backendDelete(ctx, vm.ID, "remove half-"+string(vm.Status)+" vm"); err != nil {
		return err
	}
	next, reason := model.VMDeleted, ""
	if vm.Status == model.VMCreating {
		next, reason = model.VMFailed, "creation was abandoned: no task is left to finish it"
		if restarted {
			next, reason = model.VMFailed, "creation was interrupted and not retried (worker "+w.cfg.ID+" restarted)"
		}
	}
	_, err = w.cfg.Store.VMs().Update(ctx, vm.ID, func(v *model.VM) error {
		if v.Status != vm.Status || v.WorkerID != w.cfg.ID {
			return errSkip
		}
		v.Status, v.StoppedAt = next, utcNow()
		if reason != "" {
			v.Error = reason
		}
		return nil
	})
	if errors.Is(err, errSkip) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("settle vm %s: %w", vm.ID, err)
	}
	w.log.Warn("settled interrupted vm", "vm_id", vm.ID, "was", vm.Status, "now", next)
	return nil
}

// failInterruptedExecutions fails the executions this worker was running when it died. A command is not
// idempotent, so it is never run again; the queue may still redeliver the task, which then finds it failed.
// Other interrupted task types are idempotent and are simply redelivered by the queue, except a job on its last
// attempt: the queue would fail its task without running the handler again, so the job is settled here.
func (w *Worker) failInterruptedExecutions(ctx context.Context) error {
	const reason = "interrupted: worker restarted while the command was running; it is not run twice"
	var tasks []*model.Task
	// Executions are always pinned to the worker that hosts their VM; jobs are once their VM exists, before that
	// they are on the shared queues.
	for _, target := range []string{w.cfg.ID, store.AnyWorker} {
		page := store.Page{Limit: 500}
		for {
			batch, err := w.cfg.Store.Tasks().List(ctx, store.TaskFilter{
				Statuses: []model.TaskStatus{model.TaskProcessing}, TargetWorker: target, Page: page,
			})
			if err != nil {
				return err
			}
			tasks = append(tasks, batch...)
			if len(batch) < page.Limit {
				break
			}
			page.After = batch[len(batch)-1].ID
		}
	}
	for _, t := range tasks {
		if t.WorkerID != w.cfg.ID {
			continue
		}
		if t.Type == model.TaskJobRun && lastAttempt(t) {
			if err := w.settleInterruptedJob(ctx, t); err != nil {
				return err
			}
			continue
		}
		if t.Type != model.TaskVMExecute || t.TargetWorker != w.cfg.ID {
			continue
		}
		var p task.ExecutePayload
		if json.Unmarshal(t.Payload, &p) == nil && p.ExecutionID != "" {
			if _, err := w.cfg.Store.Executions().Update(ctx, p.ExecutionID, func(x *model.Execution) error {
				if x.Status == model.ExecutionRunning || x.Status == model.ExecutionPending {
					x.Status, x.Error, x.CompletedAt = model.ExecutionFailed, reason, utcNow()
				}
				return nil
			}); err != nil && !errors.Is(err, model.ErrNotFound) {
				return err
			}
		}
		if err := w.failOwnTask(ctx, t.ID, reason); err != nil {
			return err
		}
		w.log.Warn("failed interrupted execution", "task_id", t.ID, "execution_id", p.ExecutionID)
	}
	return nil
}

// settleInterruptedJob ends a job whose last attempt this worker was running when it died: its running command is
// failed (it is never run twice), its VM deleted if the job asked for that, the job and its task failed.
func (w *Worker) settleInterruptedJob(ctx context.Context, t *model.Task) error {
	const reason = "interrupted: worker restarted during the job's last attempt"
	var p task.JobPayload
	if err := json.Unmarshal(t.Payload, &p); err != nil || p.JobID == "" {
		return nil // the queue fails it
	}
	job, err := w.cfg.Store.Jobs().Get(ctx, p.JobID)
	if errors.Is(err, model.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if job.Status != model.JobCompleted && job.Status != model.JobFailed {
		w.failRunningJobExecutions(ctx, job, "interrupted: the worker restarted while the command was running; it is not run twice")
		why := reason
		if job.DeleteVMAfter && job.VMID != "" {
			if err := w.deleteVM(ctx, job.VMID); err != nil {
				w.log.Error("could not delete the vm of an interrupted job", "job_id", job.ID, "vm_id", job.VMID, "err", err)
				why += "; its vm could not be deleted: " + err.Error()
			}
		}
		failed, err := w.cfg.Store.Jobs().Update(ctx, job.ID, func(j *model.Job) error {
			j.Status, j.Error, j.CompletedAt = model.JobFailed, why, utcNow()
			return nil
		})
		if err != nil {
			return err
		}
		if err := task.AnnounceJobFinished(ctx, w.cfg.Events, failed); err != nil {
			w.log.Warn("could not announce the end of a job", "job_id", job.ID, "err", err)
		}
	}
	if err := w.failOwnTask(ctx, t.ID, reason); err != nil {
		return err
	}
	w.log.Warn("failed a job interrupted on its last attempt", "job_id", job.ID, "task_id", t.ID)
	return nil
}

// failOwnTask fails task id with reason if this worker still holds it (processing here); otherwise it leaves the
// row as it is.
func (w *Worker) failOwnTask(ctx context.Context, id, reason string) error {
	_, err := w.cfg.Store.Tasks().Update(ctx, id, func(x *model.Task) error {
		if x.Status == model.TaskProcessing && x.WorkerID == w.cfg.ID {
			x.Status, x.Error, x.CompletedAt = model.TaskFailed, reason, utcNow()
		}
		return nil
	})
	return err
}

func (w *Worker) listOwnVMs(ctx context.Context) ([]*model.VM, error) {
	var all []*model.VM
	page := store.Page{Limit: 500}
	for {
		vms, err := w.cfg.Store.VMs().List(ctx, store.VMFilter{
			WorkerID: w.cfg.ID,
			Statuses: []model.VMStatus{model.VMCreating, model.VMRunning, model.VMPaused, model.VMStopping, model.VMStopped, model.VMFailed},
			Page:     page,
		})
		if err != nil {
			return nil, fmt.Errorf("list vms of worker %s: %w", w.cfg.ID, err)
		}
		all = append(all, vms...)
		if len(vms) < page.Limit {
			return all, nil
		}
		page.After = vms[len(vms)-1].ID
	}
}

func lastAttempt(t *model.Task) bool { return t.RetryCount >= t.MaxRetries }

func decode(t *model.Task, v any) error {
	if err := json.Unmarshal(t.Payload, v); err != nil {
		return queue.Permanent(fmt.Errorf("decode %s payload: %w", t.Type, err))
	}
	return nil
}

func encode(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, queue.Permanent(fmt.Errorf("encode result: %w", err))
	}
	return b, nil
}
