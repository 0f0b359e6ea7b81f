package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

// Runs gives access to agent runs and their transcripts.
func (s *Store) Runs() store.RunStore { return runStore{s} }

type runStore struct{ s *Store }

const runCols = `id::text, owner_id, status, COALESCE(vm_id::text, ''), spec, COALESCE(task_id::text, ''), worker_id,
	error, cancel_requested, usage, result, created_at, updated_at, started_at, completed_at`

func scanRun(row pgx.Row) (*model.Run, error) {
	var r model.Run
	var spec, usage, result []byte
	err := row.Scan(&r.ID, &r.OwnerID, (*string)(&r.Status), &r.VMID, &spec, &r.TaskID, &r.WorkerID, &r.Error,
		&r.CancelRequested, &usage, &result, &r.CreatedAt, &r.UpdatedAt, &r.StartedAt, &r.CompletedAt)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(spec, &r.Spec); err != nil {
		return nil, fmt.Errorf("run %s: spec: %w", r.ID, err)
	}
	if len(usage) > 0 {
		if err := json.Unmarshal(usage, &r.Usage); err != nil {
			return nil, fmt.Errorf("run %s: usage: %w", r.ID, err)
		}
	}
	if len(result) > 0 {
		r.Result = new(model.RunResult)
		if err := json.Unmarshal(result, r.Result); err != nil {
			return nil, fmt.Errorf("run %s: result: %w", r.ID, err)
		}
	}
	r.CreatedAt = prep.Time(r.CreatedAt)
	r.UpdatedAt = prep.Time(r.UpdatedAt)
	r.StartedAt = prep.TimePtr(r.StartedAt)
	r.CompletedAt = prep.TimePtr(r.CompletedAt)
	return &r, nil
}

func runDocs(r *model.Run) (spec, usage, result []byte, err error) {
	if spec, err = json.Marshal(r.Spec); err != nil {
		return nil, nil, nil, prep.Invalid("run spec: %v", err)
	}
	if usage, err = json.Marshal(r.Usage); err != nil {
		return nil, nil, nil, prep.Invalid("run usage: %v", err)
	}
	if r.Result != nil {
		if result, err = json.Marshal(r.Result); err != nil {
			return nil, nil, nil, prep.Invalid("run result: %v", err)
		}
	}
	return spec, usage, result, nil
}

func (rs runStore) Create(ctx context.Context, r *model.Run) error {
	if err := prep.NewRun(r, prep.Now()); err != nil {
		return err
	}
	spec, usage, result, err := runDocs(r)
	if err != nil {
		return err
	}
	err = rs.s.execWithEvents(ctx, `INSERT INTO runs (id, owner_id, status, vm_id, repo_url, agent, spec, task_id,
		worker_id, error, cancel_requested, usage, result, created_at, updated_at, started_at, completed_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)`, prep.RunStatusEvents(nil, r, r.CreatedAt),
		r.ID, r.OwnerID, string(r.Status), nullUUID(r.VMID), r.Spec.Repo.URL, r.Spec.Agent, spec, nullUUID(r.TaskID),
		r.WorkerID, r.Error, r.CancelRequested, nullJSON(usage), nullJSON(result), r.CreatedAt, r.UpdatedAt,
		r.StartedAt, r.CompletedAt)
	if _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("run %s already exists: %w", r.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create run", err)
	}
	return nil
}

func (rs runStore) Get(ctx context.Context, id string) (*model.Run, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("run", id)
	}
	r, err := scanRun(rs.s.pool.QueryRow(ctx, "SELECT "+runCols+" FROM runs WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("run", id)
	}
	if err != nil {
		return nil, dbErr("get run", err)
	}
	return r, nil
}

func (rs runStore) Update(ctx context.Context, id string, fn func(r *model.Run) error) (*model.Run, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("run", id)
	}
	var out *model.Run
	err := rs.s.update(ctx, func(tx pgx.Tx) error {
		r, err := scanRun(tx.QueryRow(ctx, "SELECT "+runCols+" FROM runs WHERE id = $1 FOR UPDATE", cid))
		if errors.Is(err, pgx.ErrNoRows) {
			return prep.NotFound("run", id)
		}
		if err != nil {
			return dbErr("update run", err)
		}
		before := *r
		if err := fn(r); err != nil {
			return err
		}
		if err := prep.UpdatedRun(before, r, prep.Now()); err != nil {
			return err
		}
		spec, usage, result, err := runDocs(r)
		if err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `UPDATE runs SET owner_id = $2, status = $3, vm_id = $4, repo_url = $5, agent = $6,
			spec = $7, task_id = $8, worker_id = $9, error = $10, cancel_requested = $11, usage = $12, result = $13,
			updated_at = $14, started_at = $15, completed_at = $16 WHERE id = $1`,
			r.ID, r.OwnerID, string(r.Status), nullUUID(r.VMID), r.Spec.Repo.URL, r.Spec.Agent, spec,
			nullUUID(r.TaskID), r.WorkerID, r.Error, r.CancelRequested, nullJSON(usage), nullJSON(result),
			r.UpdatedAt, r.StartedAt, r.CompletedAt)
		if err != nil {
			return dbErr("update run", err)
		}
		if err := appendEvents(ctx, tx, prep.RunStatusEvents(&before, r, prep.Now())); err != nil {
			return err
		}
		out = r
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (rs runStore) List(ctx context.Context, f store.RunFilter) ([]*model.Run, error) {
	if !prep.TextOK(f.OwnerID, f.RepoURL) {
		return []*model.Run{}, nil
	}
	var l list
	if f.OwnerID != "" {
		l.and("owner_id = " + l.arg(f.OwnerID))
	}
	if f.VMID != "" {
		cid, ok := prep.UUID(f.VMID)
		if !ok {
			return []*model.Run{}, nil
		}
		l.and("vm_id = " + l.arg(cid))
	}
	if f.RepoURL != "" {
		l.and("repo_url = " + l.arg(f.RepoURL))
	}
	if len(f.Statuses) > 0 {
		ss := make([]string, len(f.Statuses))
		for i, st := range f.Statuses {
			ss[i] = string(st)
		}
		l.and("status = ANY(" + l.arg(ss) + ")")
	}
	tail, err := l.newestFirst(ctx, rs.s.pool, "runs", "run", f.Page)
	if err != nil {
		return nil, err
	}
	rows, err := rs.s.pool.Query(ctx, "SELECT "+runCols+" FROM runs"+l.whereSQL()+tail, l.args...)
	if err != nil {
		return nil, dbErr("list runs", err)
	}
	defer rows.Close()
	out := []*model.Run{}
	for rows.Next() {
		r, err := scanRun(rows)
		if err != nil {
			return nil, dbErr("list runs", err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list runs", err)
	}
	return out, nil
}

func (rs runStore) SetDiff(ctx context.Context, id string, diff []byte) error {
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("run", id)
	}
	if diff == nil {
		diff = []byte{}
	}
	tag, err := rs.s.pool.Exec(ctx, "UPDATE runs SET diff = $2 WHERE id = $1", cid, diff)
	if err != nil {
		return dbErr("set run diff", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("run", id)
	}
	return nil
}

func (rs runStore) Diff(ctx context.Context, id string) ([]byte, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("run", id)
	}
	var diff []byte
	err := rs.s.pool.QueryRow(ctx, "SELECT diff FROM runs WHERE id = $1", cid).Scan(&diff)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("run", id)
	}
	if err != nil {
		return nil, dbErr("get run diff", err)
	}
	if diff == nil {
		diff = []byte{}
	}
	return diff, nil
}

// AppendEvents numbers and inserts the events in one transaction that first locks the run's row, so concurrent
// appenders of one run queue behind each other and numbers never collide.
func (rs runStore) AppendEvents(ctx context.Context, runID string, evs []*model.RunEvent) error {
	cid, ok := prep.UUID(runID)
	if !ok {
		return prep.NotFound("run", runID)
	}
	if len(evs) == 0 {
		return nil
	}
	if err := prep.RunEvents(cid, evs, prep.Now()); err != nil {
		return err
	}
	var last int64
	err := rs.s.update(ctx, func(tx pgx.Tx) error {
		var one int
		err := tx.QueryRow(ctx, "SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", cid).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return prep.NotFound("run", runID)
		}
		if err != nil {
			return dbErr("append run events", err)
		}
		if err := tx.QueryRow(ctx, "SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = $1", cid).Scan(&last); err != nil {
			return dbErr("append run events", err)
		}
		rows := make([][]any, len(evs))
		for i, e := range evs {
			rows[i] = []any{cid, last + int64(i) + 1, e.Type, []byte(e.Data), e.Time}
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"run_events"}, []string{"run_id", "seq", "type", "data", "created_at"},
			pgx.CopyFromRows(rows)); err != nil {
			return dbErr("append run events", err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for i, e := range evs {
		e.Seq = last + int64(i) + 1
	}
	return nil
}

func (rs runStore) Events(ctx context.Context, runID string, after int64, limit int) ([]*model.RunEvent, error) {
	cid, ok := prep.UUID(runID)
	if !ok {
		return []*model.RunEvent{}, nil
	}
	rows, err := rs.s.pool.Query(ctx, `SELECT run_id::text, seq, type, data, created_at FROM run_events
		WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3`, cid, after, prep.EventsLimit(limit))
	if err != nil {
		return nil, dbErr("list run events", err)
	}
	defer rows.Close()
	out := []*model.RunEvent{}
	for rows.Next() {
		var e model.RunEvent
		var data []byte
		if err := rows.Scan(&e.RunID, &e.Seq, &e.Type, &data, &e.Time); err != nil {
			return nil, dbErr("list run events", err)
		}
		e.Data, e.Time = json.RawMessage(data), prep.Time(e.Time)
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list run events", err)
	}
	return out, nil
}
