package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"strings"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type eventStore struct{ s *Store }

// Events gives access to the owner-scoped event log.
func (s *Store) Events() store.EventStore { return eventStore{s} }

const eventInsert = "INSERT INTO events (owner_id, type, subject, vm_id, data, created_at) VALUES (?, ?, ?, ?, ?, ?)"

// appendEvents adds evs to the log inside tx, the transaction of the change they describe. SQLite has one writer,
// so ids are committed in order and a reader listing "id > last" never skips one.
func appendEvents(ctx context.Context, tx *sql.Tx, evs []*store.Event) error {
	for _, e := range evs {
		res, err := tx.ExecContext(ctx, eventInsert, e.OwnerID, e.Type, e.Subject, e.VMID, string(e.Data), ts(e.CreatedAt))
		if err != nil {
			return dbErr("append event", err)
		}
		if e.ID, err = res.LastInsertId(); err != nil {
			return dbErr("append event", err)
		}
	}
	return nil
}

// execWithEvents runs a write statement and appends evs in one transaction (just the statement when there are none).
// The statement's own error is returned as it is, so that callers can still tell a unique violation.
func (s *Store) execWithEvents(ctx context.Context, query string, evs []*store.Event, args ...any) error {
	if len(evs) == 0 {
		_, err := s.exec(ctx, query, args...)
		return err
	}
	st, err := s.ws.get(ctx, query)
	if err != nil {
		return err
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if _, err := tx.StmtContext(ctx, st).ExecContext(ctx, args...); err != nil {
		_ = tx.Rollback() // the statement's error is the one that matters
		return err
	}
	if err := appendEvents(ctx, tx, evs); err != nil {
		_ = tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return dbErr("commit", err)
	}
	return nil
}

func (es eventStore) Append(ctx context.Context, e *store.Event) error {
	if err := prep.NewEvent(e, prep.Now()); err != nil {
		return err
	}
	tx, err := es.s.w.BeginTx(ctx, nil)
	if err != nil {
		return dbErr("begin", err)
	}
	if err := appendEvents(ctx, tx, []*store.Event{e}); err != nil {
		_ = tx.Rollback()
		return err
	}
	return dbErrOr("commit", tx.Commit())
}

func (es eventStore) List(ctx context.Context, f store.EventFilter) ([]*store.Event, error) {
	if f.OwnerID == "" || !prep.TextOK(f.OwnerID, f.VMID) || !prep.TextOK(f.Types...) {
		return []*store.Event{}, nil
	}
	var l list
	l.and("owner_id = " + l.arg(f.OwnerID))
	l.and("id > " + l.arg(f.After))
	if f.VMID != "" {
		l.and("vm_id = " + l.arg(f.VMID))
	}
	if len(f.Types) > 0 {
		l.and("type IN " + l.in(f.Types))
	}
	q := "SELECT id, owner_id, type, subject, vm_id, data, created_at FROM events" + l.whereSQL() +
		" ORDER BY id LIMIT " + l.arg(prep.EventLimit(f.Limit))
	rows, err := es.s.r.QueryContext(ctx, q, l.args...)
	if err != nil {
		return nil, dbErr("list events", err)
	}
	defer rows.Close()
	out := []*store.Event{}
	for rows.Next() {
		var e store.Event
		var data, created string
		if err := rows.Scan(&e.ID, &e.OwnerID, &e.Type, &e.Subject, &e.VMID, &data, &created); err != nil {
			return nil, dbErr("list events", err)
		}
		e.Data = []byte(data)
		if e.CreatedAt, err = parseTS(created); err != nil {
			return nil, err
		}
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list events", err)
	}
	return out, nil
}

func (es eventStore) Bounds(ctx context.Context, ownerID string) (int64, int64, error) {
	var horizon, latest int64
	err := es.s.r.QueryRowContext(ctx, `SELECT
		COALESCE((SELECT pruned_through FROM event_horizons WHERE owner_id = ?), 0),
		COALESCE((SELECT MAX(id) FROM events WHERE owner_id = ?), 0)`, ownerID, ownerID).Scan(&horizon, &latest)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, dbErr("event bounds", err)
	}
	return horizon, latest, nil
}

// Prune finds, per owner, the newest event retention drops (too old, or beyond the newest MaxPerOwner), raises the
// owner's horizon to it and deletes every event of the owner up to it, in one transaction.
func (es eventStore) Prune(ctx context.Context, r store.EventRetention) (int64, error) {
	if r.MaxAge <= 0 && r.MaxPerOwner <= 0 {
		return 0, nil
	}
	var conds []string
	var args []any
	if r.MaxAge > 0 {
		conds = append(conds, "created_at < ?")
		args = append(args, ts(prep.Now().Add(-r.MaxAge)))
	}
	if r.MaxPerOwner > 0 {
		conds = append(conds, "rn > ?")
		args = append(args, r.MaxPerOwner)
	}
	cut := `SELECT owner_id, MAX(id) FROM (SELECT id, owner_id, created_at,
		ROW_NUMBER() OVER (PARTITION BY owner_id ORDER BY id DESC) AS rn FROM events)
		WHERE ` + strings.Join(conds, " OR ") + ` GROUP BY owner_id`
	tx, err := es.s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }() // after Commit, a no-op
	if _, err := tx.ExecContext(ctx, `INSERT INTO event_horizons (owner_id, pruned_through) `+cut+`
		ON CONFLICT (owner_id) DO UPDATE SET pruned_through = MAX(pruned_through, excluded.pruned_through)`,
		args...); err != nil {
		return 0, dbErr("prune events", err)
	}
	res, err := tx.ExecContext(ctx, `DELETE FROM events WHERE id <= (SELECT pruned_through FROM event_horizons h
		WHERE h.owner_id = events.owner_id)`)
	if err != nil {
		return 0, dbErr("prune events", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, dbErr("prune events", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, dbErr("commit", err)
	}
	return n, nil
}
