package sqlite

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

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
	_, err := ks.s.exec(ctx, "INSERT INTO auth_signing_keys ("+signingKeyCols+") VALUES (?, ?, ?, ?, ?, ?, ?)",
		k.ID, k.Algorithm, k.Public, k.Private, k.SealKeyID, k.Nonce, ts(k.CreatedAt))
	if _, _, ok := uniqueViolation(err); ok {
		return fmt.Errorf("signing key %s already exists: %w", k.ID, model.ErrConflict)
	}
	if err != nil {
		return dbErr("create signing key", err)
	}
	return nil
}

func scanSigningKey(row scanner) (*store.SigningKey, error) {
	var k store.SigningKey
	var created string
	if err := row.Scan(&k.ID, &k.Algorithm, &k.Public, &k.Private, &k.SealKeyID, &k.Nonce, &created); err != nil {
		return nil, err
	}
	var err error
	k.CreatedAt, err = parseTS(created)
	return &k, err
}

func (ks signingKeyStore) List(ctx context.Context) ([]*store.SigningKey, error) {
	return collect(ctx, ks.s.r, "list signing keys",
		"SELECT "+signingKeyCols+" FROM auth_signing_keys ORDER BY created_at DESC, id DESC", nil, scanSigningKey)
}

func (ks signingKeyStore) DeleteOlder(ctx context.Context, t time.Time) (int64, error) {
	res, err := ks.s.exec(ctx, `DELETE FROM auth_signing_keys WHERE created_at < ? AND id <> (SELECT id FROM
		auth_signing_keys ORDER BY created_at DESC, id DESC LIMIT 1)`, ts(t))
	if err != nil {
		return 0, dbErr("delete signing keys", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, dbErr("delete signing keys", err)
	}
	return n, nil
}

type auditStore struct{ s *Store }

// Audit gives access to the audit log.
func (s *Store) Audit() store.AuditStore { return auditStore{s} }

const auditCols = `seq, at, key_id, owner_id, role, method, route, params, status, source, request_id`

func (as auditStore) Append(ctx context.Context, entries []*store.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	tx, err := as.s.w.BeginTx(ctx, nil)
	if err != nil {
		return dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }()
	for _, e := range entries {
		params, err := auditParams(e)
		if err != nil {
			return err
		}
		if e.At.IsZero() {
			e.At = prep.Now()
		}
		e.At = prep.Time(e.At)
		if err := tx.QueryRowContext(ctx, `INSERT INTO audit_log (at, key_id, owner_id, role, method, route, params,
			status, source, request_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING seq`, ts(e.At), e.KeyID,
			e.OwnerID, e.Role, e.Method, e.Route, params, e.Status, e.Source, e.RequestID).Scan(&e.Seq); err != nil {
			return dbErr("append audit", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return dbErr("append audit", err)
	}
	return nil
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

func scanAudit(row scanner) (*store.AuditEntry, error) {
	var e store.AuditEntry
	var at, params string
	if err := row.Scan(&e.Seq, &at, &e.KeyID, &e.OwnerID, &e.Role, &e.Method, &e.Route, &params, &e.Status, &e.Source,
		&e.RequestID); err != nil {
		return nil, err
	}
	var err error
	if e.At, err = parseTS(at); err != nil {
		return nil, err
	}
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
	add := func(cond string, v any) { where = append(where, cond); args = append(args, v) }
	if f.KeyID != "" {
		add("key_id = ?", f.KeyID)
	}
	if f.OwnerID != "" {
		add("owner_id = ?", f.OwnerID)
	}
	if f.Method != "" {
		add("method = ?", f.Method)
	}
	if f.Status != 0 {
		add("status = ?", f.Status)
	}
	if !f.Since.IsZero() {
		add("at >= ?", ts(f.Since))
	}
	if !f.Until.IsZero() {
		add("at < ?", ts(f.Until))
	}
	if f.Before > 0 {
		add("seq < ?", f.Before)
	}
	q := "SELECT " + auditCols + " FROM audit_log"
	if len(where) > 0 {
		q += " WHERE " + strings.Join(where, " AND ")
	}
	q += fmt.Sprintf(" ORDER BY seq DESC LIMIT %d", store.AuditLimit(f.Limit))
	return collect(ctx, as.s.r, "list audit", q, args, scanAudit)
}

func (as auditStore) Prune(ctx context.Context, before time.Time) (int64, error) {
	res, err := as.s.exec(ctx, "DELETE FROM audit_log WHERE at < ?", ts(before))
	if err != nil {
		return 0, dbErr("prune audit", err)
	}
	return res.RowsAffected()
}
