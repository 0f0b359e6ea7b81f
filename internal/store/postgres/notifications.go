package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

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
	_, err := ns.s.pool.Exec(ctx, "INSERT INTO notification_rules (id, owner_id, events, integration, destination, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
		r.ID, r.OwnerID, r.Events, r.Integration, r.Destination, r.CreatedAt)
	if err != nil {
		return dbErr("create notification rule", err)
	}
	return nil
}

func (ns notificationStore) ListRules(ctx context.Context, ownerID string) ([]*store.NotificationRule, error) {
	rows, err := ns.s.pool.Query(ctx, "SELECT id, owner_id, events, integration, destination, created_at FROM notification_rules"+
		" WHERE $1 = '' OR owner_id = $1 ORDER BY created_at, id", ownerID)
	if err != nil {
		return nil, dbErr("list notification rules", err)
	}
	defer rows.Close()
	var out []*store.NotificationRule
	for rows.Next() {
		var r store.NotificationRule
		if err := rows.Scan(&r.ID, &r.OwnerID, &r.Events, &r.Integration, &r.Destination, &r.CreatedAt); err != nil {
			return nil, dbErr("list notification rules", err)
		}
		r.CreatedAt = prep.Time(r.CreatedAt)
		out = append(out, &r)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list notification rules", err)
	}
	return out, nil
}

func (ns notificationStore) DeleteRule(ctx context.Context, ownerID, id string) error {
	if _, ok := prep.UUID(id); !ok {
		return model.NotFound("notification rule", id)
	}
	tag, err := ns.s.pool.Exec(ctx, "DELETE FROM notification_rules WHERE owner_id = $1 AND id = $2", ownerID, id)
	if err != nil {
		return dbErr("delete notification rule", err)
	}
	if tag.RowsAffected() == 0 {
		return model.NotFound("notification rule", id)
	}
	return nil
}

func (ns notificationStore) Enqueue(ctx context.Context, entries []*store.OutboxEntry) (int, error) {
	n := 0
	err := pgx.BeginFunc(ctx, ns.s.pool, func(tx pgx.Tx) error {
		n = 0
		for _, e := range entries {
			if e.CreatedAt.IsZero() {
				e.CreatedAt = time.Now()
			}
			e.CreatedAt = prep.Time(e.CreatedAt)
			var seq int64
			err := tx.QueryRow(ctx, "INSERT INTO notification_outbox (key, owner_id, rule_id, integration, destination, event, payload, status, next_attempt_at, created_at)"+
				" VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8, $8) ON CONFLICT (key) DO NOTHING RETURNING seq",
				e.Key, e.OwnerID, e.RuleID, e.Integration, e.Destination, e.Event, e.Payload, e.CreatedAt).Scan(&seq)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				return dbErr("enqueue notification", err)
			}
			e.Seq, e.Status, e.NextAttemptAt = seq, store.OutboxPending, e.CreatedAt
			n++
		}
		return nil
	})
	return n, err
}

const outboxCols = "seq, key, owner_id, rule_id, integration, destination, event, payload, status, attempts, next_attempt_at, lease_until, last_error, created_at, sent_at"

func queryOutbox(ctx context.Context, q querier, op, query string, args ...any) ([]*store.OutboxEntry, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, dbErr(op, err)
	}
	defer rows.Close()
	var out []*store.OutboxEntry
	for rows.Next() {
		var e store.OutboxEntry
		if err := rows.Scan(&e.Seq, &e.Key, &e.OwnerID, &e.RuleID, &e.Integration, &e.Destination, &e.Event, &e.Payload, &e.Status,
			&e.Attempts, &e.NextAttemptAt, &e.LeaseUntil, &e.LastError, &e.CreatedAt, &e.SentAt); err != nil {
			return nil, dbErr(op, err)
		}
		e.NextAttemptAt, e.CreatedAt = prep.Time(e.NextAttemptAt), prep.Time(e.CreatedAt)
		e.LeaseUntil, e.SentAt = prep.TimePtr(e.LeaseUntil), prep.TimePtr(e.SentAt)
		out = append(out, &e)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(op, err)
	}
	return out, nil
}

// Claim locks the due heads with FOR UPDATE SKIP LOCKED: a concurrent claimer skips them instead of waiting, and
// finds the next rows of those destinations held back by the NOT EXISTS (their head is still pending).
func (ns notificationStore) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]*store.OutboxEntry, error) {
	return queryOutbox(ctx, ns.s.pool, "claim notifications",
		"UPDATE notification_outbox SET lease_until = $1 WHERE seq IN ("+
			"SELECT h.seq FROM notification_outbox h WHERE h.status = 'pending' AND h.next_attempt_at <= $2"+
			" AND (h.lease_until IS NULL OR h.lease_until <= $2)"+
			" AND NOT EXISTS (SELECT 1 FROM notification_outbox e WHERE e.integration = h.integration AND e.destination = h.destination"+
			" AND e.status = 'pending' AND e.seq < h.seq) ORDER BY h.seq LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING "+outboxCols,
		prep.Time(now.Add(lease)), prep.Time(now), limit)
}

func (ns notificationStore) MarkSent(ctx context.Context, seq int64, at time.Time) error {
	if _, err := ns.s.pool.Exec(ctx, "UPDATE notification_outbox SET status = 'sent', sent_at = $1, lease_until = NULL, attempts = attempts + 1 WHERE seq = $2", prep.Time(at), seq); err != nil {
		return dbErr("mark notification sent", err)
	}
	return nil
}

func (ns notificationStore) MarkFailed(ctx context.Context, seq int64, errText string, next time.Time, dead bool) error {
	status := store.OutboxPending
	if dead {
		status = store.OutboxDead
	}
	if _, err := ns.s.pool.Exec(ctx, "UPDATE notification_outbox SET status = $1, last_error = $2, next_attempt_at = $3, lease_until = NULL, attempts = attempts + 1 WHERE seq = $4",
		status, store.CleanErrorText(errText), prep.Time(next), seq); err != nil {
		return dbErr("mark notification failed", err)
	}
	return nil
}

func (ns notificationStore) ListOutbox(ctx context.Context, ownerID, status string, limit int) ([]*store.OutboxEntry, error) {
	return queryOutbox(ctx, ns.s.pool, "list notifications", "SELECT "+outboxCols+" FROM notification_outbox WHERE owner_id = $1 AND ($2 = '' OR status = $2) ORDER BY seq LIMIT $3",
		ownerID, status, limit)
}

func (ns notificationStore) Retry(ctx context.Context, ownerID string, seq int64, now time.Time) error {
	tag, err := ns.s.pool.Exec(ctx, "UPDATE notification_outbox SET status = 'pending', attempts = 0, next_attempt_at = $1 WHERE owner_id = $2 AND seq = $3 AND status = 'dead'",
		prep.Time(now), ownerID, seq)
	if err != nil {
		return dbErr("retry notification", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("dead notification %d: %w", seq, model.ErrNotFound)
	}
	return nil
}
