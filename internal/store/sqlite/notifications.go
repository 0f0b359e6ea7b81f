package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type notificationStore struct{ s *Store }

// Notifications gives access to notification rules and the outbox.
func (s *Store) Notifications() store.NotificationStore { return notificationStore{s} }

func (ns notificationStore) CreateRule(ctx context.Context, r *store.NotificationRule) error {
	if err := store.CheckNotificationRule(r); err != nil {
		return err
	}
	if r.ID == "" {
		r.ID = uuid.NewString()
	}
	if r.CreatedAt.IsZero() {
		r.CreatedAt = time.Now()
	}
	r.CreatedAt = prep.Time(r.CreatedAt)
	ev, _ := json.Marshal(r.Events)
	_, err := ns.s.w.ExecContext(ctx, "INSERT INTO notification_rules (id, owner_id, events, integration, destination, created_at) VALUES (?, ?, ?, ?, ?, ?)",
		r.ID, r.OwnerID, string(ev), r.Integration, r.Destination, ts(r.CreatedAt))
	return dbErrOr("create notification rule", err)
}

func dbErrOr(op string, err error) error {
	if err == nil {
		return nil
	}
	return dbErr(op, err)
}

func (ns notificationStore) ListRules(ctx context.Context, ownerID string) ([]*store.NotificationRule, error) {
	rows, err := ns.s.r.QueryContext(ctx, "SELECT id, owner_id, events, integration, destination, created_at FROM notification_rules"+
		" WHERE ? = '' OR owner_id = ? ORDER BY created_at, id", ownerID, ownerID)
	if err != nil {
		return nil, dbErr("list notification rules", err)
	}
	defer rows.Close()
	var out []*store.NotificationRule
	for rows.Next() {
		var r store.NotificationRule
		var ev, created string
		if err := rows.Scan(&r.ID, &r.OwnerID, &ev, &r.Integration, &r.Destination, &created); err != nil {
			return nil, dbErr("list notification rules", err)
		}
		if err := json.Unmarshal([]byte(ev), &r.Events); err != nil {
			return nil, fmt.Errorf("notification rule %s: events: %w", r.ID, err)
		}
		if r.CreatedAt, err = parseTS(created); err != nil {
			return nil, err
		}
		out = append(out, &r)
	}
	return out, dbErrOr("list notification rules", rows.Err())
}

func (ns notificationStore) DeleteRule(ctx context.Context, ownerID, id string) error {
	res, err := ns.s.w.ExecContext(ctx, "DELETE FROM notification_rules WHERE owner_id = ? AND id = ?", ownerID, id)
	if err != nil {
		return dbErr("delete notification rule", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return model.NotFound("notification rule", id)
	}
	return nil
}

func (ns notificationStore) Enqueue(ctx context.Context, entries []*store.OutboxEntry) (int, error) {
	tx, err := ns.s.w.BeginTx(ctx, nil)
	if err != nil {
		return 0, dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }()
	n := 0
	for _, e := range entries {
		if e.CreatedAt.IsZero() {
			e.CreatedAt = time.Now()
		}
		e.CreatedAt = prep.Time(e.CreatedAt)
		var seq int64
		err := tx.QueryRowContext(ctx, "INSERT INTO notification_outbox (key, owner_id, rule_id, integration, destination, event, payload, status, next_attempt_at, created_at)"+
			" VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (key) DO NOTHING RETURNING seq",
			e.Key, e.OwnerID, e.RuleID, e.Integration, e.Destination, e.Event, e.Payload, ts(e.CreatedAt), ts(e.CreatedAt)).Scan(&seq)
		if err == sql.ErrNoRows {
			continue
		}
		if err != nil {
			return 0, dbErr("enqueue notification", err)
		}
		e.Seq, e.Status, e.NextAttemptAt = seq, store.OutboxPending, e.CreatedAt
		n++
	}
	if err := tx.Commit(); err != nil {
		return 0, dbErr("commit", err)
	}
	return n, nil
}

const outboxCols = "seq, key, owner_id, rule_id, integration, destination, event, payload, status, attempts, next_attempt_at, lease_until, last_error, created_at, sent_at"

func scanOutbox(row scanner) (*store.OutboxEntry, error) {
	var e store.OutboxEntry
	var next, created string
	var lease, sent sql.NullString
	if err := row.Scan(&e.Seq, &e.Key, &e.OwnerID, &e.RuleID, &e.Integration, &e.Destination, &e.Event, &e.Payload, &e.Status,
		&e.Attempts, &next, &lease, &e.LastError, &created, &sent); err != nil {
		return nil, err
	}
	var err error
	if e.NextAttemptAt, err = parseTS(next); err != nil {
		return nil, err
	}
	if e.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if e.LeaseUntil, err = parseTSPtr(lease); err != nil {
		return nil, err
	}
	if e.SentAt, err = parseTSPtr(sent); err != nil {
		return nil, err
	}
	return &e, nil
}

func queryOutbox(ctx context.Context, q interface {
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, op, query string, args ...any) ([]*store.OutboxEntry, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, dbErr(op, err)
	}
	defer rows.Close()
	var out []*store.OutboxEntry
	for rows.Next() {
		e, err := scanOutbox(rows)
		if err != nil {
			return nil, dbErr(op, err)
		}
		out = append(out, e)
	}
	return out, dbErrOr(op, rows.Err())
}

// Claim is one UPDATE on the single writer: no other claimer runs between its read and its write.
func (ns notificationStore) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]*store.OutboxEntry, error) {
	return queryOutbox(ctx, ns.s.w, "claim notifications",
		"UPDATE notification_outbox SET lease_until = ? WHERE seq IN ("+
			"SELECT h.seq FROM notification_outbox h WHERE h.status = 'pending' AND h.next_attempt_at <= ?"+
			" AND (h.lease_until IS NULL OR h.lease_until <= ?)"+
			" AND NOT EXISTS (SELECT 1 FROM notification_outbox e WHERE e.integration = h.integration AND e.destination = h.destination"+
			" AND e.status = 'pending' AND e.seq < h.seq) ORDER BY h.seq LIMIT ?) RETURNING "+outboxCols,
		ts(now.Add(lease)), ts(now), ts(now), limit)
}

func (ns notificationStore) MarkSent(ctx context.Context, seq int64, at time.Time) error {
	_, err := ns.s.w.ExecContext(ctx, "UPDATE notification_outbox SET status = 'sent', sent_at = ?, lease_until = NULL, attempts = attempts + 1 WHERE seq = ?", ts(at), seq)
	return dbErrOr("mark notification sent", err)
}

func (ns notificationStore) MarkFailed(ctx context.Context, seq int64, errText string, next time.Time, dead bool) error {
	status := store.OutboxPending
	if dead {
		status = store.OutboxDead
	}
	_, err := ns.s.w.ExecContext(ctx, "UPDATE notification_outbox SET status = ?, last_error = ?, next_attempt_at = ?, lease_until = NULL, attempts = attempts + 1 WHERE seq = ?",
		status, store.CleanErrorText(errText), ts(next), seq)
	return dbErrOr("mark notification failed", err)
}

func (ns notificationStore) ListOutbox(ctx context.Context, ownerID, status string, limit int) ([]*store.OutboxEntry, error) {
	return queryOutbox(ctx, ns.s.r, "list notifications", "SELECT "+outboxCols+" FROM notification_outbox WHERE owner_id = ? AND (? = '' OR status = ?) ORDER BY seq LIMIT ?",
		ownerID, status, status, limit)
}

func (ns notificationStore) Retry(ctx context.Context, ownerID string, seq int64, now time.Time) error {
	res, err := ns.s.w.ExecContext(ctx, "UPDATE notification_outbox SET status = 'pending', attempts = 0, next_attempt_at = ? WHERE owner_id = ? AND seq = ? AND status = 'dead'",
		ts(now), ownerID, seq)
	if err != nil {
		return dbErr("retry notification", err)
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return fmt.Errorf("dead notification %d: %w", seq, model.ErrNotFound)
	}
	return nil
}
