package sqlite

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type idempotencyStore struct{ s *Store }

// Idempotency gives access to the idempotency keys of the API.
func (s *Store) Idempotency() store.IdempotencyStore { return idempotencyStore{s} }

const idemCols = `owner_id, key, fingerprint, created_at, expires_at, done_at, status, header, body`

func scanIdem(row scanner) (*store.IdempotencyRecord, error) {
	var r store.IdempotencyRecord
	var created, expires string
	var done, header sql.NullString
	var status sql.NullInt64
	var body []byte
	if err := row.Scan(&r.OwnerID, &r.Key, &r.Fingerprint, &created, &expires, &done, &status, &header, &body); err != nil {
		return nil, err
	}
	var err error
	if r.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if r.ExpiresAt, err = parseTS(expires); err != nil {
		return nil, err
	}
	r.Done, r.Status = done.Valid, int(status.Int64)
	if header.Valid && header.String != "" {
		if err := json.Unmarshal([]byte(header.String), &r.Header); err != nil {
			return nil, fmt.Errorf("idempotency key %q: header: %w", r.Key, err)
		}
	}
	if len(body) > 0 {
		r.Body = body
	}
	return &r, nil
}

// Begin runs in one write transaction (BEGIN IMMEDIATE on the single writer), so two Begins of one key, from this
// process or another on the same file, see each other's insert.
func (is idempotencyStore) Begin(ctx context.Context, rec *store.IdempotencyRecord, staleBefore time.Time) (*store.IdempotencyRecord, error) {
	if err := store.CheckIdempotencyRecord(rec); err != nil {
		return nil, err
	}
	rec.CreatedAt, rec.ExpiresAt = prep.Time(rec.CreatedAt), prep.Time(rec.ExpiresAt)
	rec.Done, rec.Status, rec.Header, rec.Body = false, 0, nil, nil
	tx, err := is.s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit

	cur, err := scanIdem(tx.QueryRowContext(ctx, "SELECT "+idemCols+
		" FROM idempotency_keys WHERE owner_id = ? AND key = ?", rec.OwnerID, rec.Key))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, "INSERT INTO idempotency_keys (owner_id, key, fingerprint, created_at, expires_at)"+
			" VALUES (?, ?, ?, ?, ?)", rec.OwnerID, rec.Key, rec.Fingerprint, ts(rec.CreatedAt), ts(rec.ExpiresAt))
	case err != nil:
		return nil, dbErr("begin idempotency key", err)
	case !cur.ExpiresAt.After(rec.CreatedAt) || (!cur.Done && cur.CreatedAt.Before(staleBefore)):
		_, err = tx.ExecContext(ctx, "UPDATE idempotency_keys SET fingerprint = ?, created_at = ?, expires_at = ?,"+
			" done_at = NULL, status = NULL, header = NULL, body = NULL WHERE owner_id = ? AND key = ?",
			rec.Fingerprint, ts(rec.CreatedAt), ts(rec.ExpiresAt), rec.OwnerID, rec.Key)
	default:
		return cur, nil
	}
	if err != nil {
		return nil, dbErr("begin idempotency key", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, dbErr("commit", err)
	}
	return nil, nil
}

func (is idempotencyStore) Complete(ctx context.Context, rec *store.IdempotencyRecord) error {
	header, err := json.Marshal(rec.Header)
	if err != nil {
		return prep.Invalid("idempotency key header: %v", err)
	}
	if len(rec.Header) == 0 {
		header = nil
	}
	if !prep.TextOK(rec.OwnerID, rec.Key) {
		return prep.NotFound("idempotency key", rec.Key)
	}
	return exec1(ctx, is.s, "complete idempotency key", "idempotency key", rec.Key,
		"UPDATE idempotency_keys SET done_at = ?, status = ?, header = ?, body = ? WHERE owner_id = ? AND key = ?",
		ts(prep.Now()), rec.Status, nullText(header), blob(string(rec.Body)), rec.OwnerID, rec.Key)
}

func (is idempotencyStore) Release(ctx context.Context, ownerID, key string) error {
	if !prep.TextOK(ownerID, key) {
		return nil
	}
	if _, err := is.s.exec(ctx, "DELETE FROM idempotency_keys WHERE owner_id = ? AND key = ? AND done_at IS NULL",
		ownerID, key); err != nil {
		return dbErr("release idempotency key", err)
	}
	return nil
}

func (is idempotencyStore) Purge(ctx context.Context, before time.Time) (int, error) {
	res, err := is.s.exec(ctx, "DELETE FROM idempotency_keys WHERE expires_at <= ?", ts(before))
	if err != nil {
		return 0, dbErr("purge idempotency keys", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, dbErr("purge idempotency keys", err)
	}
	return int(n), nil
}
