package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type vmStore struct{ s *Store }

const vmCols = `id, owner_id, name, status, vcpu_count, memory_mb, image, kernel_path, rootfs_path, socket_path,
	worker_id, error, metadata, created_at, updated_at, started_at, stopped_at, extra`

// vmSelect and vmUpdate are the read and the write of Update.
const (
	vmSelect = "SELECT " + vmCols + " FROM vms WHERE id = ?"
	vmUpdate = `UPDATE vms SET owner_id = ?, name = ?, status = ?, vcpu_count = ?,
	memory_mb = ?, image = ?, kernel_path = ?, rootfs_path = ?, socket_path = ?, worker_id = ?, error = ?,
	metadata = ?, updated_at = ?, started_at = ?, stopped_at = ?, extra = ? WHERE id = ?`
)

func scanVM(row scanner) (*model.VM, error) {
	var vm model.VM
	var meta, started, stopped, extra sql.NullString
	var created, updated string
	err := row.Scan(&vm.ID, &vm.OwnerID, &vm.Name, (*string)(&vm.Status), &vm.VCPUCount, &vm.MemoryMB, &vm.Image,
		&vm.KernelPath, &vm.RootfsPath, &vm.SocketPath, &vm.WorkerID, &vm.Error, &meta, &created, &updated, &started,
		&stopped, &extra)
	if err != nil {
		return nil, err
	}
	if err := prep.UnmarshalVMExtra(docBytes(extra), &vm); err != nil {
		return nil, fmt.Errorf("vm %s: extra: %w", vm.ID, err)
	}
	if vm.Metadata, err = prep.UnmarshalMap(docBytes(meta)); err != nil {
		return nil, fmt.Errorf("vm %s: metadata: %w", vm.ID, err)
	}
	if vm.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	if vm.UpdatedAt, err = parseTS(updated); err != nil {
		return nil, err
	}
	if vm.StartedAt, err = parseTSPtr(started); err != nil {
		return nil, err
	}
	if vm.StoppedAt, err = parseTSPtr(stopped); err != nil {
		return nil, err
	}
	return &vm, nil
}

func vmConflict(vm *model.VM, primary bool) error {
	if primary {
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
	err = v.s.execWithEvents(ctx, `INSERT INTO vms (`+vmCols+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, prep.VMEvents(nil, vm, vm.CreatedAt),
		vm.ID, vm.OwnerID, vm.Name, string(vm.Status), vm.VCPUCount, vm.MemoryMB, vm.Image, vm.KernelPath,
		vm.RootfsPath, vm.SocketPath, vm.WorkerID, vm.Error, nullText(meta), ts(vm.CreatedAt), ts(vm.UpdatedAt),
		tsPtr(vm.StartedAt), tsPtr(vm.StoppedAt), nullText(extra))
	if primary, _, ok := uniqueViolation(err); ok {
		return vmConflict(vm, primary)
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
	vm, err := scanVM(v.s.row(ctx, "SELECT "+vmCols+" FROM vms WHERE id = ?", cid))
	if errors.Is(err, sql.ErrNoRows) {
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
	err := v.s.update(ctx, vmSelect, vmUpdate, func(st txStmts) error {
		vm, err := scanVM(st.sel.QueryRowContext(ctx, cid))
		if errors.Is(err, sql.ErrNoRows) {
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
		_, err = st.upd.ExecContext(ctx,
			vm.OwnerID, vm.Name, string(vm.Status), vm.VCPUCount, vm.MemoryMB, vm.Image, vm.KernelPath,
			vm.RootfsPath, vm.SocketPath, vm.WorkerID, vm.Error, nullText(meta), ts(vm.UpdatedAt),
			tsPtr(vm.StartedAt), tsPtr(vm.StoppedAt), nullText(extra), vm.ID)
		if primary, _, ok := uniqueViolation(err); ok {
			return vmConflict(vm, primary)
		}
		if err != nil {
			return dbErr("update vm", err)
		}
		if err := appendEvents(ctx, st.tx, prep.VMEvents(&before, vm, prep.Now())); err != nil {
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
		l.and("status IN " + l.in(ss))
	}
	tail, err := l.newestFirst(ctx, v.s.r, "vms", "vm", f.Page)
	if err != nil {
		return nil, err
	}
	return collect(ctx, v.s.r, "list vms", "SELECT "+vmCols+" FROM vms"+l.whereSQL()+tail, l.args, scanVM)
}
