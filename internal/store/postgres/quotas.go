package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"

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
	err := qs.s.pool.QueryRow(ctx, "SELECT owner_id, max_vms, max_vcpus, max_memory_mb, updated_at FROM owner_quotas WHERE owner_id = $1",
		ownerID).Scan(&q.OwnerID, &q.MaxVMs, &q.MaxVCPUs, &q.MaxMemoryMB, &q.UpdatedAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("quota", ownerID)
	}
	if err != nil {
		return nil, dbErr("get quota", err)
	}
	q.UpdatedAt = prep.Time(q.UpdatedAt)
	return &q, nil
}

func (qs quotaStore) Put(ctx context.Context, q *model.Quota) error {
	if err := store.CheckQuota(q); err != nil {
		return err
	}
	q.UpdatedAt = prep.Now()
	_, err := qs.s.pool.Exec(ctx, `INSERT INTO owner_quotas (owner_id, max_vms, max_vcpus, max_memory_mb, updated_at)
		VALUES ($1, $2, $3, $4, $5) ON CONFLICT (owner_id) DO UPDATE SET max_vms = EXCLUDED.max_vms,
		max_vcpus = EXCLUDED.max_vcpus, max_memory_mb = EXCLUDED.max_memory_mb, updated_at = EXCLUDED.updated_at`,
		q.OwnerID, q.MaxVMs, q.MaxVCPUs, q.MaxMemoryMB, q.UpdatedAt)
	if err != nil {
		return dbErr("put quota", err)
	}
	return nil
}

func (qs quotaStore) Delete(ctx context.Context, ownerID string) error {
	if !prep.TextOK(ownerID) || ownerID == "" {
		return prep.NotFound("quota", ownerID)
	}
	tag, err := qs.s.pool.Exec(ctx, "DELETE FROM owner_quotas WHERE owner_id = $1", ownerID)
	if err != nil {
		return dbErr("delete quota", err)
	}
	if tag.RowsAffected() == 0 {
		return prep.NotFound("quota", ownerID)
	}
	return nil
}
