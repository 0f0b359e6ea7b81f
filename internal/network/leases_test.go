//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/store"
)

// gatedLeases is a LeaseStore whose Acquire and Release of one VM wait until the test opens the gate, like a
// database that is slow or stalled for that write.
type gatedLeases struct {
	store.LeaseStore
	vmID    string
	entered chan string // "acquire" or "release", when the gated call starts waiting
	gate    chan struct{}
}

func (g *gatedLeases) wait(ctx context.Context, what, vmID string) error {
	if vmID != g.vmID {
		return nil
	}
	g.entered <- what
	select {
	case <-g.gate:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g *gatedLeases) Acquire(ctx context.Context, req store.LeaseRequest) (*store.Lease, error) {
	if err := g.wait(ctx, "acquire", req.VMID); err != nil {
		return nil, err
	}
	return g.LeaseStore.Acquire(ctx, req)
}

func (g *gatedLeases) Release(ctx context.Context, scope, vmID string) error {
	if err := g.wait(ctx, "release", vmID); err != nil {
		return err
	}
	return g.LeaseStore.Release(ctx, scope, vmID)
}

// within runs f and fails the test if it has not returned after a generous deadline (liveness, not speed).
func within(t *testing.T, what string, f func() error) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s did not return within 30s: it waits for another VM's lease write", what)
	}
}

// TestLeaseWritesOutsideHostLock: while the lease store holds up one VM's Acquire, and later its Release, other
// VMs attach and detach: the host-wide lock is not held across lease writes.
func TestLeaseWritesOutsideHostLock(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	g := &gatedLeases{LeaseStore: st.Leases(), vmID: "vm-slow", entered: make(chan string, 1), gate: make(chan struct{})}
	m := newManager(t, topo.host, g, nil)
	ctx := context.Background()

	slow := make(chan error, 1)
	var slowAtt Attachment
	go func() {
		var err error
		slowAtt, err = m.Attach(ctx, "vm-slow", Policy{})
		slow <- err
	}()
	if what := <-g.entered; what != "acquire" {
		t.Fatalf("gated %s, want acquire", what)
	}
	var b Attachment
	within(t, "Attach of another vm", func() (err error) { b, err = m.Attach(ctx, "vm-b", Policy{}); return err })
	checkAttached(t, m, topo.host, b)
	within(t, "Detach of another vm", func() error { return m.Detach(ctx, "vm-b") })
	checkGone(t, m, topo.host, "vm-b")
	close(g.gate)
	if err := <-slow; err != nil {
		t.Fatalf("Attach vm-slow: %v", err)
	}
	checkAttached(t, m, topo.host, slowAtt)

	g.gate = make(chan struct{})
	go func() { slow <- m.Detach(ctx, "vm-slow") }()
	if what := <-g.entered; what != "release" {
		t.Fatalf("gated %s, want release", what)
	}
	// vm-slow's TAP and rules are gone already; its address is not free until the release: vm-c gets another.
	var c Attachment
	within(t, "Attach during another vm's release", func() (err error) { c, err = m.Attach(ctx, "vm-c", Policy{}); return err })
	if c.IP == slowAtt.IP {
		t.Fatalf("vm-c got %s, the address of vm-slow whose release has not happened", c.IP)
	}
	checkAttached(t, m, topo.host, c)
	close(g.gate)
	if err := <-slow; err != nil {
		t.Fatalf("Detach vm-slow: %v", err)
	}
	checkGone(t, m, topo.host, "vm-slow")
}

// TestFailedAttachReleasesLease: an Attach that fails after leasing (here: a foreign link has the TAP's name)
// leaves no lease, and leaves the foreign link alone.
func TestFailedAttachReleasesLease(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), nil)
	ipCmd(t, "-n", topo.host.name, "link", "add", TAPName("vm-x"), "type", "veth", "peer", "name", "vm-x-peer")
	if _, err := m.Attach(context.Background(), "vm-x", Policy{}); err == nil || !strings.Contains(err.Error(), "is not the TAP") {
		t.Fatalf("Attach over a foreign link: %v", err)
	}
	ls, err := st.Leases().List(context.Background(), m.Scope())
	if err != nil || len(ls) != 0 {
		t.Fatalf("leases after a failed attach: %v (%v)", ls, err)
	}
	if linkDetails(topo.host, TAPName("vm-x")) == "" {
		t.Fatal("the failed attach removed a link it did not make")
	}
	// The address went back to the pool: the next VM gets the first one.
	if a := mustAttach(t, m, "vm-y", Policy{}); a.IP != netip.MustParseAddr("172.16.0.2") {
		t.Fatalf("next vm got %s", a.IP)
	}
}

// TestReconcileRacesAttach: Reconcile runs again and again while VMs attach, on SQLite and PostgreSQL. VMs to keep
// are never touched; whatever else happens, no TAP is ever without its lease, and a last Reconcile leaves exactly
// the kept VMs.
func TestReconcileRacesAttach(t *testing.T) {
	requireNetAdmin(t)
	for _, tc := range []struct {
		name string
		open func(testing.TB) store.Store
	}{{"sqlite", sqliteStore}, {"postgres", postgresStore}} {
		t.Run(tc.name, func(t *testing.T) {
			topo := newTopology(t)
			st := tc.open(t)
			m := newManager(t, topo.host, st.Leases(), nil)
			ctx := context.Background()
			const n = 20
			var keep []string
			for i := 0; i < n; i += 2 {
				keep = append(keep, fmt.Sprintf("vm-%02d", i))
			}
			atts := make([]Attachment, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			stop := make(chan struct{})
			var recErrs []error
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if err := m.Reconcile(ctx, keep); err != nil {
						recErrs = append(recErrs, err)
					}
				}
			})
			var awg sync.WaitGroup
			for i := range n {
				awg.Go(func() { atts[i], errs[i] = m.Attach(ctx, fmt.Sprintf("vm-%02d", i), Policy{}) })
			}
			awg.Wait()
			close(stop)
			wg.Wait()
			if err := errors.Join(append(errs, recErrs...)...); err != nil {
				t.Fatal(err)
			}
			checkTAPsLeased(t, m, topo.host)
			if err := m.Reconcile(ctx, keep); err != nil {
				t.Fatal(err)
			}
			for i, a := range atts {
				if i%2 == 0 {
					checkAttached(t, m, topo.host, a)
				} else {
					checkGone(t, m, topo.host, a.VMID)
				}
			}
			checkTAPsLeased(t, m, topo.host)
		})
	}
}

// checkTAPsLeased checks that every TAP of the manager has its VM's lease, and that the egress rules send the
// leased address (and no other) to the TAP's chain.
func checkTAPsLeased(t *testing.T, m *Manager, ns *netNS) {
	t.Helper()
	ls, err := m.cfg.Leases.List(context.Background(), m.cfg.Scope)
	if err != nil {
		t.Fatal(err)
	}
	byVM := map[string]netip.Addr{}
	for _, l := range ls {
		byVM[l.VMID] = l.IP
	}
	links, err := linkList(m.nl)
	if err != nil {
		t.Fatal(err)
	}
	tabs := tables(t, m)
	for _, l := range links {
		_, vmID, ok := parseAlias(l.Attrs().Alias)
		if !ok || !isTAPName(l.Attrs().Name) {
			continue
		}
		ip, leased := byVM[vmID]
		if !leased {
			t.Fatalf("tap %s of vm %s has no lease", l.Attrs().Name, vmID)
		}
		for a, chain := range tabs.egress {
			if chain == vmChain(l.Attrs().Name) && a != ip {
				t.Fatalf("vm %s leases %s but its rules are for %s", vmID, ip, a)
			}
		}
	}
}

// TestSetupWithManyVMs: Setup and Reconcile write the rules of every attached VM in one nftables batch; with 150
// VMs that batch and its acknowledgements are far past the sockets' default buffers (it failed from 11 VMs on).
func TestSetupWithManyVMs(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), nil)
	const n = 150
	var keep []string
	var atts []Attachment
	for i := range n {
		id := fmt.Sprintf("vm-%03d", i)
		keep = append(keep, id)
		atts = append(atts, mustAttach(t, m, id, Policy{DenyCIDRs: pfx("198.51.100.0/24")}))
	}
	if err := m.Setup(context.Background()); err != nil {
		t.Fatalf("Setup with %d vms: %v", n, err)
	}
	if err := m.Reconcile(context.Background(), keep); err != nil {
		t.Fatalf("Reconcile with %d vms: %v", n, err)
	}
	for _, a := range []Attachment{atts[0], atts[n/2], atts[n-1]} {
		checkAttached(t, m, topo.host, a)
	}
}
