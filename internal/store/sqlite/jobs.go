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

type jobStore struct{ s *Store }

const jobCols = `id, owner_id, vm_id, vm_spec, commands, stop_on_error, delete_vm_after, status, task_id, error,
	created_at, updated_at, started_at, completed_at`

// jobSelect and jobUpdate are the read and the write of Update.
const (
	jobSelect = "SELECT " + jobCols + " FROM jobs WHERE id = ?"
	jobUpdate = `UPDATE jobs SET owner_id = ?, vm_id = ?, vm_spec = ?, commands = ?,
	stop_on_error = ?, delete_vm_after = ?, status = ?, task_id = ?, error = ?, updated_at = ?, started_at = ?,
	completed_at = ? WHERE id = ?`
)

func scanJob(row scanner) (*model.Job, error) {
	var j model.Job
	var vmID, spec, cmds, taskID, started, completed sql.NullString
	var created, updated string
	err := row.Scan(&j.ID, &j.OwnerID, &vmID, &spec, &cmds, &j.StopOnError, &j.DeleteVMAfter, (*string)(&j.Status),
		&taskID, &j.Error, &created, &updated, &started, &completed)
	if err != nil {
		return nil, err
	}
	j.VMID, j.TaskID = vmID.String, taskID.String
	if j.VMSpec, err = prep.UnmarshalSpec(docBytes(spec)); err != nil {
		return nil, fmt.Errorf("job %s: vm_spec: %w", j.ID, err)
	}
	if j.Commands, err = prep.UnmarshalCommands(docBytes(cmds)); err != nil {
		return nil, fmt.Errorf("job %s: commands: %w", j.ID, err)
	}
	if j.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if j.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	if j.StartedAt, err = parseTSPtr(started); err != nil {
		return nil, err
	}
	if j.CompletedAt, err = parseTSPtr(completed); err != nil {
		return nil, err
	}
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
	_, err = js.s.exec(ctx, `INSERT INTO jobs (`+jobCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		j.ID, j.OwnerID, nullText(j.VMID), nullText(spec), nullText(cmds), j.StopOnError, j.DeleteVMAfter,
		string(j.Status), nullText(j.TaskID), j.Error, ts(j.CreatedAt), ts(j.UpdatedAt), tsPtr(j.StartedAt),
		tsPtr(j.CompletedAt))
	if _, _, ok := uniqueViolation(err); ok {
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
	j, err := scanJob(js.s.row(ctx, "SELECT "+jobCols+" FROM jobs WHERE id = ?", cid))
	if errors.Is(err, sql.ErrNoRows) {
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
	err := js.s.update(ctx, jobSelect, jobUpdate, func(st txStmts) error {
		j, err := scanJob(st.sel.QueryRowContext(ctx, cid))
		if errors.Is(err, sql.ErrNoRows) {
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
		_, err = st.upd.ExecContext(ctx,
			j.OwnerID, nullText(j.VMID), nullText(spec), nullText(cmds), j.StopOnError, j.DeleteVMAfter,
			string(j.Status), nullText(j.TaskID), j.Error, ts(j.UpdatedAt), tsPtr(j.StartedAt), tsPtr(j.CompletedAt),
			j.ID)
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
	tail, err := l.newestFirst(ctx, js.s.r, "jobs", "job", p)
	if err != nil {
		return nil, err
	}
	return collect(ctx, js.s.r, "list jobs", "SELECT "+jobCols+" FROM jobs"+l.whereSQL()+tail, l.args, scanJob)
}
