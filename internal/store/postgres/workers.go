package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type workerStore struct{ s *Store }

const workerCols = `id, hostname, backend, status, capacity, metadata, started_at, last_heartbeat, drained`

func scanWorker(row pgx.Row) (*model.Worker, error) {
	var w model.Worker
	var meta []byte
	if err := row.Scan(&w.ID, &w.Hostname, &w.Backend, &w.Status, &w.Capacity, &meta, &w.StartedAt,
		&w.LastHeartbeat, &w.Drained); err != nil {
		return nil, err
	}
	var err error
	if w.Metadata, err = prep.UnmarshalMap(meta); err != nil {
		return nil, fmt.Errorf("worker %s: metadata: %w", w.ID, err)
	}
	w.StartedAt = prep.Time(w.StartedAt)
	w.LastHeartbeat = prep.Time(w.LastHeartbeat)
	return &w, nil
}

func (ws workerStore) Upsert(ctx context.Context, w *model.Worker) error {
	if err := prep.Worker(w, prep.Now()); err != nil {
		return err
	}
	meta, err := prep.MarshalMap(w.Metadata)
	if err != nil {
		return prep.Invalid("worker metadata: %v", err)
	}
	_, err = ws.s.pool.Exec(ctx, `INSERT INTO workers (`+workerCols+`) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false)
		ON CONFLICT (id) DO UPDATE SET hostname = EXCLUDED.hostname, backend = EXCLUDED.backend,
		status = EXCLUDED.status, capacity = EXCLUDED.capacity, metadata = EXCLUDED.metadata,
		started_at = EXCLUDED.started_at, last_heartbeat = EXCLUDED.last_heartbeat`,
		w.ID, w.Hostname, w.Backend, w.Status, w.Capacity, nullJSON(meta), w.StartedAt, w.LastHeartbeat)
	if err != nil {
		return dbErr("upsert worker", err)
	}
	return nil
}

func (ws workerStore) Heartbeat(ctx context.Context, id string, at time.Time) error {
	if !prep.TextOK(id) {
		return prep.NotFound("worker", id)
	}
	tag, err := ws.s.pool.Exec(ctx, "UPDATE workers SET last_heartbeat = $2 WHERE id = $1", id, prep.Time(at))
	if err != nil {
		return dbErr("worker heartbeat", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("worker", id)
	}
	return nil
}

func (ws workerStore) Get(ctx context.Context, id string) (*model.Worker, error) {
	if !prep.TextOK(id) {
		return nil, prep.NotFound("worker", id)
	}
	w, err := scanWorker(ws.s.pool.QueryRow(ctx, "SELECT "+workerCols+" FROM workers WHERE id = $1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("worker", id)
	}
	if err != nil {
		return nil, dbErr("get worker", err)
	}
	return w, nil
}

// List returns every worker, ordered by id. Workers are few (one per host), so there is no paging.
func (ws workerStore) List(ctx context.Context) ([]*model.Worker, error) {
	rows, err := ws.s.pool.Query(ctx, "SELECT "+workerCols+" FROM workers ORDER BY id")
	if err != nil {
		return nil, dbErr("list workers", err)
	}
	defer rows.Close()
	out := []*model.Worker{}
	for rows.Next() {
		w, err := scanWorker(rows)
		if err != nil {
			return nil, dbErr("list workers", err)
		}
		out = append(out, w)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list workers", err)
	}
	return out, nil
}

func (ws workerStore) SetStatus(ctx context.Context, id, status string) error {
	if status == "" || !prep.TextOK(status) {
		return prep.Invalid("worker status %q is empty or not text", status)
	}
	if !prep.TextOK(id) {
		return prep.NotFound("worker", id)
	}
	tag, err := ws.s.pool.Exec(ctx, "UPDATE workers SET status = $2 WHERE id = $1", id, status)
	if err != nil {
		return dbErr("set worker status", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("worker", id)
	}
	return nil
}

type apiKeyStore struct{ s *Store }

const apiKeyCols = `id::text, owner_id, name, prefix, hash, role, scopes, created_at, expires_at, last_used_at,
	revoked_at`

func scanAPIKey(row pgx.Row) (*model.APIKey, error) {
	var k model.APIKey
	var scopes string
	if err := row.Scan(&k.ID, &k.OwnerID, &k.Name, &k.Prefix, &k.Hash, &k.Role, &scopes, &k.CreatedAt, &k.ExpiresAt,
		&k.LastUsedAt, &k.RevokedAt); err != nil {
		return nil, err
	}
	k.Scopes = prep.SplitScopes(scopes)
	k.CreatedAt = prep.Time(k.CreatedAt)
	k.ExpiresAt = prep.TimePtr(k.ExpiresAt)
	k.LastUsedAt = prep.TimePtr(k.LastUsedAt)
	k.RevokedAt = prep.TimePtr(k.RevokedAt)
	return &k, nil
}

func (as apiKeyStore) Create(ctx context.Context, k *model.APIKey) error {
	if err := prep.NewAPIKey(k, prep.Now()); err != nil {
		return err
	}
	_, err := as.s.pool.Exec(ctx, `INSERT INTO api_keys (id, owner_id, name, prefix, hash, admin, role, scopes,
		created_at, expires_at, last_used_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
		k.ID, k.OwnerID, k.Name, k.Prefix, k.Hash, k.IsAdmin(), k.Role, prep.JoinScopes(k.Scopes), k.CreatedAt,
		k.ExpiresAt, k.LastUsedAt, k.RevokedAt)
	if c, ok := uniqueViolation(err); ok {
		what := "id"
		switch c {
		case "api_keys_hash_unique":
			what = "hash"
		case "api_keys_prefix_unique":
			what = "prefix"
		}
		return fmt.Errorf("api key %s (prefix %q): %s already exists: %w", k.ID, k.Prefix, what, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create api key", err)
	}
	return nil
}

func (as apiKeyStore) GetByHash(ctx context.Context, hash string) (*model.APIKey, error) {
	var k *model.APIKey
	err := pgx.ErrNoRows
	if prep.TextOK(hash) {
		k, err = scanAPIKey(as.s.pool.QueryRow(ctx,
			"SELECT "+apiKeyCols+" FROM api_keys WHERE hash = $1 AND revoked_at IS NULL", hash))
	}
	if errors.Is(err, pgx.ErrNoRows) {
		// The hash stands in for a secret: keep it out of the message.
		return nil, fmt.Errorf("active api key with that hash: %w", model.ErrNotFound)
	}
	if err != nil {
		return nil, dbErr("get api key", err)
	}
	return k, nil
}

// Get returns the key with that id, revoked or not, or an error wrapping model.ErrNotFound.
func (as apiKeyStore) Get(ctx context.Context, id string) (*model.APIKey, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("api key", id)
	}
	k, err := scanAPIKey(as.s.pool.QueryRow(ctx, "SELECT "+apiKeyCols+" FROM api_keys WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("api key", id)
	}
	if err != nil {
		return nil, dbErr("get api key", err)
	}
	return k, nil
}

// List returns every key, revoked ones included, newest first.
func (as apiKeyStore) List(ctx context.Context) ([]*model.APIKey, error) {
	rows, err := as.s.pool.Query(ctx, "SELECT "+apiKeyCols+" FROM api_keys ORDER BY created_at DESC, id DESC")
	if err != nil {
		return nil, dbErr("list api keys", err)
	}
	defer rows.Close()
	out := []*model.APIKey{}
	for rows.Next() {
		k, err := scanAPIKey(rows)
		if err != nil {
			return nil, dbErr("list api keys", err)
		}
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list api keys", err)
	}
	return out, nil
}

// Revoke marks the key revoked at at. Revoking again keeps the first time.
func (as apiKeyStore) Revoke(ctx context.Context, id string, at time.Time) error {
	return as.set(ctx, "revoke api key", id,
		"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1", prep.Time(at))
}

// TouchLastUsed records a use. Concurrent requests may report out of order, so the time only moves forward.
func (as apiKeyStore) TouchLastUsed(ctx context.Context, id string, at time.Time) error {
	return as.set(ctx, "touch api key", id,
		"UPDATE api_keys SET last_used_at = GREATEST(COALESCE(last_used_at, $2), $2) WHERE id = $1", prep.Time(at))
}

func (as apiKeyStore) set(ctx context.Context, op, id, sql string, at time.Time) error {
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("api key", id)
	}
	tag, err := as.s.pool.Exec(ctx, sql, cid, at)
	if err != nil {
		return dbErr(op, err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("api key", id)
	}
	return nil
}

func (as apiKeyStore) Count(ctx context.Context) (int, error) {
	var n int
	if err := as.s.pool.QueryRow(ctx, "SELECT count(*) FROM api_keys").Scan(&n); err != nil {
		return 0, dbErr("count api keys", err)
	}
	return n, nil
}

func (ws workerStore) SetDrained(ctx context.Context, id string, drained bool) error {
	if !prep.TextOK(id) {
		return prep.NotFound("worker", id)
	}
	tag, err := ws.s.pool.Exec(ctx, "UPDATE workers SET drained = $2 WHERE id = $1", id, drained)
	if err != nil {
		return dbErr("drain worker", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("worker", id)
	}
	return nil
}
