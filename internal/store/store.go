// Package store defines Aetherium's persistence seam. Two implementations (postgres, sqlite) pass one conformance
// suite (storetest), so the embedded mode never drifts from production.
package store

import (
	"context"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// Store gives access to every table. Implementations are safe for concurrent use.
type Store interface {
	VMs() VMStore
	Tasks() TaskStore
	Jobs() JobStore
	Executions() ExecutionStore
	Workers() WorkerStore
	Quotas() QuotaStore
	APIKeys() APIKeyStore
	Leases() LeaseStore
	Idempotency() IdempotencyStore
	Secrets() SecretStore
	Runs() RunStore
	Webhooks() WebhookStore
	IntegrationLinks() IntegrationLinkStore
	Notifications() NotificationStore
	Events() EventStore
	SigningKeys() SigningKeyStore
	Audit() AuditStore
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	Close() error
}

// Page bounds a list. Limit <= 0 means the implementation's default (50); it is capped at 500.
// Results are ordered by creation time, newest first, then id; After is the id of the last item of the previous page.
type Page struct {
	Limit int
	After string
}

// VMFilter selects VMs. Empty fields match everything.
type VMFilter struct {
	OwnerID  string
	WorkerID string
	Statuses []model.VMStatus
	Page     Page
}

// VMStore persists VMs.
type VMStore interface {
	// Create inserts vm. Names are unique per owner among VMs that are not deleted: a duplicate returns an error
	// wrapping model.ErrConflict. CreatedAt/UpdatedAt are set by the store when zero.
	Create(ctx context.Context, vm *model.VM) error
	// Get returns the VM or an error wrapping model.ErrNotFound.
	Get(ctx context.Context, id string) (*model.VM, error)
	// Update reads the VM, lets fn change it, and writes it back atomically (no lost updates under concurrency).
	// If fn changes Status, the change must pass model.VMStatus.CheckTransition, else the update fails with an error
	// wrapping model.ErrInvalidTransition and nothing is written. An error from fn aborts the update and is returned.
	Update(ctx context.Context, id string, fn func(vm *model.VM) error) (*model.VM, error)
	List(ctx context.Context, f VMFilter) ([]*model.VM, error)
}

// TaskFilter selects tasks. Empty fields match everything.
type TaskFilter struct {
	OwnerID  string
	VMID     string
	JobID    string
	Statuses []model.TaskStatus
	// TargetWorker matches tasks pinned to that worker; use AnyWorker to match tasks pinned to none.
	TargetWorker string
	Page         Page
}

// AnyWorker in TaskFilter.TargetWorker selects tasks not pinned to a worker.
const AnyWorker = "-"

// TaskStore persists tasks.
type TaskStore interface {
	Create(ctx context.Context, t *model.Task) error
	Get(ctx context.Context, id string) (*model.Task, error)
	// Update reads the task, lets fn change it and writes it back atomically. An error from fn aborts the update.
	Update(ctx context.Context, id string, fn func(t *model.Task) error) (*model.Task, error)
	List(ctx context.Context, f TaskFilter) ([]*model.Task, error)
}

// JobStore persists jobs.
type JobStore interface {
	Create(ctx context.Context, j *model.Job) error
	Get(ctx context.Context, id string) (*model.Job, error)
	Update(ctx context.Context, id string, fn func(j *model.Job) error) (*model.Job, error)
	List(ctx context.Context, ownerID string, p Page) ([]*model.Job, error)
}

// ExecutionFilter selects executions.
type ExecutionFilter struct {
	OwnerID string
	VMID    string
	JobID   string
	Page    Page
}

// ExecutionStore persists command runs and their output.
type ExecutionStore interface {
	Create(ctx context.Context, e *model.Execution) error
	Get(ctx context.Context, id string) (*model.Execution, error)
	Update(ctx context.Context, id string, fn func(e *model.Execution) error) (*model.Execution, error)
	// List orders job executions by Seq ascending when JobID is set, otherwise newest first.
	List(ctx context.Context, f ExecutionFilter) ([]*model.Execution, error)
}

// WorkerStore tracks workers and their heartbeats.
type WorkerStore interface {
	// Upsert registers the worker or refreshes its row (status, metadata, heartbeat).
	Upsert(ctx context.Context, w *model.Worker) error
	Heartbeat(ctx context.Context, id string, at time.Time) error
	Get(ctx context.Context, id string) (*model.Worker, error)
	List(ctx context.Context) ([]*model.Worker, error)
	SetStatus(ctx context.Context, id, status string) error
	// SetDrained drains or undrains the worker (model.Worker.Drained); Upsert leaves it as it is.
	SetDrained(ctx context.Context, id string, drained bool) error
}

// QuotaStore keeps owners' quotas.
type QuotaStore interface {
	// Get returns the owner's quota, or an error wrapping model.ErrNotFound when it has none.
	Get(ctx context.Context, ownerID string) (*model.Quota, error)
	// Put sets the owner's quota (UpdatedAt filled).
	Put(ctx context.Context, q *model.Quota) error
	// Delete removes the owner's quota (no quota: no limit); none is an error wrapping model.ErrNotFound.
	Delete(ctx context.Context, ownerID string) error
}

// APIKeyStore persists API keys (hashes only).
type APIKeyStore interface {
	// Create inserts the key; a duplicate Hash or Prefix returns an error wrapping model.ErrConflict.
	Create(ctx context.Context, k *model.APIKey) error
	// GetByHash returns the non-revoked key with that hash, or an error wrapping model.ErrNotFound.
	GetByHash(ctx context.Context, hash string) (*model.APIKey, error)
	// Get returns the key with that id, revoked or not, or an error wrapping model.ErrNotFound.
	Get(ctx context.Context, id string) (*model.APIKey, error)
	List(ctx context.Context) ([]*model.APIKey, error)
	Revoke(ctx context.Context, id string, at time.Time) error
	TouchLastUsed(ctx context.Context, id string, at time.Time) error
	// Count returns how many keys exist (revoked included); serve uses it to bootstrap an admin key once.
	Count(ctx context.Context) (int, error)
}

// LeaseStore persists the network manager's address leases (see Lease). Acquire is safe under concurrency, also
// between processes sharing the database: two VMs of one scope never get the same address.
type LeaseStore interface {
	// Acquire returns the VM's lease in req.Scope, or leases it the lowest free host address of req.Prefix (never
	// the network address, the gateway, which is the first host address, or the broadcast address). A lease the VM
	// holds outside req.Prefix is replaced. An existing lease is handed to req.Owner. A full pool is an error
	// wrapping ErrPoolExhausted; a bad request one wrapping model.ErrInvalidInput.
	Acquire(ctx context.Context, req LeaseRequest) (*Lease, error)
	// Release frees the VM's lease in scope. Releasing a lease that does not exist succeeds.
	Release(ctx context.Context, scope, vmID string) error
	// List returns the leases of scope, ordered by address.
	List(ctx context.Context, scope string) ([]*Lease, error)
}

// RunFilter selects runs. Empty fields match everything.
type RunFilter struct {
	OwnerID  string
	VMID     string
	Statuses []model.RunStatus
	// RepoURL matches runs of that repository URL exactly.
	RepoURL string
	Page    Page
}

// RunStore persists agent runs, their transcripts and their diffs.
type RunStore interface {
	// Create inserts r (its Spec is stored as one document). CreatedAt/UpdatedAt are set when zero.
	Create(ctx context.Context, r *model.Run) error
	// Get returns the run or an error wrapping model.ErrNotFound.
	Get(ctx context.Context, id string) (*model.Run, error)
	// Update reads the run, lets fn change it and writes it back atomically. An error from fn aborts the update.
	// A run that is Done cannot change status again (model.ErrInvalidTransition).
	Update(ctx context.Context, id string, fn func(r *model.Run) error) (*model.Run, error)
	// List returns runs newest first.
	List(ctx context.Context, f RunFilter) ([]*model.Run, error)
	// SetDiff stores the run's patch (replacing an earlier one); Diff returns it, empty when none was stored.
	SetDiff(ctx context.Context, id string, diff []byte) error
	Diff(ctx context.Context, id string) ([]byte, error)
	// AppendEvents adds events to the run's transcript atomically, numbering them after the run's last event
	// (their Seq and, when zero, Time are set in place). The run must exist (model.ErrNotFound).
	AppendEvents(ctx context.Context, runID string, events []*model.RunEvent) error
	// Events returns up to limit events with Seq > after, in order (limit <= 0: 500; capped at 5000).
	Events(ctx context.Context, runID string, after int64, limit int) ([]*model.RunEvent, error)
}

// Event is one entry of an owner's event log (GET /api/v1/events): a state change of a VM, task, execution or run,
// recorded by the store in the transaction that makes the change, so the log never misses one and never holds one
// that did not happen. ID orders the log (across owners: ids of one owner are increasing, not contiguous). Data is
// a small JSON document of ids and states, never secrets or output.
type Event struct {
	ID        int64
	OwnerID   string
	Type      string
	Subject   string // the id of the VM, task, execution or run
	VMID      string // the VM it concerns, when there is one
	Data      []byte
	CreatedAt time.Time
}

// Event types of the log.
const (
	EventVMStatus          = "vm.status"
	EventTaskFinished      = "task.finished"
	EventExecutionStarted  = "execution.started"
	EventExecutionFinished = "execution.finished"
	EventRunStatus         = "run.status"
	EventRunFinished       = "run.finished"
)

// EventTypes lists the event types, in the order the documentation gives them.
var EventTypes = []string{EventVMStatus, EventTaskFinished, EventExecutionStarted, EventExecutionFinished,
	EventRunStatus, EventRunFinished}

// EventFilter selects an owner's events after a position of the log.
type EventFilter struct {
	OwnerID string // required: an empty owner matches nothing
	After   int64  // events with ID > After
	Types   []string
	VMID    string
	// Limit <= 0 means 500; it is capped at 5000.
	Limit int
}

// EventRetention says what Prune keeps: events younger than MaxAge (0: any age) and at most MaxPerOwner of each
// owner's newest (0: any number).
type EventRetention struct {
	MaxAge      time.Duration
	MaxPerOwner int
}

// EventStore is the owner-scoped event log. The state changes of VMs, tasks, executions and runs append to it
// themselves; Append is for other producers.
type EventStore interface {
	// Append adds e at the end of the log, setting its ID and (when zero) CreatedAt.
	Append(ctx context.Context, e *Event) error
	// List returns the events f selects, in log order.
	List(ctx context.Context, f EventFilter) ([]*Event, error)
	// Bounds returns the owner's horizon, the highest id Prune removed from the owner's log (events with ids up to
	// it may be gone; 0 when none was pruned), and the owner's latest id (0 when the log is empty).
	Bounds(ctx context.Context, ownerID string) (horizon, latest int64, err error)
	// Prune removes what r does not keep, oldest first, so that each owner's log stays a contiguous suffix, and
	// returns how many events it removed.
	Prune(ctx context.Context, r EventRetention) (int64, error)
}

// CheckQuota validates what QuotaStore.Put stores.
func CheckQuota(q *model.Quota) error {
	if q.OwnerID == "" || len(q.OwnerID) > 255 {
		return fmt.Errorf("quota: owner must be 1 to 255 characters: %w", model.ErrInvalidInput)
	}
	if q.MaxVMs < 0 || q.MaxVCPUs < 0 || q.MaxMemoryMB < 0 {
		return fmt.Errorf("quota: limits must be 0 (none) or more: %w", model.ErrInvalidInput)
	}
	return nil
}
