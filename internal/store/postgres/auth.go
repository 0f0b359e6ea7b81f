package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type signingKeyStore struct{ s *Store }

// SigningKeys gives access to the JWT signing keys.
func (s *Store) SigningKeys() store.SigningKeyStore { return signingKeyStore{s} }

const signingKeyCols = `id, algorithm, public_key, private_key, seal_key_id, nonce, created_at`

func (ks signingKeyStore) Create(ctx context.Context, k *store.SigningKey) error {
	if k == nil || k.ID == "" || k.Algorithm == "" || len(k.Public) == 0 || len(k.Private) == 0 ||
		!prep.TextOK(k.ID, k.Algorithm, k.SealKeyID) {
		return prep.Invalid("signing key id, algorithm and keys are required")
	}
	if k.CreatedAt.IsZero() {
		k.CreatedAt = prep.Now()
	}
	k.CreatedAt = prep.Time(k.CreatedAt)
	_, err := ks.s.pool.Exec(ctx, "INSERT INTO auth_signing_keys ("+signingKeyCols+") VALUES ($1, $2, $3, $4, $5, $6, $7)",
		k.ID, k.Algorithm, k.Public, k.Private, k.SealKeyID, k.Nonce, k.CreatedAt)
	if _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("signing key %s already exists: %w", k.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create signing key", err)
	}
	return nil
}

func scanSigningKey(row pgx.Row) (*store.SigningKey, error) {
	var k store.SigningKey
	if err := row.Scan(&k.ID, &k.Algorithm, &k.Public, &k.Private, &k.SealKeyID, &k.Nonce, &k.CreatedAt); err != nil {
		return nil, err
	}
	k.CreatedAt = prep.Time(k.CreatedAt)
	return &k, nil
}

func (ks signingKeyStore) List(ctx context.Context) ([]*store.SigningKey, error) {
	rows, err := ks.s.pool.Query(ctx, "SELECT "+signingKeyCols+" FROM auth_signing_keys ORDER BY created_at DESC, id DESC")
	if err != nil {
		return nil, dbErr("list signing keys", err)
	}
	return collectRows(rows, "list signing keys", scanSigningKey)
}

func collectRows[T any](rows pgx.Rows, op string, scan func(pgx.Row) (*T, error)) ([]*T, error) {
	defer rows.Close()
	out := []*T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, dbErr(op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(op, err)
	}
	return out, nil
}

func (ks signingKeyStore) DeleteOlder(ctx context.Context, t time.Time) (int64, error) {
	tag, err := ks.s.pool.Exec(ctx, `DELETE FROM auth_signing_keys WHERE created_at < $1 AND id <> (SELECT id FROM
		auth_signing_keys ORDER BY created_at DESC, id DESC LIMIT 1)`, prep.Time(t))
	if err != nil {
		return 0, dbErr("delete signing keys", err)
	}
	return tag.RowsAffected(), nil
}

type auditStore struct{ s *Store }

// Audit gives access to the audit log.
func (s *Store) Audit() store.AuditStore { return auditStore{s} }

const auditCols = `seq, at, key_id, owner_id, role, method, route, params, status, source, request_id`

func (as auditStore) Append(ctx context.Context, entries []*store.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	return pgx.BeginFunc(ctx, as.s.pool, func(tx pgx.Tx) error {
		for _, e := range entries {
			params, err := auditParams(e)
			if err != nil {
				return err
			}
			if e.At.IsZero() {
				e.At = prep.Now()
			}
			e.At = prep.Time(e.At)
			if err := tx.QueryRow(ctx, `INSERT INTO audit_log (at, key_id, owner_id, role, method, route, params,
				status, source, request_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING seq`, e.At,
				e.KeyID, e.OwnerID, e.Role, e.Method, e.Route, params, e.Status, e.Source, e.RequestID).Scan(&e.Seq); err != nil {
				return dbErr("append audit", err)
			}
		}
		return nil
	})
}

func auditParams(e *store.AuditEntry) (string, error) {
	if !prep.TextOK(e.KeyID, e.OwnerID, e.Role, e.Method, e.Route, e.Source, e.RequestID) || e.Method == "" ||
		e.Route == "" {
		return "", prep.Invalid("audit entry method and route are required, and every field must be text")
	}
	if len(e.Params) == 0 {
		return "", nil
	}
	b, err := json.Marshal(e.Params)
	return string(b), err
}

func scanAudit(row pgx.Row) (*store.AuditEntry, error) {
	var e store.AuditEntry
	var params string
	if err := row.Scan(&e.Seq, &e.At, &e.KeyID, &e.OwnerID, &e.Role, &e.Method, &e.Route, &params, &e.Status, &e.Source,
		&e.RequestID); err != nil {
		return nil, err
	}
	e.At = prep.Time(e.At)
	if params != "" {
		if err := json.Unmarshal([]byte(params), &e.Params); err != nil {
			return nil, err
		}
	}
	return &e, nil
}

func (as auditStore) List(ctx context.Context, f store.AuditFilter) ([]*store.AuditEntry, error) {
	var where []string
	var args []any
	add := func(cond string, v any) {
		args = append(args, v)
		where = append(where, fmt.Sprintf(cond, len(args)))
	}
	if f.KeyID != "" {
		add("key_id = $%d", f.KeyID)
	}
	if f.OwnerID != "" {
		add("owner_id = $%d", f.OwnerID)
	}
	if f.Method != "" {
		add("method = $%d", f.Method)
	}
	if f.Status != 0 {
		add("status = $%d", f.Status)
	}
	if !f.Since.IsZero() {
		add("at >= $%d", prep.Time(f.Since))
	}
	if !f.Until.IsZero() {
		add("at < $%d", prep.Time(f.Until))
	}
	if f.Before > 0 {
		add("seq < $%d", f.Before)
	}
	q := "SELECT " + auditCols + " FROM audit_log"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += fmt.Sprintf(" ORDER BY seq DESC LIMIT %d", store.AuditLimit(f.Limit))
	rows, err := as.s.pool.Query(ctx, q, args...)
	if err != nil {
		return nil, dbErr("list audit", err)
	}
	return collectRows(rows, "list audit", scanAudit)
}

func (as auditStore) Prune(ctx context.Context, before time.Time) (int64, error) {
	tag, err := as.s.pool.Exec(ctx, "DELETE FROM audit_log WHERE at < $1", prep.Time(before))
	if err != nil {
		return 0, dbErr("prune audit", err)
	}
	return tag.RowsAffected(), nil
}
