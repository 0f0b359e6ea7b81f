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

type jobStore struct{ s *Store }

const jobCols = `id::text, owner_id, COALESCE(vm_id::text, ''), vm_spec, commands, stop_on_error, delete_vm_after,
	status, COALESCE(task_id::text, ''), error, created_at, updated_at, started_at, completed_at`

func scanJob(row pgx.Row) (*model.Job, error) {
	var j model.Job
	var spec, cmds []byte
	err := row.Scan(&j.ID, &j.OwnerID, &j.VMID, &spec, &cmds, &j.StopOnError, &j.DeleteVMAfter, (*string)(&j.Status),
		&j.TaskID, &j.Error, &j.CreatedAt, &j.UpdatedAt, &j.StartedAt, &j.CompletedAt)
	if err != nil {
		return nil, err
	}
	if j.VMSpec, err = prep.UnmarshalSpec(spec); err != nil {
		return nil, fmt.Errorf("job %s: vm_spec: %w", j.ID, err)
	}
	if j.Commands, err = prep.UnmarshalCommands(cmds); err != nil {
		return nil, fmt.Errorf("job %s: commands: %w", j.ID, err)
	}
	j.CreatedAt = prep.Time(j.CreatedAt)
	j.UpdatedAt = prep.Time(j.UpdatedAt)
	j.StartedAt = prep.TimePtr(j.StartedAt)
	j.CompletedAt = prep.TimePtr(j.CompletedAt)
	return &j, nil
}

func jobDocs(j *model.Job) (spec, cmds []byte, err error) {
	if spec, err = prep.MarshalSpec(j.VMSpec); err != nil {
		return nil, nil, prep.Invalid("job vm_spec: %v", err)
	}
	if cmds, err = prep.MarshalCommands(j.Commands); err != nil {
		return nil, nil, prep.Invalid("job commands: %v", err)
	}
	return spec, cmds, nil
}

func (js jobStore) Create(ctx context.Context, j *model.Job) error {
	if err := prep.NewJob(j, prep.Now()); err != nil {
		return err
	}
	spec, cmds, err := jobDocs(j)
	if err != nil {
		return err
	}
	_, err = js.s.pool.Exec(ctx, `INSERT INTO jobs (id, owner_id, vm_id, vm_spec, commands, stop_on_error,
		delete_vm_after, status, task_id, error, created_at, updated_at, started_at, completed_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)`,
		j.ID, j.OwnerID, nullUUID(j.VMID), nullJSON(spec), nullJSON(cmds), j.StopOnError, j.DeleteVMAfter,
		string(j.Status), nullUUID(j.TaskID), j.Error, j.CreatedAt, j.UpdatedAt, j.StartedAt, j.CompletedAt)
	if _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("job %s already exists: %w", j.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create job", err)
	}
	return nil
}

func (js jobStore) Get(ctx context.Context, id string) (*model.Job, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("job", id)
	}
	j, err := scanJob(js.s.pool.QueryRow(ctx, "SELECT "+jobCols+" FROM jobs WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("job", id)
	}
	if err != nil {
		return nil, dbErr("get job", err)
	}
	return j, nil
}

func (js jobStore) Update(ctx context.Context, id string, fn func(j *model.Job) error) (*model.Job, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("job", id)
	}
	var out *model.Job
	err := js.s.update(ctx, func(tx pgx.Tx) error {
		j, err := scanJob(tx.QueryRow(ctx, "SELECT "+jobCols+" FROM jobs WHERE id = $1 FOR UPDATE", cid))
		if errors.Is(err, pgx.ErrNoRows) {
			return prep.NotFound("job", id)
		}
		if err != nil {
			return dbErr("update job", err)
		}
		before := *j
		if err := fn(j); err != nil {
			return err
		}
		if err := prep.UpdatedJob(before, j, prep.Now()); err != nil {
			return err
		}
		spec, cmds, err := jobDocs(j)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE jobs SET owner_id = $2, vm_id = $3, vm_spec = $4, commands = $5,
			stop_on_error = $6, delete_vm_after = $7, status = $8, task_id = $9, error = $10, updated_at = $11,
			started_at = $12, completed_at = $13 WHERE id = $1`,
			j.ID, j.OwnerID, nullUUID(j.VMID), nullJSON(spec), nullJSON(cmds), j.StopOnError, j.DeleteVMAfter,
			string(j.Status), nullUUID(j.TaskID), j.Error, j.UpdatedAt, j.StartedAt, j.CompletedAt)
		if err != nil {
			return dbErr("update job", err)
		}
		out = j
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (js jobStore) List(ctx context.Context, ownerID string, p store.Page) ([]*model.Job, error) {
	if !prep.TextOK(ownerID) {
		return []*model.Job{}, nil // no row holds such text
	}
	var l list
	if ownerID != "" {
		l.and("owner_id = " + l.arg(ownerID))
	}
	tail, err := l.newestFirst(ctx, js.s.pool, "jobs", "job", p)
	if err != nil {
		return nil, err
	}
	rows, err := js.s.pool.Query(ctx, "SELECT "+jobCols+" FROM jobs"+l.whereSQL()+tail, l.args...)
	if err != nil {
		return nil, dbErr("list jobs", err)
	}
	defer rows.Close()
	out := []*model.Job{}
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, dbErr("list jobs", err)
		}
		out = append(out, j)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list jobs", err)
	}
	return out, nil
}
