package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type taskStore struct{ s *Store }

const taskCols = `id::text, owner_id, type, status, priority, payload, result, error, COALESCE(vm_id::text, ''),
	COALESCE(job_id::text, ''), target_worker, worker_id, max_retries, retry_count, created_at, updated_at,
	scheduled_at, started_at, completed_at`

func scanTask(row pgx.Row) (*model.Task, error) {
	var t model.Task
	var payload, result []byte
	err := row.Scan(&t.ID, &t.OwnerID, (*string)(&t.Type), (*string)(&t.Status), (*string)(&t.Priority), &payload,
		&result, &t.Error, &t.VMID, &t.JobID, &t.TargetWorker, &t.WorkerID, &t.MaxRetries, &t.RetryCount,
		&t.CreatedAt, &t.UpdatedAt, &t.ScheduledAt, &t.StartedAt, &t.CompletedAt)
	if err != nil {
		return nil, err
	}
	t.Payload = prep.Raw(payload)
	t.Result = prep.Raw(result)
	t.CreatedAt = prep.Time(t.CreatedAt)
	t.UpdatedAt = prep.Time(t.UpdatedAt)
	t.ScheduledAt = prep.TimePtr(t.ScheduledAt)
	t.StartedAt = prep.TimePtr(t.StartedAt)
	t.CompletedAt = prep.TimePtr(t.CompletedAt)
	return &t, nil
}

func (ts taskStore) Create(ctx context.Context, t *model.Task) error {
	if err := prep.NewTask(t, prep.Now()); err != nil {
		return err
	}
	_, err := ts.s.pool.Exec(ctx, `INSERT INTO tasks (id, owner_id, type, status, priority, payload, result, error,
		vm_id, job_id, target_worker, worker_id, max_retries, retry_count, created_at, updated_at, scheduled_at,
		started_at, completed_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)`,
		t.ID, t.OwnerID, string(t.Type), string(t.Status), string(t.Priority), nullJSON(t.Payload),
		nullJSON(t.Result), t.Error, nullUUID(t.VMID), nullUUID(t.JobID), t.TargetWorker, t.WorkerID, t.MaxRetries,
		t.RetryCount, t.CreatedAt, t.UpdatedAt, t.ScheduledAt, t.StartedAt, t.CompletedAt)
	if _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("task %s already exists: %w", t.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create task", err)
	}
	return nil
}

func (ts taskStore) Get(ctx context.Context, id string) (*model.Task, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("task", id)
	}
	t, err := scanTask(ts.s.pool.QueryRow(ctx, "SELECT "+taskCols+" FROM tasks WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("task", id)
	}
	if err != nil {
		return nil, dbErr("get task", err)
	}
	return t, nil
}

func (ts taskStore) Update(ctx context.Context, id string, fn func(t *model.Task) error) (*model.Task, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("task", id)
	}
	var out *model.Task
	err := ts.s.update(ctx, func(tx pgx.Tx) error {
		t, err := scanTask(tx.QueryRow(ctx, "SELECT "+taskCols+" FROM tasks WHERE id = $1 FOR UPDATE", cid))
		if errors.Is(err, pgx.ErrNoRows) {
			return prep.NotFound("task", id)
		}
		if err != nil {
			return dbErr("update task", err)
		}
		before := *t
		if err := fn(t); err != nil {
			return err
		}
		if err := prep.UpdatedTask(before, t, prep.Now()); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE tasks SET owner_id = $2, type = $3, status = $4, priority = $5, payload = $6,
			result = $7, error = $8, vm_id = $9, job_id = $10, target_worker = $11, worker_id = $12,
			max_retries = $13, retry_count = $14, updated_at = $15, scheduled_at = $16, started_at = $17,
			completed_at = $18 WHERE id = $1`,
			t.ID, t.OwnerID, string(t.Type), string(t.Status), string(t.Priority), nullJSON(t.Payload),
			nullJSON(t.Result), t.Error, nullUUID(t.VMID), nullUUID(t.JobID), t.TargetWorker, t.WorkerID,
			t.MaxRetries, t.RetryCount, t.UpdatedAt, t.ScheduledAt, t.StartedAt, t.CompletedAt)
		if err != nil {
			return dbErr("update task", err)
		}
		if err := appendEvents(ctx, tx, prep.TaskEvents(&before, t, prep.Now())); err != nil {
			return err
		}
		out = t
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (ts taskStore) List(ctx context.Context, f store.TaskFilter) ([]*model.Task, error) {
	if !prep.TextOK(f.OwnerID, f.TargetWorker) {
		return []*model.Task{}, nil // no row holds such text
	}
	var l list
	if f.OwnerID != "" {
		l.and("owner_id = " + l.arg(f.OwnerID))
	}
	if f.VMID != "" {
		id, ok := prep.UUID(f.VMID)
		if !ok {
			return []*model.Task{}, nil // no row has such a vm id
		}
		l.and("vm_id = " + l.arg(id))
	}
	if f.JobID != "" {
		id, ok := prep.UUID(f.JobID)
		if !ok {
			return []*model.Task{}, nil
		}
		l.and("job_id = " + l.arg(id))
	}
	if len(f.Statuses) > 0 {
		ss := make([]string, len(f.Statuses))
		for i, s := range f.Statuses {
			ss[i] = string(s)
		}
		l.and("status = ANY(" + l.arg(ss) + ")")
	}
	switch f.TargetWorker {
	case "":
	case store.AnyWorker:
		l.and("target_worker = ''")
	default:
		l.and("target_worker = " + l.arg(f.TargetWorker))
	}
	tail, err := l.newestFirst(ctx, ts.s.pool, "tasks", "task", f.Page)
	if err != nil {
		return nil, err
	}
	rows, err := ts.s.pool.Query(ctx, "SELECT "+taskCols+" FROM tasks"+l.whereSQL()+tail, l.args...)
	if err != nil {
		return nil, dbErr("list tasks", err)
	}
	defer rows.Close()
	out := []*model.Task{}
	for rows.Next() {
		t, err := scanTask(rows)
		if err != nil {
			return nil, dbErr("list tasks", err)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list tasks", err)
	}
	return out, nil
}
