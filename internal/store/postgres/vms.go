package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type vmStore struct{ s *Store }

const vmCols = `id::text, owner_id, name, status, vcpu_count, memory_mb, image, kernel_path, rootfs_path,
	socket_path, worker_id, error, metadata, created_at, updated_at, started_at, stopped_at, extra`

func scanVM(row pgx.Row) (*model.VM, error) {
	var vm model.VM
	var meta, extra []byte
	err := row.Scan(&vm.ID, &vm.OwnerID, &vm.Name, (*string)(&vm.Status), &vm.VCPUCount, &vm.MemoryMB, &vm.Image,
		&vm.KernelPath, &vm.RootfsPath, &vm.SocketPath, &vm.WorkerID, &vm.Error, &meta, &vm.CreatedAt, &vm.UpdatedAt,
		&vm.StartedAt, &vm.StoppedAt, &extra)
	if err != nil {
		return nil, err
	}
	if err := prep.UnmarshalVMExtra(extra, &vm); err != nil {
		return nil, fmt.Errorf("vm %s: extra: %w", vm.ID, err)
	}
	if vm.Metadata, err = prep.UnmarshalMap(meta); err != nil {
		return nil, fmt.Errorf("vm %s: metadata: %w", vm.ID, err)
	}
	vm.CreatedAt = prep.Time(vm.CreatedAt)
	vm.UpdatedAt = prep.Time(vm.UpdatedAt)
	vm.StartedAt = prep.TimePtr(vm.StartedAt)
	vm.StoppedAt = prep.TimePtr(vm.StoppedAt)
	return &vm, nil
}

// vmConflict explains a unique violation on vms.
func vmConflict(vm *model.VM, constraint string) error {
	if constraint == "vms_pkey" {
		return fmt.Errorf("vm %s already exists: %w", vm.ID, model.ErrConflict)
	}
	return fmt.Errorf("vm name %q is already used by another vm of owner %q: %w", vm.Name, vm.OwnerID, model.ErrConflict)
}

func (v vmStore) Create(ctx context.Context, vm *model.VM) error {
	if err := prep.NewVM(vm, prep.Now()); err != nil {
		return err
	}
	meta, err := prep.MarshalMap(vm.Metadata)
	if err != nil {
		return prep.Invalid("vm metadata: %v", err)
	}
	extra, err := prep.MarshalVMExtra(vm)
	if err != nil {
		return prep.Invalid("vm network or tools: %v", err)
	}
	err = v.s.execWithEvents(ctx, `INSERT INTO vms (id, owner_id, name, status, vcpu_count, memory_mb, image,
		kernel_path, rootfs_path, socket_path, worker_id, error, metadata, created_at, updated_at, started_at, stopped_at,
		extra)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)`, prep.VMEvents(nil, vm, vm.CreatedAt),
		vm.ID, vm.OwnerID, vm.Name, string(vm.Status), vm.VCPUCount, vm.MemoryMB, vm.Image, vm.KernelPath,
		vm.RootfsPath, vm.SocketPath, vm.WorkerID, vm.Error, nullJSON(meta), vm.CreatedAt, vm.UpdatedAt,
		vm.StartedAt, vm.StoppedAt, nullJSON(extra))
	if c, ok := uniqueViolation(err); ok {
		return vmConflict(vm, c)
	}
	if err != nil {
		return dbErr("create vm", err)
	}
	return nil
}

func (v vmStore) Get(ctx context.Context, id string) (*model.VM, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("vm", id)
	}
	vm, err := scanVM(v.s.pool.QueryRow(ctx, "SELECT "+vmCols+" FROM vms WHERE id = $1", cid))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, prep.NotFound("vm", id)
	}
	if err != nil {
		return nil, dbErr("get vm", err)
	}
	return vm, nil
}

func (v vmStore) Update(ctx context.Context, id string, fn func(vm *model.VM) error) (*model.VM, error) {
	cid, ok := prep.UUID(id)
	if !ok {
		return nil, prep.NotFound("vm", id)
	}
	var out *model.VM
	err := v.s.update(ctx, func(tx pgx.Tx) error {
		vm, err := scanVM(tx.QueryRow(ctx, "SELECT "+vmCols+" FROM vms WHERE id = $1 FOR UPDATE", cid))
		if errors.Is(err, pgx.ErrNoRows) {
			return prep.NotFound("vm", id)
		}
		if err != nil {
			return dbErr("update vm", err)
		}
		before := *vm
		if err := fn(vm); err != nil {
			return err
		}
		if err := prep.UpdatedVM(before, vm, prep.Now()); err != nil {
			return err
		}
		meta, err := prep.MarshalMap(vm.Metadata)
		if err != nil {
			return prep.Invalid("vm metadata: %v", err)
		}
		extra, err := prep.MarshalVMExtra(vm)
		if err != nil {
			return prep.Invalid("vm network or tools: %v", err)
		}
		_, err = tx.Exec(ctx, `UPDATE vms SET owner_id = $2, name = $3, status = $4, vcpu_count = $5,
			memory_mb = $6, image = $7, kernel_path = $8, rootfs_path = $9, socket_path = $10, worker_id = $11,
			error = $12, metadata = $13, updated_at = $14, started_at = $15, stopped_at = $16, extra = $17 WHERE id = $1`,
			vm.ID, vm.OwnerID, vm.Name, string(vm.Status), vm.VCPUCount, vm.MemoryMB, vm.Image, vm.KernelPath,
			vm.RootfsPath, vm.SocketPath, vm.WorkerID, vm.Error, nullJSON(meta), vm.UpdatedAt, vm.StartedAt,
			vm.StoppedAt, nullJSON(extra))
		if c, ok := uniqueViolation(err); ok {
			return vmConflict(vm, c)
		}
		if err != nil {
			return dbErr("update vm", err)
		}
		if err := appendEvents(ctx, tx, prep.VMEvents(&before, vm, prep.Now())); err != nil {
			return err
		}
		out = vm
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (v vmStore) List(ctx context.Context, f store.VMFilter) ([]*model.VM, error) {
	if !prep.TextOK(f.OwnerID, f.WorkerID) {
		return []*model.VM{}, nil // no row holds such text
	}
	var l list
	if f.OwnerID != "" {
		l.and("owner_id = " + l.arg(f.OwnerID))
	}
	if f.WorkerID != "" {
		l.and("worker_id = " + l.arg(f.WorkerID))
	}
	if len(f.Statuses) > 0 {
		ss := make([]string, len(f.Statuses))
		for i, s := range f.Statuses {
			ss[i] = string(s)
		}
		l.and("status = ANY(" + l.arg(ss) + ")")
	}
	tail, err := l.newestFirst(ctx, v.s.pool, "vms", "vm", f.Page)
	if err != nil {
		return nil, err
	}
	rows, err := v.s.pool.Query(ctx, "SELECT "+vmCols+" FROM vms"+l.whereSQL()+tail, l.args...)
	if err != nil {
		return nil, dbErr("list vms", err)
	}
	defer rows.Close()
	out := []*model.VM{}
	for rows.Next() {
		vm, err := scanVM(rows)
		if err != nil {
			return nil, dbErr("list vms", err)
		}
		out = append(out, vm)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list vms", err)
	}
	return out, nil
}
