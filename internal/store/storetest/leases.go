package storetest

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

// scopeName is a pool name of its own for each subtest: the PostgreSQL suite shares one database between
// subtests and does not empty network_leases.
func scopeName() string { return "host-a/10.9.0.0-24/" + newID() }

func runLeases(t *testing.T, open Opener) {
	prefix := netip.MustParsePrefix("10.9.0.0/24")

	t.Run("AcquireLowestFree", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		scope := scopeName()
		before := time.Now().Add(-time.Second)
		acquire := func(vm, owner string) *store.Lease {
			t.Helper()
			l, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope, VMID: vm, Owner: owner, Prefix: prefix})
			must(t, "Acquire "+vm, err)
			return l
		}
		a := acquire("vm-a", "w1")
		want := store.Lease{Scope: scope, IP: netip.MustParseAddr("10.9.0.2"), VMID: "vm-a", Owner: "w1",
			MAC: "02:ae:0a:09:00:02", CreatedAt: a.CreatedAt}
		same(t, "first lease (network .0 and gateway .1 skipped)", want, *a)
		if a.CreatedAt.Before(before) || a.CreatedAt.Location() != time.UTC || a.CreatedAt != stored(a.CreatedAt) {
			t.Fatalf("CreatedAt %v: want now, in UTC, in microseconds", a.CreatedAt)
		}
		same(t, "Acquire again returns the same lease", *a, *acquire("vm-a", "w1"))
		b := acquire("vm-b", "w1")
		c := acquire("vm-c", "w2")
		if b.IP.String() != "10.9.0.3" || c.IP.String() != "10.9.0.4" || c.MAC != "02:ae:0a:09:00:04" {
			t.Fatalf("second and third leases: %s, %s", describe(b), describe(c))
		}
		must(t, "Release", st.Leases().Release(ctx, scope, "vm-a"))
		must(t, "Release again", st.Leases().Release(ctx, scope, "vm-a"))
		must(t, "Release of a vm without lease", st.Leases().Release(ctx, scope, "vm-none"))
		d := acquire("vm-d", "w1")
		if d.IP.String() != "10.9.0.2" {
			t.Fatalf("after a release the lowest free address is reused: got %s, want 10.9.0.2", d.IP)
		}
		// An existing lease passes to the worker that acquires it now (the VM moved).
		moved := acquire("vm-b", "w2")
		if moved.IP != b.IP || moved.Owner != "w2" {
			t.Fatalf("re-acquired by another owner: %s", describe(moved))
		}
		ls, err := st.Leases().List(ctx, scope)
		must(t, "List", err)
		var got []string
		for _, l := range ls {
			got = append(got, l.VMID+"@"+l.IP.String()+"/"+l.Owner)
		}
		sameIDs(t, "leases by address", []string{"vm-d@10.9.0.2/w1", "vm-b@10.9.0.3/w2", "vm-c@10.9.0.4/w2"}, got)
		same(t, "listed lease", *c, *ls[2])

		other, err := st.Leases().List(ctx, scope+"-other")
		must(t, "List other scope", err)
		if len(other) != 0 {
			t.Fatalf("another scope lists %d leases", len(other))
		}
		// Scopes are independent pools.
		o, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope + "-other", VMID: "vm-a", Prefix: prefix})
		must(t, "Acquire in another scope", err)
		if o.IP.String() != "10.9.0.2" {
			t.Fatalf("another scope's first lease is %s", o.IP)
		}
	})

	t.Run("PrefixChange", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		scope := scopeName()
		l, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope, VMID: "vm-a", Prefix: prefix})
		must(t, "Acquire", err)
		l2, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope, VMID: "vm-a",
			Prefix: netip.MustParsePrefix("192.168.7.0/24")})
		must(t, "Acquire in another prefix", err)
		if l2.IP.String() != "192.168.7.2" || l2.MAC != "02:ae:c0:a8:07:02" || l2.IP == l.IP {
			t.Fatalf("lease outside the new prefix not replaced: %s", describe(l2))
		}
		ls, err := st.Leases().List(ctx, scope)
		must(t, "List", err)
		if len(ls) != 1 {
			t.Fatalf("%d leases after the replacement, want 1", len(ls))
		}
	})

	t.Run("Exhausted", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		scope := scopeName()
		small := netip.MustParsePrefix("10.9.0.0/29") // .2 to .6: five addresses
		for i := range 5 {
			_, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope, VMID: fmt.Sprint("vm-", i), Prefix: small})
			must(t, "Acquire", err)
		}
		_, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope, VMID: "vm-x", Prefix: small})
		wantErr(t, "Acquire from a full pool", err, store.ErrPoolExhausted)
		must(t, "Release", st.Leases().Release(ctx, scope, "vm-3"))
		l, err := st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope, VMID: "vm-x", Prefix: small})
		must(t, "Acquire after a release", err)
		if l.IP.String() != "10.9.0.5" {
			t.Fatalf("got %s, want the released 10.9.0.5", l.IP)
		}
		// A /30 has exactly one address for a VM: .0 network, .1 gateway, .3 broadcast.
		tiny := netip.MustParsePrefix("10.9.1.0/30")
		l, err = st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope + "/30", VMID: "vm-a", Prefix: tiny})
		must(t, "Acquire /30", err)
		if l.IP.String() != "10.9.1.2" {
			t.Fatalf("/30 lease %s", l.IP)
		}
		_, err = st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope + "/30", VMID: "vm-b", Prefix: tiny})
		wantErr(t, "second Acquire of a /30", err, store.ErrPoolExhausted)
	})

	t.Run("Invalid", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		scope := scopeName()
		for _, req := range []store.LeaseRequest{
			{Scope: "", VMID: "vm", Prefix: prefix},
			{Scope: scope, VMID: "", Prefix: prefix},
			{Scope: scope, VMID: "vm\x00", Prefix: prefix},
			{Scope: scope, VMID: "vm"},
			{Scope: scope, VMID: "vm", Prefix: netip.MustParsePrefix("fd00::/64")},
			{Scope: scope, VMID: "vm", Prefix: netip.MustParsePrefix("10.9.0.0/31")},
			{Scope: scope, VMID: "vm", Prefix: netip.MustParsePrefix("10.0.0.0/7")},
			{Scope: scope, VMID: "vm", Prefix: netip.MustParsePrefix("10.9.0.5/24")},
		} {
			_, err := st.Leases().Acquire(ctx, req)
			wantErr(t, "Acquire "+describe(req), err, model.ErrInvalidInput)
		}
		must(t, "Release of bad text", st.Leases().Release(ctx, scope, "vm\x00"))
	})

	t.Run("Concurrent", func(t *testing.T) {
		st := open(t)
		ctx := t.Context()
		scope := scopeName()
		const n = 50
		var wg sync.WaitGroup
		leases := make([]*store.Lease, n)
		errs := make([]error, n)
		for i := range n {
			wg.Go(func() {
				// Every VM asks twice, so re-acquisitions race with first ones too.
				for range 2 {
					leases[i], errs[i] = st.Leases().Acquire(ctx, store.LeaseRequest{Scope: scope,
						VMID: fmt.Sprint("vm-", i), Owner: fmt.Sprint("w", i%2), Prefix: prefix})
					if errs[i] != nil {
						return
					}
				}
			})
		}
		wg.Wait()
		must(t, "concurrent Acquire", errors.Join(errs...))
		ips, macs := map[netip.Addr]string{}, map[string]string{}
		for i, l := range leases {
			vm := fmt.Sprint("vm-", i)
			if prev, dup := ips[l.IP]; dup {
				t.Fatalf("%s and %s share %s", prev, vm, l.IP)
			}
			if prev, dup := macs[l.MAC]; dup {
				t.Fatalf("%s and %s share %s", prev, vm, l.MAC)
			}
			ips[l.IP], macs[l.MAC] = vm, vm
			if !store.LeaseUsable(prefix, l.IP) || l.IP.As4()[3] > n+1 {
				t.Fatalf("%s got %s: not among the %d lowest host addresses", vm, l.IP, n)
			}
		}
		ls, err := st.Leases().List(ctx, scope)
		must(t, "List", err)
		if len(ls) != n {
			t.Fatalf("%d leases stored, want %d", len(ls), n)
		}
	})
}
