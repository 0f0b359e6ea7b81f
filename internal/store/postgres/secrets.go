package postgres

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type secretStore struct{ s *Store }

// Secrets gives access to the owners' sealed secrets.
func (s *Store) Secrets() store.SecretStore { return secretStore{s} }

const secretCols = `owner_id, name, key_id, nonce, ciphertext, created_at, updated_at, last_used_at`

func scanSecret(row pgx.Row) (*store.SealedSecret, error) {
	var x store.SealedSecret
	if err := row.Scan(&x.OwnerID, &x.Name, &x.KeyID, &x.Nonce, &x.Ciphertext, &x.CreatedAt, &x.UpdatedAt,
		&x.LastUsedAt); err != nil {
		return nil, err
	}
	x.CreatedAt, x.UpdatedAt, x.LastUsedAt = prep.Time(x.CreatedAt), prep.Time(x.UpdatedAt), prep.TimePtr(x.LastUsedAt)
	return &x, nil
}

func secretNotFound(name string) error { return model.NotFound("secret", name) }

func querySecrets(ctx context.Context, q querier, op, query string, args ...any) ([]*store.SealedSecret, error) {
	rows, err := q.Query(ctx, query, args...)
	if err != nil {
		return nil, dbErr(op, err)
	}
	defer rows.Close()
	out := []*store.SealedSecret{}
	for rows.Next() {
		x, err := scanSecret(rows)
		if err != nil {
			return nil, dbErr(op, err)
		}
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(op, err)
	}
	return out, nil
}

// Put is one statement: INSERT ... ON CONFLICT DO UPDATE keeps created_at and last_used_at of an existing row, and
// (xmax = 0) tells an insert from an update.
func (ss secretStore) Put(ctx context.Context, x *store.SealedSecret) (bool, error) {
	if err := store.CheckSealedSecret(x); err != nil {
		return false, err
	}
	if x.UpdatedAt.IsZero() {
		x.UpdatedAt = prep.Now()
	}
	x.UpdatedAt = prep.Time(x.UpdatedAt)
	created := x.CreatedAt
	if created.IsZero() {
		created = x.UpdatedAt
	}
	var inserted bool
	err := ss.s.pool.QueryRow(ctx, `INSERT INTO secrets (owner_id, name, key_id, nonce, ciphertext, created_at, updated_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)
		ON CONFLICT (owner_id, name) DO UPDATE SET key_id = EXCLUDED.key_id, nonce = EXCLUDED.nonce,
			ciphertext = EXCLUDED.ciphertext, updated_at = EXCLUDED.updated_at
		RETURNING created_at, last_used_at, (xmax = 0)`,
		x.OwnerID, x.Name, x.KeyID, x.Nonce, x.Ciphertext, prep.Time(created), x.UpdatedAt).
		Scan(&x.CreatedAt, &x.LastUsedAt, &inserted)
	if err != nil {
		return false, dbErr("put secret", err)
	}
	x.CreatedAt, x.LastUsedAt = prep.Time(x.CreatedAt), prep.TimePtr(x.LastUsedAt)
	return inserted, nil
}

func (ss secretStore) Get(ctx context.Context, ownerID, name string) (*store.SealedSecret, error) {
	if !prep.TextOK(ownerID, name) {
		return nil, secretNotFound(name)
	}
	x, err := scanSecret(ss.s.pool.QueryRow(ctx, "SELECT "+secretCols+" FROM secrets WHERE owner_id = $1 AND name = $2",
		ownerID, name))
	if errors.Is(err, pgx.ErrNoRows) {
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
	// COLLATE "C": names sort by bytes, as in SQLite, whatever the database's collation.
	return querySecrets(ctx, ss.s.pool, "list secrets",
		"SELECT "+secretCols+` FROM secrets WHERE owner_id = $1 ORDER BY name COLLATE "C"`, ownerID)
}

func (ss secretStore) Delete(ctx context.Context, ownerID, name string) error {
	if !prep.TextOK(ownerID, name) {
		return secretNotFound(name)
	}
	tag, err := ss.s.pool.Exec(ctx, "DELETE FROM secrets WHERE owner_id = $1 AND name = $2", ownerID, name)
	if err != nil {
		return dbErr("delete secret", err)
	}
	if tag.RowsAffected() == 0 {
		return secretNotFound(name)
	}
	return nil
}

func (ss secretStore) TouchLastUsed(ctx context.Context, ownerID, name string, at time.Time) error {
	if !prep.TextOK(ownerID, name) {
		return secretNotFound(name)
	}
	tag, err := ss.s.pool.Exec(ctx, `UPDATE secrets SET last_used_at = GREATEST(last_used_at, $3)
		WHERE owner_id = $1 AND name = $2`, ownerID, name, prep.Time(at))
	if err != nil {
		return dbErr("touch secret", err)
	}
	if tag.RowsAffected() == 0 {
		return secretNotFound(name)
	}
	return nil
}

func (ss secretStore) NotSealedWith(ctx context.Context, keyID string, limit int) ([]*store.SealedSecret, error) {
	if limit <= 0 {
		limit = prep.DefaultLimit
	}
	return querySecrets(ctx, ss.s.pool, "list secrets to reseal", "SELECT "+secretCols+
		` FROM secrets WHERE key_id <> $1 ORDER BY owner_id COLLATE "C", name COLLATE "C" LIMIT $2`, keyID, limit)
}

func (ss secretStore) Reseal(ctx context.Context, x *store.SealedSecret, oldNonce []byte) error {
	if err := store.CheckSealedSecret(x); err != nil {
		return err
	}
	if bytes.Equal(oldNonce, x.Nonce) {
		return prep.Invalid("reseal of secret %q with its old nonce", x.Name)
	}
	tag, err := ss.s.pool.Exec(ctx, `UPDATE secrets SET key_id = $3, nonce = $4, ciphertext = $5
		WHERE owner_id = $1 AND name = $2 AND nonce = $6`, x.OwnerID, x.Name, x.KeyID, x.Nonce, x.Ciphertext, oldNonce)
	if err != nil {
		return dbErr("reseal secret", err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("secret %q was changed or deleted meanwhile: %w", x.Name, model.ErrConflict)
	}
	return nil
}

func (ss secretStore) KeyIDs(ctx context.Context) (map[string]int, error) {
	rows, err := ss.s.pool.Query(ctx, "SELECT key_id, count(*) FROM secrets GROUP BY key_id")
	if err != nil {
		return nil, dbErr("count secrets", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n int64
		if err := rows.Scan(&id, &n); err != nil {
			return nil, dbErr("count secrets", err)
		}
		out[id] = int(n)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("count secrets", err)
	}
	return out, nil
}

func (ss secretStore) Checks(ctx context.Context) ([]*store.SecretKeyCheck, error) {
	rows, err := ss.s.pool.Query(ctx, "SELECT key_id, nonce, ciphertext, created_at FROM secret_key_checks"+
		` ORDER BY created_at, key_id COLLATE "C"`)
	if err != nil {
		return nil, dbErr("list secret key checks", err)
	}
	defer rows.Close()
	out := []*store.SecretKeyCheck{}
	for rows.Next() {
		var c store.SecretKeyCheck
		if err := rows.Scan(&c.KeyID, &c.Nonce, &c.Ciphertext, &c.CreatedAt); err != nil {
			return nil, dbErr("list secret key checks", err)
		}
		c.CreatedAt = prep.Time(c.CreatedAt)
		out = append(out, &c)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list secret key checks", err)
	}
	return out, nil
}

func (ss secretStore) AddCheck(ctx context.Context, c *store.SecretKeyCheck) error {
	if c.KeyID == "" || len(c.Nonce) == 0 || len(c.Ciphertext) == 0 {
		return prep.Invalid("secret key check: empty field")
	}
	if c.CreatedAt.IsZero() {
		c.CreatedAt = prep.Now()
	}
	c.CreatedAt = prep.Time(c.CreatedAt)
	if _, err := ss.s.pool.Exec(ctx, `INSERT INTO secret_key_checks (key_id, nonce, ciphertext, created_at)
		VALUES ($1, $2, $3, $4) ON CONFLICT (key_id) DO NOTHING`, c.KeyID, c.Nonce, c.Ciphertext, c.CreatedAt); err != nil {
		return dbErr("add secret key check", err)
	}
	return nil
}

func (ss secretStore) DeleteCheck(ctx context.Context, keyID string) error {
	if _, err := ss.s.pool.Exec(ctx, "DELETE FROM secret_key_checks WHERE key_id = $1", keyID); err != nil {
		return dbErr("delete secret key check", err)
	}
	return nil
}
