package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

// Runs gives access to agent runs and their transcripts.
func (s *Store) Runs() store.RunStore { return runStore{s} }

type runStore struct{ s *Store }

const runCols = `id, owner_id, status, vm_id, repo_url, agent, spec, task_id, worker_id, error, cancel_requested,
	usage, result, created_at, updated_at, started_at, completed_at`

const (
	runSelect = "SELECT " + runCols + " FROM runs WHERE id = ?"
	runUpdate = `UPDATE runs SET owner_id = ?, status = ?, vm_id = ?, repo_url = ?, agent = ?, spec = ?, task_id = ?,
	worker_id = ?, error = ?, cancel_requested = ?, usage = ?, result = ?, updated_at = ?, started_at = ?,
	completed_at = ? WHERE id = ?`
)

func scanRun(row scanner) (*model.Run, error) {
	var r model.Run
	var vmID, taskID, usage, result, started, completed sql.NullString
	var spec, created, updated, repoURL, agent string
	err := row.Scan(&r.ID, &r.OwnerID, (*string)(&r.Status), &vmID, &repoURL, &agent, &spec, &taskID, &r.WorkerID,
		&r.Error, &r.CancelRequested, &usage, &result, &created, &updated, &started, &completed)
	if err != nil {
		return nil, err
	}
	r.VMID, r.TaskID = vmID.String, taskID.String
	if err := json.Unmarshal([]byte(spec), &r.Spec); err != nil {
		return nil, fmt.Errorf("run %s: spec: %w", r.ID, err)
	}
	if b := docBytes(usage); b != nil {
		if err := json.Unmarshal(b, &r.Usage); err != nil {
			return nil, fmt.Errorf("run %s: usage: %w", r.ID, err)
		}
	}
	if b := docBytes(result); b != nil {
		r.Result = new(model.RunResult)
		if err := json.Unmarshal(b, r.Result); err != nil {
			return nil, fmt.Errorf("run %s: result: %w", r.ID, err)
		}
	}
	if r.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if r.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	if r.StartedAt, err = parseTSPtr(started); err != nil {
		return nil, err
	}
	if r.CompletedAt, err = parseTSPtr(completed); err != nil {
		return nil, err
	}
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
	err = rs.s.execWithEvents(ctx, `INSERT INTO runs (`+runCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, prep.RunStatusEvents(nil, r, r.CreatedAt),
		r.ID, r.OwnerID, string(r.Status), nullText(r.VMID), r.Spec.Repo.URL, r.Spec.Agent, string(spec),
		nullText(r.TaskID), r.WorkerID, r.Error, r.CancelRequested, nullText(usage), nullText(result),
		ts(r.CreatedAt), ts(r.UpdatedAt), tsPtr(r.StartedAt), tsPtr(r.CompletedAt))
	if _, _, ok := uniqueViolation(err); ok {
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
	r, err := scanRun(rs.s.row(ctx, runSelect, cid))
	if errors.Is(err, sql.ErrNoRows) {
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
	err := rs.s.update(ctx, runSelect, runUpdate, func(st txStmts) error {
		r, err := scanRun(st.sel.QueryRowContext(ctx, cid))
		if errors.Is(err, sql.ErrNoRows) {
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
		_, err = st.upd.ExecContext(ctx, r.OwnerID, string(r.Status), nullText(r.VMID), r.Spec.Repo.URL, r.Spec.Agent,
			string(spec), nullText(r.TaskID), r.WorkerID, r.Error, r.CancelRequested, nullText(usage), nullText(result),
			ts(r.UpdatedAt), tsPtr(r.StartedAt), tsPtr(r.CompletedAt), r.ID)
		if err != nil {
			return dbErr("update run", err)
		}
		if err := appendEvents(ctx, st.tx, prep.RunStatusEvents(&before, r, prep.Now())); err != nil {
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
		l.and("status IN " + l.in(ss))
	}
	tail, err := l.newestFirst(ctx, rs.s.r, "runs", "run", f.Page)
	if err != nil {
		return nil, err
	}
	return collect(ctx, rs.s.r, "list runs", "SELECT "+runCols+" FROM runs"+l.whereSQL()+tail, l.args, scanRun)
}

func (rs runStore) SetDiff(ctx context.Context, id string, diff []byte) error {
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("run", id)
	}
	if diff == nil {
		diff = []byte{}
	}
	res, err := rs.s.exec(ctx, "UPDATE runs SET diff = ? WHERE id = ?", diff, cid)
	if err != nil {
		return dbErr("set run diff", err)
	}
	if n, err := res.RowsAffected(); err == nil && n == 0 {
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
	err := rs.s.row(ctx, "SELECT diff FROM runs WHERE id = ?", cid).Scan(&diff)
	if errors.Is(err, sql.ErrNoRows) {
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

// AppendEvents numbers and inserts the events in one write transaction; SQLite's single writer serialises
// appenders, so numbers never collide.
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
	tx, err := rs.s.w.BeginTx(ctx, nil)
	if err != nil {
		return dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }()
	var exists int
	if err := tx.QueryRowContext(ctx, "SELECT count(*) FROM runs WHERE id = ?", cid).Scan(&exists); err != nil {
		return dbErr("append run events", err)
	}
	if exists == 0 {
		return prep.NotFound("run", runID)
	}
	var last int64
	if err := tx.QueryRowContext(ctx, "SELECT COALESCE(MAX(seq), 0) FROM run_events WHERE run_id = ?", cid).Scan(&last); err != nil {
		return dbErr("append run events", err)
	}
	ins, err := tx.PrepareContext(ctx, "INSERT INTO run_events (run_id, seq, type, data, created_at) VALUES (?, ?, ?, ?, ?)")
	if err != nil {
		return dbErr("append run events", err)
	}
	defer ins.Close()
	for i, e := range evs {
		if _, err := ins.ExecContext(ctx, cid, last+int64(i)+1, e.Type, string(e.Data), ts(e.Time)); err != nil {
			return dbErr("append run events", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return dbErr("commit", err)
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
	return collect(ctx, rs.s.r, "list run events",
		"SELECT run_id, seq, type, data, created_at FROM run_events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
		[]any{cid, after, prep.EventsLimit(limit)}, scanRunEvent)
}

func scanRunEvent(row scanner) (*model.RunEvent, error) {
	var e model.RunEvent
	var data, at string
	if err := row.Scan(&e.RunID, &e.Seq, &e.Type, &data, &at); err != nil {
		return nil, err
	}
	e.Data = json.RawMessage(data)
	var err error
	if e.Time, err = parseTS(at); err != nil {
		return nil, err
	}
	return &e, nil
}
