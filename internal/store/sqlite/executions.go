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

type executionStore struct{ s *Store }

const executionCols = `id, owner_id, vm_id, job_id, task_id, seq, status, command, args, env, working_dir,
	timeout_seconds, exit_code, stdout, stderr, stdout_truncated, stderr_truncated, timed_out, error, worker_id,
	created_at, started_at, completed_at, duration_ms, run_as, peak_memory_kb, secret_env`

// executionSelect and executionUpdate are the read and the write of Update.
const (
	executionSelect = "SELECT " + executionCols + " FROM executions WHERE id = ?"
	executionUpdate = `UPDATE executions SET owner_id = ?, vm_id = ?, job_id = ?, task_id = ?, seq = ?,
	status = ?, command = ?, args = ?, env = ?, working_dir = ?, timeout_seconds = ?, exit_code = ?,
	stdout = ?, stderr = ?, stdout_truncated = ?, stderr_truncated = ?, timed_out = ?, error = ?,
	worker_id = ?, started_at = ?, completed_at = ?, duration_ms = ?, run_as = ?, peak_memory_kb = ?, secret_env = ?
	WHERE id = ?`
)

func scanExecution(row scanner) (*model.Execution, error) {
	var e model.Execution
	var jobID, taskID, args, env, secretEnv, started, completed sql.NullString
	var created string
	var stdout, stderr []byte
	var exitCode sql.NullInt64
	var duration, peak sql.NullInt64
	err := row.Scan(&e.ID, &e.OwnerID, &e.VMID, &jobID, &taskID, &e.Seq, (*string)(&e.Status), &e.Command, &args,
		&env, &e.WorkingDir, &e.TimeoutSeconds, &exitCode, &stdout, &stderr, &e.StdoutTruncated, &e.StderrTruncated,
		&e.TimedOut, &e.Error, &e.WorkerID, &created, &started, &completed, &duration, &e.User, &peak, &secretEnv)
	if err != nil {
		return nil, err
	}
	e.JobID, e.TaskID = jobID.String, taskID.String
	e.Stdout, e.Stderr = string(stdout), string(stderr)
	if exitCode.Valid {
		c := int(exitCode.Int64)
		e.ExitCode = &c
	}
	if duration.Valid {
		d := duration.Int64
		e.DurationMS = &d
	}
	if peak.Valid {
		p := peak.Int64
		e.PeakMemoryKB = &p
	}
	if e.Args, err = prep.UnmarshalStrings(docBytes(args)); err != nil {
		return nil, fmt.Errorf("execution %s: args: %w", e.ID, err)
	}
	if e.Env, err = prep.UnmarshalMap(docBytes(env)); err != nil {
		return nil, fmt.Errorf("execution %s: env: %w", e.ID, err)
	}
	if e.SecretEnv, err = prep.UnmarshalMap(docBytes(secretEnv)); err != nil {
		return nil, fmt.Errorf("execution %s: secret_env: %w", e.ID, err)
	}
	if e.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if e.StartedAt, err = parseTSPtr(started); err != nil {
		return nil, err
	}
	if e.CompletedAt, err = parseTSPtr(completed); err != nil {
		return nil, err
	}
	return &e, nil
}

func executionDocs(e *model.Execution) (args, env, secretEnv []byte, err error) {
	if args, err = prep.MarshalStrings(e.Args); err != nil {
		return nil, nil, nil, prep.Invalid("execution args: %v", err)
	}
	if env, err = prep.MarshalMap(e.Env); err != nil {
		return nil, nil, nil, prep.Invalid("execution env: %v", err)
	}
	if secretEnv, err = prep.MarshalMap(e.SecretEnv); err != nil {
		return nil, nil, nil, prep.Invalid("execution secret_env: %v", err)
	}
	return args, env, secretEnv, nil
}

func nullInt[T int | int64](p *T) any {
	if p == nil {
		return nil
	}
	return int64(*p)
}

func (es executionStore) Create(ctx context.Context, e *model.Execution) error {
	if err := prep.NewExecution(e, prep.Now()); err != nil {
		return err
	}
	args, env, secretEnv, err := executionDocs(e)
	if err != nil {
		return err
	}
	err = es.s.execWithEvents(ctx, `INSERT INTO executions (`+executionCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, prep.ExecutionEvents(nil, e, e.CreatedAt),
		e.ID, e.OwnerID, e.VMID, nullText(e.JobID), nullText(e.TaskID), e.Seq, string(e.Status), e.Command,
		nullText(args), nullText(env), e.WorkingDir, e.TimeoutSeconds, nullInt(e.ExitCode), blob(e.Stdout),
		blob(e.Stderr), e.StdoutTruncated, e.StderrTruncated, e.TimedOut, e.Error, e.WorkerID, ts(e.CreatedAt),
		tsPtr(e.StartedAt), tsPtr(e.CompletedAt), nullInt(e.DurationMS), e.User, nullInt(e.PeakMemoryKB), nullText(secretEnv))
	if _, _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("execution %s already exists: %w", e.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create execution", err)
	}
	return nil
}

func (es executionStore) Get(ctx context.Context, id string) (*model.Execution, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("execution", id)
	}
	e, err := scanExecution(es.s.row(ctx, "SELECT "+executionCols+" FROM executions WHERE id = ?", cid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("execution", id)
	}
	if err != nil {
		return nil, dbErr("get execution", err)
	}
	return e, nil
}

func (es executionStore) Update(ctx context.Context, id string, fn func(e *model.Execution) error) (*model.Execution, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("execution", id)
	}
	var out *model.Execution
	err := es.s.update(ctx, executionSelect, executionUpdate, func(st txStmts) error {
		e, err := scanExecution(st.sel.QueryRowContext(ctx, cid))
		if errors.Is(err, sql.ErrNoRows) {
			return prep.NotFound("execution", id)
		}
		if err != nil {
			return dbErr("update execution", err)
		}
		before := *e
		if err := fn(e); err != nil {
			return err
		}
		if err := prep.UpdatedExecution(before, e); err != nil {
			return err
		}
		args, env, secretEnv, err := executionDocs(e)
		if err != nil {
			return err
		}
		_, err = st.upd.ExecContext(ctx,
			e.OwnerID, e.VMID, nullText(e.JobID), nullText(e.TaskID), e.Seq, string(e.Status), e.Command,
			nullText(args), nullText(env), e.WorkingDir, e.TimeoutSeconds, nullInt(e.ExitCode), blob(e.Stdout),
			blob(e.Stderr), e.StdoutTruncated, e.StderrTruncated, e.TimedOut, e.Error, e.WorkerID,
			tsPtr(e.StartedAt), tsPtr(e.CompletedAt), nullInt(e.DurationMS), e.User, nullInt(e.PeakMemoryKB),
			nullText(secretEnv), e.ID)
		if err != nil {
			return dbErr("update execution", err)
		}
		if err := appendEvents(ctx, st.tx, prep.ExecutionEvents(&before, e, prep.Now())); err != nil {
			return err
		}
		out = e
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (es executionStore) List(ctx context.Context, f store.ExecutionFilter) ([]*model.Execution, error) {
	if !prep.TextOK(f.OwnerID) {
		return []*model.Execution{}, nil // no row holds such text
	}
	var l list
	if f.OwnerID != "" {
		l.and("owner_id = " + l.arg(f.OwnerID))
	}
	if f.VMID != "" {
		id, ok := prep.UUID(f.VMID)
		if !ok {
			return []*model.Execution{}, nil // no row has such a vm id
		}
		l.and("vm_id = " + l.arg(id))
	}
	var tail string
	var err error
	if f.JobID != "" {
		id, ok := prep.UUID(f.JobID)
		if !ok {
			return []*model.Execution{}, nil
		}
		l.and("job_id = " + l.arg(id))
		tail, err = es.bySeq(ctx, &l, f.Page)
	} else {
		tail, err = l.newestFirst(ctx, es.s.r, "executions", "execution", f.Page)
	}
	if err != nil {
		return nil, err
	}
	return collect(ctx, es.s.r, "list executions",
		"SELECT "+executionCols+" FROM executions"+l.whereSQL()+tail, l.args, scanExecution)
}

// bySeq pages a job's executions in command order: (seq, created_at, id) ascending.
func (es executionStore) bySeq(ctx context.Context, l *list, p store.Page) (string, error) {
	after, err := prep.Cursor("execution", p)
	if err != nil {
		return "", err
	}
	if after != "" {
		var seq int64
		var at string
		err := es.s.row(ctx, "SELECT seq, created_at FROM executions WHERE id = ?", after).Scan(&seq, &at)
		if errors.Is(err, sql.ErrNoRows) {
			return "", prep.UnknownCursor("execution", after)
		}
		if err != nil {
			return "", dbErr("list executions", err)
		}
		l.and(fmt.Sprintf("(seq, created_at, id) > (%s, %s, %s)", l.arg(seq), l.arg(at), l.arg(after)))
	}
	return fmt.Sprintf(" ORDER BY seq, created_at, id LIMIT %d", prep.Limit(p)), nil
}
