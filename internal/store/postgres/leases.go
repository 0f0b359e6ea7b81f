package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/jackc/pgx/v5"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
)

type leaseStore struct{ s *Store }

const leaseCols = `scope, ip, vm_id, owner, mac, created_at`

// acquireAttempts bounds Acquire's retries on a unique violation. The advisory lock makes them rare (only a writer
// that does not take it, such as an older version, can cause one), so a few suffice.
const acquireAttempts = 5

func scanLease(row pgx.Row) (*store.Lease, error) {
	var l store.Lease
	var ip string
	if err := row.Scan(&l.Scope, &ip, &l.VMID, &l.Owner, &l.MAC, &l.CreatedAt); err != nil {
		return nil, err
	}
	var err error
	if l.IP, err = netip.ParseAddr(ip); err != nil {
		return nil, fmt.Errorf("lease of vm %s: bad stored address %q: %w", l.VMID, ip, err)
	}
	l.CreatedAt = prep.Time(l.CreatedAt)
	return &l, nil
}

// Acquire takes a transaction-scoped advisory lock on the scope first, so concurrent Acquires of one pool (from any
// process) run one after the other and each sees the addresses the previous one committed: under READ COMMITTED
// every later statement of the transaction reads a fresh snapshot. The unique constraints stay the last word; a
// violation is retried.
func (ls leaseStore) Acquire(ctx context.Context, req store.LeaseRequest) (*store.Lease, error) {
	if err := store.CheckLeaseRequest(req); err != nil {
		return nil, err
	}
	var err error
	for range acquireAttempts {
		var l *store.Lease
		l, err = ls.acquireOnce(ctx, req)
		if _, unique := uniqueViolation(err); !unique {
			return l, err
		}
	}
	return nil, fmt.Errorf("postgres: acquire lease of vm %s in scope %q: still conflicting after %d attempts: %w",
		req.VMID, req.Scope, acquireAttempts, err)
}

func (ls leaseStore) acquireOnce(ctx context.Context, req store.LeaseRequest) (*store.Lease, error) {
	var out *store.Lease
	err := ls.s.update(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended('aetherium.lease:' || $1, 0))",
			req.Scope); err != nil {
			return dbErr("lock lease scope", err)
		}
		cur, err := scanLease(tx.QueryRow(ctx, "SELECT "+leaseCols+
			" FROM network_leases WHERE scope = $1 AND vm_id = $2", req.Scope, req.VMID))
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			cur = nil
		case err != nil:
			return dbErr("acquire lease", err)
		}
		if cur != nil && store.LeaseUsable(req.Prefix, cur.IP) {
			if cur.Owner != req.Owner {
				if _, err := tx.Exec(ctx, "UPDATE network_leases SET owner = $3 WHERE scope = $1 AND vm_id = $2",
					req.Scope, req.VMID, req.Owner); err != nil {
					return dbErr("acquire lease", err)
				}
				cur.Owner = req.Owner
			}
			out = cur
			return nil
		}
		if cur != nil { // held outside the prefix (the network was reconfigured): replace it
			if _, err := tx.Exec(ctx, "DELETE FROM network_leases WHERE scope = $1 AND vm_id = $2",
				req.Scope, req.VMID); err != nil {
				return dbErr("acquire lease", err)
			}
		}
		rows, err := tx.Query(ctx, "SELECT ip FROM network_leases WHERE scope = $1", req.Scope)
		if err != nil {
			return dbErr("acquire lease", err)
		}
		ips, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return dbErr("acquire lease", err)
		}
		used := make([]netip.Addr, 0, len(ips))
		for _, s := range ips {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return fmt.Errorf("postgres: scope %q: bad stored address %q: %w", req.Scope, s, err)
			}
			used = append(used, a)
		}
		ip, err := store.FirstFreeLease(req.Prefix, used)
		if err != nil {
			return fmt.Errorf("postgres: scope %q: %w", req.Scope, err)
		}
		l := &store.Lease{Scope: req.Scope, IP: ip, VMID: req.VMID, Owner: req.Owner, MAC: store.LeaseMAC(ip),
			CreatedAt: prep.Now()}
		if _, err := tx.Exec(ctx, "INSERT INTO network_leases ("+leaseCols+") VALUES ($1, $2, $3, $4, $5, $6)",
			l.Scope, l.IP.String(), l.VMID, l.Owner, l.MAC, l.CreatedAt); err != nil {
			if _, unique := uniqueViolation(err); unique {
				return err // retried by Acquire
			}
			return dbErr("acquire lease", err)
		}
		out = l
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (ls leaseStore) Release(ctx context.Context, scope, vmID string) error {
	if !prep.TextOK(scope, vmID) {
		return nil // no row holds such text
	}
	if _, err := ls.s.pool.Exec(ctx, "DELETE FROM network_leases WHERE scope = $1 AND vm_id = $2", scope, vmID); err != nil {
		return dbErr("release lease", err)
	}
	return nil
}

func (ls leaseStore) List(ctx context.Context, scope string) ([]*store.Lease, error) {
	if !prep.TextOK(scope) {
		return []*store.Lease{}, nil
	}
	rows, err := ls.s.pool.Query(ctx, "SELECT "+leaseCols+" FROM network_leases WHERE scope = $1", scope)
	if err != nil {
		return nil, dbErr("list leases", err)
	}
	defer rows.Close()
	out := []*store.Lease{}
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return nil, dbErr("list leases", err)
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr("list leases", err)
	}
	store.SortLeases(out)
	return out, nil
}
