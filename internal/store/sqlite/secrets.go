package sqlite

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type secretStore struct{ s *Store }

// Secrets gives access to the owners' sealed secrets.
func (s *Store) Secrets() store.SecretStore { return secretStore{s} }

const secretCols = `owner_id, name, key_id, nonce, ciphertext, created_at, updated_at, last_used_at`

func scanSecret(row scanner) (*store.SealedSecret, error) {
	var x store.SealedSecret
	var created, updated string
	var used sql.NullString
	if err := row.Scan(&x.OwnerID, &x.Name, &x.KeyID, &x.Nonce, &x.Ciphertext, &created, &updated, &used); err != nil {
		return nil, err
	}
	var err error
	if x.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if x.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	if x.LastUsedAt, err = parseTSPtr(used); err != nil {
		return nil, err
	}
	return &x, nil
}

func secretNotFound(name string) error { return model.NotFound("secret", name) }

// Put is one write transaction (BEGIN IMMEDIATE), so the read of the existing row and the write see the same row.
func (ss secretStore) Put(ctx context.Context, x *store.SealedSecret) (bool, error) {
	if err := store.CheckSealedSecret(x); err != nil {
		return false, err
	}
	now := prep.Now()
	if x.UpdatedAt.IsZero() {
		x.UpdatedAt = now
	}
	x.UpdatedAt = prep.Time(x.UpdatedAt)
	tx, err := ss.s.w.BeginTx(ctx, nil)
	if err != nil {
		return false, dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }()
	cur, err := scanSecret(tx.QueryRowContext(ctx, "SELECT "+secretCols+" FROM secrets WHERE owner_id = ? AND name = ?",
		x.OwnerID, x.Name))
	created := errors.Is(err, sql.ErrNoRows)
	switch {
	case created:
		if x.CreatedAt.IsZero() {
			x.CreatedAt = x.UpdatedAt
		}
		x.CreatedAt, x.LastUsedAt = prep.Time(x.CreatedAt), nil
		_, err = tx.ExecContext(ctx, "INSERT INTO secrets ("+secretCols+") VALUES (?, ?, ?, ?, ?, ?, ?, NULL)",
			x.OwnerID, x.Name, x.KeyID, x.Nonce, x.Ciphertext, ts(x.CreatedAt), ts(x.UpdatedAt))
	case err != nil:
		return false, dbErr("put secret", err)
	default:
		x.CreatedAt, x.LastUsedAt = cur.CreatedAt, cur.LastUsedAt
		_, err = tx.ExecContext(ctx, "UPDATE secrets SET key_id = ?, nonce = ?, ciphertext = ?, updated_at = ?"+
			" WHERE owner_id = ? AND name = ?", x.KeyID, x.Nonce, x.Ciphertext, ts(x.UpdatedAt), x.OwnerID, x.Name)
	}
	if err != nil {
		return false, dbErr("put secret", err)
	}
	if err := tx.Commit(); err != nil {
		return false, dbErr("commit", err)
	}
	return created, nil
}

func (ss secretStore) Get(ctx context.Context, ownerID, name string) (*store.SealedSecret, error) {
	if !prep.TextOK(ownerID, name) {
		return nil, secretNotFound(name)
	}
	x, err := scanSecret(ss.s.row(ctx, "SELECT "+secretCols+" FROM secrets WHERE owner_id = ? AND name = ?", ownerID, name))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, secretNotFound(name)
	}
	if err != nil {
		return nil, dbErr("get secret", err)
	}
	return x, nil
}

func (ss secretStore) List(ctx context.Context, ownerID string) ([]*store.SealedSecret, error) {
	if !prep.TextOK(ownerID) {
		return []*store.SealedSecret{}, nil
	}
	return collect(ctx, ss.s.r, "list secrets", "SELECT "+secretCols+" FROM secrets WHERE owner_id = ? ORDER BY name",
		[]any{ownerID}, scanSecret)
}

func (ss secretStore) Delete(ctx context.Context, ownerID, name string) error {
	if !prep.TextOK(ownerID, name) {
		return secretNotFound(name)
	}
	res, err := ss.s.exec(ctx, "DELETE FROM secrets WHERE owner_id = ? AND name = ?", ownerID, name)
	if err != nil {
		return dbErr("delete secret", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return dbErr("delete secret", err)
	} else if n == 0 {
		return secretNotFound(name)
	}
	return nil
}

func (ss secretStore) TouchLastUsed(ctx context.Context, ownerID, name string, at time.Time) error {
	if !prep.TextOK(ownerID, name) {
		return secretNotFound(name)
	}
	res, err := ss.s.exec(ctx, "UPDATE secrets SET last_used_at = max(coalesce(last_used_at, ''), ?)"+
		" WHERE owner_id = ? AND name = ?", ts(at), ownerID, name)
	if err != nil {
		return dbErr("touch secret", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return dbErr("touch secret", err)
	} else if n == 0 {
		return secretNotFound(name)
	}
	return nil
}

func (ss secretStore) NotSealedWith(ctx context.Context, keyID string, limit int) ([]*store.SealedSecret, error) {
	if limit <= 0 {
		limit = prep.DefaultLimit
	}
	return collect(ctx, ss.s.r, "list secrets to reseal", "SELECT "+secretCols+
		" FROM secrets WHERE key_id <> ? ORDER BY owner_id, name LIMIT ?", []any{keyID, limit}, scanSecret)
}

func (ss secretStore) Reseal(ctx context.Context, x *store.SealedSecret, oldNonce []byte) error {
	if err := store.CheckSealedSecret(x); err != nil {
		return err
	}
	if bytes.Equal(oldNonce, x.Nonce) {
		return prep.Invalid("reseal of secret %q with its old nonce", x.Name)
	}
	res, err := ss.s.exec(ctx, "UPDATE secrets SET key_id = ?, nonce = ?, ciphertext = ?"+
		" WHERE owner_id = ? AND name = ? AND nonce = ?", x.KeyID, x.Nonce, x.Ciphertext, x.OwnerID, x.Name, oldNonce)
	if err != nil {
		return dbErr("reseal secret", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return dbErr("reseal secret", err)
	} else if n == 0 {
		return fmt.Errorf("secret %q was changed or deleted meanwhile: %w", x.Name, model.ErrConflict)
	}
	return nil
}

func (ss secretStore) KeyIDs(ctx context.Context) (map[string]int, error) {
	rows, err := ss.s.r.QueryContext(ctx, "SELECT key_id, count(*) FROM secrets GROUP BY key_id")
	if err != nil {
		return nil, dbErr("count secrets", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int
		if err := rows.Scan(&id, &n); err != nil {
			return nil, dbErr("count secrets", err)
		}
		out[id] = n
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("count secrets", err)
	}
	return out, nil
}

func scanCheck(row scanner) (*store.SecretKeyCheck, error) {
	var c store.SecretKeyCheck
	var created string
	if err := row.Scan(&c.KeyID, &c.Nonce, &c.Ciphertext, &created); err != nil {
		return nil, err
	}
	var err error
	if c.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	return &c, nil
}

func (ss secretStore) Checks(ctx context.Context) ([]*store.SecretKeyCheck, error) {
	return collect(ctx, ss.s.r, "list secret key checks",
		"SELECT key_id, nonce, ciphertext, created_at FROM secret_key_checks ORDER BY created_at, key_id", nil, scanCheck)
}

func (ss secretStore) AddCheck(ctx context.Context, c *store.SecretKeyCheck) error {
	if c.KeyID == "" || len(c.Nonce) == 0 || len(c.Ciphertext) == 0 {
		return prep.Invalid("secret key check: empty field")
	}
	if c.CreatedAt.IsZero() {
		c.CreatedAt = prep.Now()
	}
	c.CreatedAt = prep.Time(c.CreatedAt)
	if _, err := ss.s.exec(ctx, "INSERT INTO secret_key_checks (key_id, nonce, ciphertext, created_at)"+
		" VALUES (?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING", c.KeyID, c.Nonce, c.Ciphertext, ts(c.CreatedAt)); err != nil {
		return dbErr("add secret key check", err)
	}
	return nil
}

func (ss secretStore) DeleteCheck(ctx context.Context, keyID string) error {
	if _, err := ss.s.exec(ctx, "DELETE FROM secret_key_checks WHERE key_id = ?", keyID); err != nil {
		return dbErr("delete secret key check", err)
	}
	return nil
}
