package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type leaseStore struct{ s *Store }

const leaseCols = `scope, ip, vm_id, owner, mac, created_at`

func scanLease(row scanner) (*store.Lease, error) {
	var l store.Lease
	var ip, created string
	if err := row.Scan(&l.Scope, &ip, &l.VMID, &l.Owner, &l.MAC, &created); err != nil {
		return nil, err
	}
	var err error
	if l.IP, err = netip.ParseAddr(ip); err != nil {
		return nil, fmt.Errorf("lease of vm %s: bad stored address %q: %w", l.VMID, ip, err)
	}
	if l.CreatedAt, err = parseTS(created); err != nil {
		return nil, err
	}
	return &l, nil
}

// Acquire runs in one write transaction: BEGIN IMMEDIATE on the single writer connection holds SQLite's write lock
// from the first read, so the free address it computes cannot be taken before its insert commits, by this process
// or another one on the same file.
func (ls leaseStore) Acquire(ctx context.Context, req store.LeaseRequest) (*store.Lease, error) {
	if err := store.CheckLeaseRequest(req); err != nil {
		return nil, err
	}
	tx, err := ls.s.w.BeginTx(ctx, nil)
	if err != nil {
		return nil, dbErr("begin", err)
	}
	defer func() { _ = tx.Rollback() }() // a no-op after Commit

	cur, err := scanLease(tx.QueryRowContext(ctx, "SELECT "+leaseCols+
		" FROM network_leases WHERE scope = ? AND vm_id = ?", req.Scope, req.VMID))
	switch {
	case errors.Is(err, sql.ErrNoRows):
		cur = nil
	case err != nil:
		return nil, dbErr("acquire lease", err)
	}
	if cur != nil && store.LeaseUsable(req.Prefix, cur.IP) {
		if cur.Owner != req.Owner {
			if _, err := tx.ExecContext(ctx, "UPDATE network_leases SET owner = ? WHERE scope = ? AND vm_id = ?",
				req.Owner, req.Scope, req.VMID); err != nil {
				return nil, dbErr("acquire lease", err)
			}
			cur.Owner = req.Owner
		}
		if err := tx.Commit(); err != nil {
			return nil, dbErr("commit", err)
		}
		return cur, nil
	}
	if cur != nil { // held outside the prefix (the network was reconfigured): replace it
		if _, err := tx.ExecContext(ctx, "DELETE FROM network_leases WHERE scope = ? AND vm_id = ?",
			req.Scope, req.VMID); err != nil {
			return nil, dbErr("acquire lease", err)
		}
	}
	used, err := usedAddrs(ctx, tx, req.Scope)
	if err != nil {
		return nil, err
	}
	ip, err := store.FirstFreeLease(req.Prefix, used)
	if err != nil {
		return nil, fmt.Errorf("sqlite: scope %q: %w", req.Scope, err)
	}
	l := &store.Lease{Scope: req.Scope, IP: ip, VMID: req.VMID, Owner: req.Owner, MAC: store.LeaseMAC(ip),
		CreatedAt: prep.Now()}
	if _, err := tx.ExecContext(ctx, "INSERT INTO network_leases ("+leaseCols+") VALUES (?, ?, ?, ?, ?, ?)",
		l.Scope, l.IP.String(), l.VMID, l.Owner, l.MAC, ts(l.CreatedAt)); err != nil {
		return nil, dbErr("acquire lease", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, dbErr("commit", err)
	}
	return l, nil
}

func usedAddrs(ctx context.Context, tx *sql.Tx, scope string) ([]netip.Addr, error) {
	rows, err := tx.QueryContext(ctx, "SELECT ip FROM network_leases WHERE scope = ?", scope)
	if err != nil {
		return nil, dbErr("acquire lease", err)
	}
	defer rows.Close()
	var out []netip.Addr
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, dbErr("acquire lease", err)
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("sqlite: scope %q: bad stored address %q: %w", scope, s, err)
		}
		out = append(out, a)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("acquire lease", err)
	}
	return out, nil
}

func (ls leaseStore) Release(ctx context.Context, scope, vmID string) error {
	if !prep.TextOK(scope, vmID) {
		return nil // no row holds such text
	}
	if _, err := ls.s.exec(ctx, "DELETE FROM network_leases WHERE scope = ? AND vm_id = ?", scope, vmID); err != nil {
		return dbErr("release lease", err)
	}
	return nil
}

func (ls leaseStore) List(ctx context.Context, scope string) ([]*store.Lease, error) {
	if !prep.TextOK(scope) {
		return []*store.Lease{}, nil
	}
	out, err := collect(ctx, ls.s.r, "list leases", "SELECT "+leaseCols+" FROM network_leases WHERE scope = ?",
		[]any{scope}, scanLease)
	if err != nil {
		return nil, err
	}
	store.SortLeases(out)
	return out, nil
}
