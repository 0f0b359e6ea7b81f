package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type taskStore struct{ s *Store }

const taskCols = `id, owner_id, type, status, priority, payload, result, error, vm_id, job_id, target_worker,
	worker_id, max_retries, retry_count, created_at, updated_at, scheduled_at, started_at, completed_at`

// taskSelect and taskUpdate are the read and the write of Update.
const (
	taskSelect = "SELECT " + taskCols + " FROM tasks WHERE id = ?"
	taskUpdate = `UPDATE tasks SET owner_id = ?, type = ?, status = ?, priority = ?, payload = ?,
	result = ?, error = ?, vm_id = ?, job_id = ?, target_worker = ?, worker_id = ?, max_retries = ?,
	retry_count = ?, updated_at = ?, scheduled_at = ?, started_at = ?, completed_at = ? WHERE id = ?`
)

func scanTask(row scanner) (*model.Task, error) {
	var t model.Task
	var payload, result, vmID, jobID, scheduled, started, completed sql.NullString
	var created, updated string
	err := row.Scan(&t.ID, &t.OwnerID, (*string)(&t.Type), (*string)(&t.Status), (*string)(&t.Priority), &payload,
		&result, &t.Error, &vmID, &jobID, &t.TargetWorker, &t.WorkerID, &t.MaxRetries, &t.RetryCount, &created,
		&updated, &scheduled, &started, &completed)
	if err != nil {
		return nil, err
	}
	t.Payload = prep.Raw(docBytes(payload))
	t.Result = prep.Raw(docBytes(result))
	t.VMID, t.JobID = vmID.String, jobID.String
	if t.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if t.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	if t.ScheduledAt, err = parseTSPtr(scheduled); err != nil {
		return nil, err
	}
	if t.StartedAt, err = parseTSPtr(started); err != nil {
		return nil, err
	}
	if t.CompletedAt, err = parseTSPtr(completed); err != nil {
		return nil, err
	}
	return &t, nil
}

func (tk taskStore) Create(ctx context.Context, t *model.Task) error {
	if err := prep.NewTask(t, prep.Now()); err != nil {
		return err
	}
	_, err := tk.s.exec(ctx, `INSERT INTO tasks (`+taskCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		t.ID, t.OwnerID, string(t.Type), string(t.Status), string(t.Priority), nullText(t.Payload),
		nullText(t.Result), t.Error, nullText(t.VMID), nullText(t.JobID), t.TargetWorker, t.WorkerID, t.MaxRetries,
		t.RetryCount, ts(t.CreatedAt), ts(t.UpdatedAt), tsPtr(t.ScheduledAt), tsPtr(t.StartedAt),
		tsPtr(t.CompletedAt))
	if _, _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("task %s already exists: %w", t.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create task", err)
	}
	return nil
}

func (tk taskStore) Get(ctx context.Context, id string) (*model.Task, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("task", id)
	}
	t, err := scanTask(tk.s.row(ctx, "SELECT "+taskCols+" FROM tasks WHERE id = ?", cid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("task", id)
	}
	if err != nil {
		return nil, dbErr("get task", err)
	}
	return t, nil
}

func (tk taskStore) Update(ctx context.Context, id string, fn func(t *model.Task) error) (*model.Task, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("task", id)
	}
	var out *model.Task
	err := tk.s.update(ctx, taskSelect, taskUpdate, func(st txStmts) error {
		t, err := scanTask(st.sel.QueryRowContext(ctx, cid))
		if errors.Is(err, sql.ErrNoRows) {
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
		_, err = st.upd.ExecContext(ctx,
			t.OwnerID, string(t.Type), string(t.Status), string(t.Priority), nullText(t.Payload), nullText(t.Result),
			t.Error, nullText(t.VMID), nullText(t.JobID), t.TargetWorker, t.WorkerID, t.MaxRetries, t.RetryCount,
			ts(t.UpdatedAt), tsPtr(t.ScheduledAt), tsPtr(t.StartedAt), tsPtr(t.CompletedAt), t.ID)
		if err != nil {
			return dbErr("update task", err)
		}
		if err := appendEvents(ctx, st.tx, prep.TaskEvents(&before, t, prep.Now())); err != nil {
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

func (tk taskStore) List(ctx context.Context, f store.TaskFilter) ([]*model.Task, error) {
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
		l.and("status IN " + l.in(ss))
	}
	switch f.TargetWorker {
	case "":
	case store.AnyWorker:
		l.and("target_worker = ''")
	default:
		l.and("target_worker = " + l.arg(f.TargetWorker))
	}
	tail, err := l.newestFirst(ctx, tk.s.r, "tasks", "task", f.Page)
	if err != nil {
		return nil, err
	}
	return collect(ctx, tk.s.r, "list tasks", "SELECT "+taskCols+" FROM tasks"+l.whereSQL()+tail, l.args, scanTask)
}
