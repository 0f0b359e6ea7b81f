package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type idempotencyStore struct{ s *Store }

// Idempotency gives access to the idempotency keys of the API.
func (s *Store) Idempotency() store.IdempotencyStore { return idempotencyStore{s} }

const idemCols = `owner_id, key, fingerprint, created_at, expires_at, done_at, status, header, body`

func scanIdem(row pgx.Row) (*store.IdempotencyRecord, error) {
	var r store.IdempotencyRecord
	var done *time.Time
	var status *int32
	var header, body []byte
	if err := row.Scan(&r.OwnerID, &r.Key, &r.Fingerprint, &r.CreatedAt, &r.ExpiresAt, &done, &status, &header, &body); err != nil {
		return nil, err
	}
	r.CreatedAt, r.ExpiresAt = prep.Time(r.CreatedAt), prep.Time(r.ExpiresAt)
	r.Done = done != nil
	if status != nil {
		r.Status = int(*status)
	}
	if len(header) > 0 {
		if err := json.Unmarshal(header, &r.Header); err != nil {
			return nil, fmt.Errorf("idempotency key %q: header: %w", r.Key, err)
		}
	}
	if len(body) > 0 {
		r.Body = body
	}
	return &r, nil
}

// Begin inserts with ON CONFLICT DO NOTHING first: under READ COMMITTED a concurrent Begin of the same key waits for
// the other's commit there and then inserts nothing. Only then is the existing row read, locked (FOR UPDATE), and
// replaced if it has expired or was abandoned.
func (is idempotencyStore) Begin(ctx context.Context, rec *store.IdempotencyRecord, staleBefore time.Time) (*store.IdempotencyRecord, error) {
	if err := store.CheckIdempotencyRecord(rec); err != nil {
		return nil, err
	}
	rec.CreatedAt, rec.ExpiresAt = prep.Time(rec.CreatedAt), prep.Time(rec.ExpiresAt)
	rec.Done, rec.Status, rec.Header, rec.Body = false, 0, nil, nil
	var out *store.IdempotencyRecord
	err := is.s.update(ctx, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `INSERT INTO idempotency_keys (owner_id, key, fingerprint, created_at, expires_at)
			VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner_id, key) DO NOTHING`,
			rec.OwnerID, rec.Key, rec.Fingerprint, rec.CreatedAt, rec.ExpiresAt)
		if err != nil {
			return dbErr("begin idempotency key", err)
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
		cur, err := scanIdem(tx.QueryRow(ctx, "SELECT "+idemCols+
			" FROM idempotency_keys WHERE owner_id = $1 AND key = $2 FOR UPDATE", rec.OwnerID, rec.Key))
		if err != nil {
			// ErrNoRows too: the row was purged between the insert and the read; the caller may retry.
			return dbErr("begin idempotency key", err)
		}
		if cur.ExpiresAt.After(rec.CreatedAt) && (cur.Done || !cur.CreatedAt.Before(staleBefore)) {
			out = cur
			return nil
		}
		_, err = tx.Exec(ctx, `UPDATE idempotency_keys SET fingerprint = $3, created_at = $4, expires_at = $5,
			done_at = NULL, status = NULL, header = NULL, body = NULL WHERE owner_id = $1 AND key = $2`,
			rec.OwnerID, rec.Key, rec.Fingerprint, rec.CreatedAt, rec.ExpiresAt)
		if err != nil {
			return dbErr("begin idempotency key", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (is idempotencyStore) Complete(ctx context.Context, rec *store.IdempotencyRecord) error {
	var header []byte
	if len(rec.Header) > 0 {
		var err error
		if header, err = json.Marshal(rec.Header); err != nil {
			return prep.Invalid("idempotency key header: %v", err)
		}
	}
	if !prep.TextOK(rec.OwnerID, rec.Key) {
		return prep.NotFound("idempotency key", rec.Key)
	}
	body := rec.Body
	if body == nil {
		body = []byte{}
	}
	tag, err := is.s.pool.Exec(ctx, `UPDATE idempotency_keys SET done_at = $3, status = $4, header = $5, body = $6
		WHERE owner_id = $1 AND key = $2`, rec.OwnerID, rec.Key, prep.Now(), rec.Status, nullJSON(header), body)
	if err != nil {
		return dbErr("complete idempotency key", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("idempotency key", rec.Key)
	}
	return nil
}

func (is idempotencyStore) Release(ctx context.Context, ownerID, key string) error {
	if !prep.TextOK(ownerID, key) {
		return nil
	}
	if _, err := is.s.pool.Exec(ctx, "DELETE FROM idempotency_keys WHERE owner_id = $1 AND key = $2 AND done_at IS NULL",
		ownerID, key); err != nil {
		return dbErr("release idempotency key", err)
	}
	return nil
}

func (is idempotencyStore) Purge(ctx context.Context, before time.Time) (int, error) {
	tag, err := is.s.pool.Exec(ctx, "DELETE FROM idempotency_keys WHERE expires_at <= $1", prep.Time(before))
	if err != nil {
		return 0, dbErr("purge idempotency keys", err)
	}
	return int(tag.RowsAffected()), nil
}
