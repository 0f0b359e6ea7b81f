package sqlite

import (
	"context"
	"database/sql"
	"errors"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type quotaStore struct{ s *Store }

// Quotas gives access to the owners' quotas.
func (s *Store) Quotas() store.QuotaStore { return quotaStore{s} }

func (qs quotaStore) Get(ctx context.Context, ownerID string) (*model.Quota, error) {
	if !prep.TextOK(ownerID) || ownerID == "" {
		return nil, prep.NotFound("quota", ownerID)
	}
	var q model.Quota
	var updated string
	err := qs.s.row(ctx, "SELECT owner_id, max_vms, max_vcpus, max_memory_mb, updated_at FROM owner_quotas WHERE owner_id = ?",
		ownerID).Scan(&q.OwnerID, &q.MaxVMs, &q.MaxVCPUs, &q.MaxMemoryMB, &updated)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, prep.NotFound("quota", ownerID)
	}
	if err != nil {
		return nil, dbErr("get quota", err)
	}
	if q.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	return &q, nil
}

func (qs quotaStore) Put(ctx context.Context, q *model.Quota) error {
	if err := store.CheckQuota(q); err != nil {
		return err
	}
	q.UpdatedAt = prep.Now()
	_, err := qs.s.exec(ctx, `INSERT INTO owner_quotas (owner_id, max_vms, max_vcpus, max_memory_mb, updated_at)
		VALUES (?, ?, ?, ?, ?) ON CONFLICT (owner_id) DO UPDATE SET max_vms = excluded.max_vms,
		max_vcpus = excluded.max_vcpus, max_memory_mb = excluded.max_memory_mb, updated_at = excluded.updated_at`,
		q.OwnerID, q.MaxVMs, q.MaxVCPUs, q.MaxMemoryMB, ts(q.UpdatedAt))
	if err != nil {
		return dbErr("put quota", err)
	}
	return nil
}

func (qs quotaStore) Delete(ctx context.Context, ownerID string) error {
	if !prep.TextOK(ownerID) || ownerID == "" {
		return prep.NotFound("quota", ownerID)
	}
	return exec1(ctx, qs.s, "delete quota", "quota", ownerID, "DELETE FROM owner_quotas WHERE owner_id = ?", ownerID)
}
