package postgres

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type eventStore struct{ s *Store }

// Events gives access to the owner-scoped event log.
func (s *Store) Events() store.EventStore { return eventStore{s} }

// eventLogLock is the key of the transaction-level advisory lock every append takes (an arbitrary constant:
// "aeth" "evts" in ASCII).
const eventLogLock int64 = 0x61657468_65767473

// appendEvents adds evs to the log inside tx, the transaction of the change they describe. It takes the event
// log's advisory lock first, held until tx ends: identity values are handed out when a row is inserted, not when it
// commits, so without the lock a transaction could commit id 11 while id 10 is still uncommitted, and a reader
// listing "id > last" would move past 10 and never see it. With the lock, appends commit in id order. The lock is
// taken as the transaction's last statements, so it is held only for the commit.
func appendEvents(ctx context.Context, tx pgx.Tx, evs []*store.Event) error {
	if len(evs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", eventLogLock); err != nil {
		return dbErr("lock event log", err)
	}
	for _, e := range evs {
		err := tx.QueryRow(ctx, `INSERT INTO events (owner_id, type, subject, vm_id, data, created_at)
			VALUES ($1, $2, $3, $4, $5, $6) RETURNING id`,
			e.OwnerID, e.Type, e.Subject, e.VMID, string(e.Data), e.CreatedAt).Scan(&e.ID)
		if err != nil {
			return dbErr("append event", err)
		}
	}
	return nil
}

// execWithEvents runs a write statement and appends evs in one transaction. The statement's own error is returned
// as it is, so that callers can still tell a unique violation.
func (s *Store) execWithEvents(ctx context.Context, query string, evs []*store.Event, args ...any) error {
	if len(evs) == 0 {
		_, err := s.pool.Exec(ctx, query, args...)
		return err
	}
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, query, args...); err != nil {
			return err
		}
		return appendEvents(ctx, tx, evs)
	})
}

func (es eventStore) Append(ctx context.Context, e *store.Event) error {
	if err := prep.NewEvent(e, prep.Now()); err != nil {
		return err
	}
	return pgx.BeginFunc(ctx, es.s.pool, func(tx pgx.Tx) error {
		return appendEvents(ctx, tx, []*store.Event{e})
	})
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
		l.and("type = ANY(" + l.arg(f.Types) + ")")
	}
	q := "SELECT id, owner_id, type, subject, vm_id, data::text, created_at FROM events" + l.whereSQL() +
		" ORDER BY id LIMIT " + l.arg(prep.EventLimit(f.Limit))
	rows, err := es.s.pool.Query(ctx, q, l.args...)
	if err != nil {
		return nil, dbErr("list events", err)
	}
	defer rows.Close()
	out := []*store.Event{}
	for rows.Next() {
		var e store.Event
		var data string
		if err := rows.Scan(&e.ID, &e.OwnerID, &e.Type, &e.Subject, &e.VMID, &data, &e.CreatedAt); err != nil {
			return nil, dbErr("list events", err)
		}
		e.Data = []byte(data)
		e.CreatedAt = prep.Time(e.CreatedAt)
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list events", err)
	}
	return out, nil
}

func (es eventStore) Bounds(ctx context.Context, ownerID string) (int64, int64, error) {
	var horizon, latest int64
	err := es.s.pool.QueryRow(ctx, `SELECT
		COALESCE((SELECT pruned_through FROM event_horizons WHERE owner_id = $1), 0),
		COALESCE((SELECT MAX(id) FROM events WHERE owner_id = $1), 0)`, ownerID).Scan(&horizon, &latest)
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
		args = append(args, prep.Now().Add(-r.MaxAge))
		conds = append(conds, "created_at < $1")
	}
	if r.MaxPerOwner > 0 {
		args = append(args, r.MaxPerOwner)
		conds = append(conds, fmt.Sprintf("rn > $%d", len(args)))
	}
	cut := `SELECT owner_id, MAX(id) FROM (SELECT id, owner_id, created_at,
		ROW_NUMBER() OVER (PARTITION BY owner_id ORDER BY id DESC) AS rn FROM events) ranked
		WHERE ` + strings.Join(conds, " OR ") + ` GROUP BY owner_id`
	var n int64
	err := pgx.BeginFunc(ctx, es.s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO event_horizons (owner_id, pruned_through) `+cut+`
			ON CONFLICT (owner_id) DO UPDATE
			SET pruned_through = GREATEST(event_horizons.pruned_through, excluded.pruned_through)`, args...); err != nil {
			return dbErr("prune events", err)
		}
		tag, err := tx.Exec(ctx, `DELETE FROM events e USING event_horizons h
			WHERE h.owner_id = e.owner_id AND e.id <= h.pruned_through`)
		if err != nil {
			return dbErr("prune events", err)
		}
		n = tag.RowsAffected()
		return nil
	})
	return n, err
}
