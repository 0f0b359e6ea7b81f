package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type executionStore struct{ s *Store }

const executionCols = `id::text, owner_id, vm_id::text, COALESCE(job_id::text, ''), COALESCE(task_id::text, ''), seq,
	status, command, args, env, working_dir, timeout_seconds, exit_code, stdout, stderr, stdout_truncated,
	stderr_truncated, timed_out, error, worker_id, created_at, started_at, completed_at, duration_ms, run_as,
	peak_memory_kb, secret_env`

func scanExecution(row pgx.Row) (*model.Execution, error) {
	var e model.Execution
	var args, env, secretEnv, stdout, stderr []byte
	err := row.Scan(&e.ID, &e.OwnerID, &e.VMID, &e.JobID, &e.TaskID, &e.Seq, (*string)(&e.Status), &e.Command, &args,
		&env, &e.WorkingDir, &e.TimeoutSeconds, &e.ExitCode, &stdout, &stderr, &e.StdoutTruncated,
		&e.StderrTruncated, &e.TimedOut, &e.Error, &e.WorkerID, &e.CreatedAt, &e.StartedAt, &e.CompletedAt,
		&e.DurationMS, &e.User, &e.PeakMemoryKB, &secretEnv)
	if err != nil {
		return nil, err
	}
	if e.Args, err = prep.UnmarshalStrings(args); err != nil {
		return nil, fmt.Errorf("execution %s: args: %w", e.ID, err)
	}
	if e.Env, err = prep.UnmarshalMap(env); err != nil {
		return nil, fmt.Errorf("execution %s: env: %w", e.ID, err)
	}
	if e.SecretEnv, err = prep.UnmarshalMap(secretEnv); err != nil {
		return nil, fmt.Errorf("execution %s: secret_env: %w", e.ID, err)
	}
	e.Stdout = string(stdout)
	e.Stderr = string(stderr)
	e.CreatedAt = prep.Time(e.CreatedAt)
	e.StartedAt = prep.TimePtr(e.StartedAt)
	e.CompletedAt = prep.TimePtr(e.CompletedAt)
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

func (es executionStore) Create(ctx context.Context, e *model.Execution) error {
	if err := prep.NewExecution(e, prep.Now()); err != nil {
		return err
	}
	args, env, secretEnv, err := executionDocs(e)
	if err != nil {
		return err
	}
	err = es.s.execWithEvents(ctx, `INSERT INTO executions (id, owner_id, vm_id, job_id, task_id, seq, status, command,
		args, env, working_dir, timeout_seconds, exit_code, stdout, stderr, stdout_truncated, stderr_truncated,
		timed_out, error, worker_id, created_at, started_at, completed_at, duration_ms, run_as, peak_memory_kb,
		secret_env)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
		$23, $24, $25, $26, $27)`, prep.ExecutionEvents(nil, e, e.CreatedAt),
		e.ID, e.OwnerID, e.VMID, nullUUID(e.JobID), nullUUID(e.TaskID), e.Seq, string(e.Status), e.Command,
		nullJSON(args), nullJSON(env), e.WorkingDir, e.TimeoutSeconds, e.ExitCode, []byte(e.Stdout),
		[]byte(e.Stderr), e.StdoutTruncated, e.StderrTruncated, e.TimedOut, e.Error, e.WorkerID, e.CreatedAt,
		e.StartedAt, e.CompletedAt, e.DurationMS, e.User, e.PeakMemoryKB, nullJSON(secretEnv))
	if _, ok := uniqueViolation(err); ok {
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
	e, err := scanExecution(es.s.pool.QueryRow(ctx, "SELECT "+executionCols+" FROM executions WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
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
	err := es.s.update(ctx, func(tx pgx.Tx) error {
		e, err := scanExecution(tx.QueryRow(ctx,
			"SELECT "+executionCols+" FROM executions WHERE id = $1 FOR UPDATE", cid))
		if errors.Is(err, pgx.ErrNoRows) {
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
		_, err = tx.Exec(ctx, `UPDATE executions SET owner_id = $2, vm_id = $3, job_id = $4, task_id = $5, seq = $6,
			status = $7, command = $8, args = $9, env = $10, working_dir = $11, timeout_seconds = $12,
			exit_code = $13, stdout = $14, stderr = $15, stdout_truncated = $16, stderr_truncated = $17,
			timed_out = $18, error = $19, worker_id = $20, started_at = $21, completed_at = $22, duration_ms = $23,
			run_as = $24, peak_memory_kb = $25, secret_env = $26
			WHERE id = $1`,
			e.ID, e.OwnerID, e.VMID, nullUUID(e.JobID), nullUUID(e.TaskID), e.Seq, string(e.Status), e.Command,
			nullJSON(args), nullJSON(env), e.WorkingDir, e.TimeoutSeconds, e.ExitCode, []byte(e.Stdout),
			[]byte(e.Stderr), e.StdoutTruncated, e.StderrTruncated, e.TimedOut, e.Error, e.WorkerID, e.StartedAt,
			e.CompletedAt, e.DurationMS, e.User, e.PeakMemoryKB, nullJSON(secretEnv))
		if err != nil {
			return dbErr("update execution", err)
		}
		if err := appendEvents(ctx, tx, prep.ExecutionEvents(&before, e, prep.Now())); err != nil {
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
	if f.JobID != "" {
		id, ok := prep.UUID(f.JobID)
		if !ok {
			return []*model.Execution{}, nil
		}
		l.and("job_id = " + l.arg(id))
		var err error
		if tail, err = es.bySeq(ctx, &l, f.Page); err != nil {
			return nil, err
		}
	} else {
		var err error
		if tail, err = l.newestFirst(ctx, es.s.pool, "executions", "execution", f.Page); err != nil {
			return nil, err
		}
	}
	rows, err := es.s.pool.Query(ctx, "SELECT "+executionCols+" FROM executions"+l.whereSQL()+tail, l.args...)
	if err != nil {
		return nil, dbErr("list executions", err)
	}
	defer rows.Close()
	out := []*model.Execution{}
	for rows.Next() {
		e, err := scanExecution(rows)
		if err != nil {
			return nil, dbErr("list executions", err)
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list executions", err)
	}
	return out, nil
}

// bySeq pages a job's executions in command order: (seq, created_at, id) ascending.
func (es executionStore) bySeq(ctx context.Context, l *list, p store.Page) (string, error) {
	after, err := prep.Cursor("execution", p)
	if err != nil {
		return "", err
	}
	if after != "" {
		var seq int
		var at time.Time
		err := es.s.pool.QueryRow(ctx, "SELECT seq, created_at FROM executions WHERE id = $1", after).Scan(&seq, &at)
		if errors.Is(err, pgx.ErrNoRows) {
			return "", prep.UnknownCursor("execution", after)
		}
		if err != nil {
			return "", dbErr("list executions", err)
		}
		l.and(fmt.Sprintf("(seq, created_at, id) > (%s::integer, %s::timestamptz, %s::uuid)",
			l.arg(seq), l.arg(at), l.arg(after)))
	}
	return fmt.Sprintf(" ORDER BY seq, created_at, id LIMIT %d", prep.Limit(p)), nil
}
