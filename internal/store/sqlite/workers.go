package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type workerStore struct{ s *Store }

const workerCols = `id, hostname, backend, status, capacity, metadata, started_at, last_heartbeat, drained`

func scanWorker(row scanner) (*model.Worker, error) {
	var w model.Worker
	var meta sql.NullString
	var started, beat string
	if err := row.Scan(&w.ID, &w.Hostname, &w.Backend, &w.Status, &w.Capacity, &meta, &started, &beat, &w.Drained); err != nil {
		return nil, err
	}
	var err error
	if w.Metadata, err = prep.UnmarshalMap(docBytes(meta)); err != nil {
		return nil, fmt.Errorf("worker %s: metadata: %w", w.ID, err)
	}
	if w.StartedAt, err = parseTS(started); err != nil {
		return nil, err
	}
	if w.LastHeartbeat, err = parseTS(beat); err != nil {
		return nil, err
	}
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
	_, err = ws.s.exec(ctx, `INSERT INTO workers (`+workerCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)
		ON CONFLICT (id) DO UPDATE SET hostname = excluded.hostname, backend = excluded.backend,
		status = excluded.status, capacity = excluded.capacity, metadata = excluded.metadata,
		started_at = excluded.started_at, last_heartbeat = excluded.last_heartbeat`,
		w.ID, w.Hostname, w.Backend, w.Status, w.Capacity, nullText(meta), ts(w.StartedAt), ts(w.LastHeartbeat))
	if err != nil {
		return dbErr("upsert worker", err)
	}
	return nil
}

func (ws workerStore) Heartbeat(ctx context.Context, id string, at time.Time) error {
	if !prep.TextOK(id) {
		return prep.NotFound("worker", id)
	}
	return exec1(ctx, ws.s, "worker heartbeat", "worker", id,
		"UPDATE workers SET last_heartbeat = ? WHERE id = ?", ts(at), id)
}

func (ws workerStore) Get(ctx context.Context, id string) (*model.Worker, error) {
	if !prep.TextOK(id) {
		return nil, prep.NotFound("worker", id)
	}
	w, err := scanWorker(ws.s.row(ctx, "SELECT "+workerCols+" FROM workers WHERE id = ?", id))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("worker", id)
	}
	if err != nil {
		return nil, dbErr("get worker", err)
	}
	return w, nil
}

// List returns every worker, ordered by id. Workers are few (one per host), so there is no paging.
func (ws workerStore) List(ctx context.Context) ([]*model.Worker, error) {
	return collect(ctx, ws.s.r, "list workers", "SELECT "+workerCols+" FROM workers ORDER BY id", nil, scanWorker)
}

func (ws workerStore) SetStatus(ctx context.Context, id, status string) error {
	if status == "" || !prep.TextOK(status) {
		return prep.Invalid("worker status %q is empty or not text", status)
	}
	if !prep.TextOK(id) {
		return prep.NotFound("worker", id)
	}
	return exec1(ctx, ws.s, "set worker status", "worker", id,
		"UPDATE workers SET status = ? WHERE id = ?", status, id)
}

// exec1 runs a write that must touch one row; touching none means the row does not exist.
func exec1(ctx context.Context, s *Store, op, kind, id, query string, args ...any) error {
	res, err := s.exec(ctx, query, args...)
	if err != nil {
		return dbErr(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return dbErr(op, err)
	}
	if n == 0 {
		return prep.NotFound(kind, id)
	}
	return nil
}

type apiKeyStore struct{ s *Store }

const apiKeyCols = `id, owner_id, name, prefix, hash, role, scopes, created_at, expires_at, last_used_at, revoked_at`

func scanAPIKey(row scanner) (*model.APIKey, error) {
	var k model.APIKey
	var created, scopes string
	var expires, used, revoked sql.NullString
	if err := row.Scan(&k.ID, &k.OwnerID, &k.Name, &k.Prefix, &k.Hash, &k.Role, &scopes, &created, &expires, &used,
		&revoked); err != nil {
		return nil, err
	}
	k.Scopes = prep.SplitScopes(scopes)
	var err error
	if k.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if k.ExpiresAt, err = parseTSPtr(expires); err != nil {
		return nil, err
	}
	if k.LastUsedAt, err = parseTSPtr(used); err != nil {
		return nil, err
	}
	if k.RevokedAt, err = parseTSPtr(revoked); err != nil {
		return nil, err
	}
	return &k, nil
}

func (as apiKeyStore) Create(ctx context.Context, k *model.APIKey) error {
	if err := prep.NewAPIKey(k, prep.Now()); err != nil {
		return err
	}
	_, err := as.s.exec(ctx, `INSERT INTO api_keys (admin, `+apiKeyCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		k.IsAdmin(), k.ID, k.OwnerID, k.Name, k.Prefix, k.Hash, k.Role, prep.JoinScopes(k.Scopes), ts(k.CreatedAt),
		tsPtr(k.ExpiresAt), tsPtr(k.LastUsedAt), tsPtr(k.RevokedAt))
	if _, detail, ok := uniqueViolation(err); ok {
		what := "id"
		switch {
		case strings.Contains(detail, "api_keys.hash"):
			what = "hash"
		case strings.Contains(detail, "api_keys.prefix"):
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
	err := sql.ErrNoRows
	if prep.TextOK(hash) {
		k, err = scanAPIKey(as.s.row(ctx,
			"SELECT "+apiKeyCols+" FROM api_keys WHERE hash = ? AND revoked_at IS NULL", hash))
	}
	if errors.Is(err, sql.ErrNoRows) {
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
	k, err := scanAPIKey(as.s.row(ctx, "SELECT "+apiKeyCols+" FROM api_keys WHERE id = ?", cid))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("api key", id)
	}
	if err != nil {
		return nil, dbErr("get api key", err)
	}
	return k, nil
}

// List returns every key, revoked ones included, newest first.
func (as apiKeyStore) List(ctx context.Context) ([]*model.APIKey, error) {
	return collect(ctx, as.s.r, "list api keys",
		"SELECT "+apiKeyCols+" FROM api_keys ORDER BY created_at DESC, id DESC", nil, scanAPIKey)
}

// Revoke marks the key revoked at at. Revoking again keeps the first time.
func (as apiKeyStore) Revoke(ctx context.Context, id string, at time.Time) error {
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("api key", id)
	}
	return exec1(ctx, as.s, "revoke api key", "api key", id,
		"UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?", ts(at), cid)
}

// TouchLastUsed records a use. Concurrent requests may report out of order, so the time only moves forward
// (the fixed-width time text compares in time order, so max() on it is the later time).
func (as apiKeyStore) TouchLastUsed(ctx context.Context, id string, at time.Time) error {
	cid, ok := prep.UUID(id)
	if !ok {
		return prep.NotFound("api key", id)
	}
	t := ts(at)
	return exec1(ctx, as.s, "touch api key", "api key", id,
		"UPDATE api_keys SET last_used_at = max(COALESCE(last_used_at, ?), ?) WHERE id = ?", t, t, cid)
}

func (as apiKeyStore) Count(ctx context.Context) (int, error) {
	var n int
	if err := as.s.row(ctx, "SELECT count(*) FROM api_keys").Scan(&n); err != nil {
		return 0, dbErr("count api keys", err)
	}
	return n, nil
}

func (ws workerStore) SetDrained(ctx context.Context, id string, drained bool) error {
	if !prep.TextOK(id) {
		return prep.NotFound("worker", id)
	}
	return exec1(ctx, ws.s, "drain worker", "worker", id, "UPDATE workers SET drained = ? WHERE id = ?", drained, id)
}
