//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/aetherium/aetherium/internal/store"
)

// tables reads the manager's tables in m's namespace.
func tables(t testing.TB, m *Manager) *tableState {
	t.Helper()
	cc, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	st, err := readTables(cc)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// ruleCount is the number of rules in a chain of the manager's tables (0 when it does not exist).
func ruleCount(t testing.TB, m *Manager, table *nftables.Table, chain string) int {
	t.Helper()
	cc, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := cc.GetRules(table, &nftables.Chain{Name: chain, Table: table})
	if err != nil {
		return 0
	}
	return len(rules)
}

func setElements(t testing.TB, m *Manager, name string) []nftables.SetElement {
	t.Helper()
	cc, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	els, err := cc.GetSetElements(&nftables.Set{Table: inetTable, Name: name, KeyType: nftables.TypeIPAddr})
	if err != nil {
		t.Fatalf("elements of set %s: %v", name, err)
	}
	return els
}

func mustAttach(t testing.TB, m *Manager, vmID string, p Policy) Attachment {
	t.Helper()
	a, err := m.Attach(context.Background(), vmID, p)
	if err != nil {
		t.Fatalf("Attach %s: %v", vmID, err)
	}
	return a
}

// checkAttached checks the host side of an attachment: the TAP is an isolated, up port of the bridge with the
// VM's alias, and the VM's chains and map elements exist.
func checkAttached(t testing.TB, m *Manager, ns *netNS, a Attachment) {
	t.Helper()
	d := linkDetails(ns, a.TAP)
	for _, want := range []string{"master " + m.cfg.Bridge, "alias " + linkAlias(m.cfg.Owner, a.VMID), "isolated on",
		"tun type tap", "vnet_hdr on"} {
		if !strings.Contains(d, want) {
			t.Fatalf("tap %s: %q missing from:\n%s", a.TAP, want, d)
		}
	}
	if !strings.Contains(firstLine(d), ",UP") {
		t.Fatalf("tap %s is not up: %s", a.TAP, firstLine(d))
	}
	st := tables(t, m)
	if st.egress[a.IP] != vmChain(a.TAP) || st.ports[a.TAP] != spoofChain(a.TAP) {
		t.Fatalf("vm %s: egress map says %q, ports map says %q", a.VMID, st.egress[a.IP], st.ports[a.TAP])
	}
	if ruleCount(t, m, inetTable, vmChain(a.TAP)) == 0 || ruleCount(t, m, bridgeTable, spoofChain(a.TAP)) == 0 {
		t.Fatalf("vm %s: its chains are empty or missing", a.VMID)
	}
}

// checkGone checks that nothing of VM vmID is left in the namespace, and no lease.
func checkGone(t testing.TB, m *Manager, ns *netNS, vmID string) {
	t.Helper()
	tap := TAPName(vmID)
	if d := linkDetails(ns, tap); d != "" {
		t.Fatalf("tap %s of vm %s still exists", tap, vmID)
	}
	st := tables(t, m)
	for ip, c := range st.egress {
		if c == vmChain(tap) {
			t.Fatalf("egress map still sends %s to %s", ip, c)
		}
	}
	if _, ok := st.ports[tap]; ok || st.inetChains[vmChain(tap)] || st.bridgeChains[spoofChain(tap)] {
		t.Fatalf("rules of vm %s are left", vmID)
	}
	for _, s := range []string{allowSet(tap), denySet(tap), dnsSet(tap)} {
		if st.inetSets[s] {
			t.Fatalf("set %s is left", s)
		}
	}
	ls, err := m.cfg.Leases.List(context.Background(), m.cfg.Scope)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.VMID == vmID {
			t.Fatalf("lease of vm %s is left: %s", vmID, l.IP)
		}
	}
}

func TestAttachDetach(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), nil)
	ctx := context.Background()

	if got := readSysctl(t, topo.host, "net/ipv4/ip_forward"); got != "1" {
		t.Fatalf("ip_forward = %s after Setup", got)
	}
	br := linkDetails(topo.host, DefaultBridge)
	if !strings.Contains(br, "alias "+bridgeAlias) || !strings.Contains(br, "bridge ") {
		t.Fatalf("bridge:\n%s", br)
	}
	if out := ipCmd(t, "-n", topo.host.name, "-4", "addr", "show", "dev", DefaultBridge); !strings.Contains(out, "inet 172.16.0.1/24") {
		t.Fatalf("bridge has no gateway address:\n%s", out)
	}

	a := mustAttach(t, m, "vm-a", Policy{})
	want := Attachment{VMID: "vm-a", TAP: TAPName("vm-a"), MAC: "02:ae:ac:10:00:02",
		IP: netip.MustParseAddr("172.16.0.2"), PrefixLen: 24, Gateway: netip.MustParseAddr("172.16.0.1"),
		DNS: []netip.Addr{netip.MustParseAddr("172.16.0.1")}}
	if fmt.Sprint(a) != fmt.Sprint(want) {
		t.Fatalf("Attach = %+v\nwant     %+v", a, want)
	}
	checkAttached(t, m, topo.host, a)

	// A retried attach returns the same and changes nothing.
	a2 := mustAttach(t, m, "vm-a", Policy{})
	if fmt.Sprint(a2) != fmt.Sprint(a) {
		t.Fatalf("second Attach = %+v, want %+v", a2, a)
	}
	checkAttached(t, m, topo.host, a)

	b := mustAttach(t, m, "vm-b", Policy{DenyCIDRs: pfx("198.51.100.0/24"), AllowCIDRs: pfx("10.66.0.0/16"),
		AllowDomains: []string{"allowed.test"}})
	if b.IP.String() != "172.16.0.3" || b.MAC != "02:ae:ac:10:00:03" || b.TAP == a.TAP {
		t.Fatalf("second vm: %+v", b)
	}
	checkAttached(t, m, topo.host, b)
	ts := tables(t, m)
	for _, s := range []string{allowSet(b.TAP), denySet(b.TAP), dnsSet(b.TAP)} {
		if !ts.inetSets[s] {
			t.Fatalf("set %s missing", s)
		}
	}
	var deny []string
	for _, e := range setElements(t, m, denySet(b.TAP)) {
		deny = append(deny, fmt.Sprintf("%s/end=%v", netip.AddrFrom4([4]byte(e.Key)), e.IntervalEnd))
	}
	slices.Sort(deny)
	if !slices.Equal(deny, []string{"198.51.100.0/end=false", "198.51.101.0/end=true"}) {
		t.Fatalf("deny set of vm-b: %v", deny)
	}

	// A link of a TAP's name that is not the VM's TAP is never taken over.
	ipCmd(t, "-n", topo.host.name, "link", "add", TAPName("vm-c"), "type", "veth", "peer", "name", "vm-c-peer")
	if _, err := m.Attach(ctx, "vm-c", Policy{}); err == nil || !strings.Contains(err.Error(), "is not the TAP") {
		t.Fatalf("Attach over a foreign link: %v", err)
	}
	ipCmd(t, "-n", topo.host.name, "link", "del", TAPName("vm-c"))
	if err := m.Detach(ctx, "vm-c"); err != nil {
		t.Fatal(err)
	}

	for _, id := range []string{"vm-a", "vm-b"} {
		if err := m.Detach(ctx, id); err != nil {
			t.Fatalf("Detach %s: %v", id, err)
		}
		checkGone(t, m, topo.host, id)
		if err := m.Detach(ctx, id); err != nil {
			t.Fatalf("second Detach %s: %v", id, err)
		}
	}
	if _, err := m.Attach(ctx, "bad id", Policy{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Attach with a bad id: %v", err)
	}
}

func TestPoolExhausted(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), func(c *Config) { c.CIDR = netip.MustParsePrefix("172.16.9.0/30") })
	mustAttach(t, m, "vm-a", Policy{})
	_, err := m.Attach(context.Background(), "vm-b", Policy{})
	if !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("Attach on a full pool: %v", err)
	}
}

func TestLeaseSurvivesRestart(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	m1 := newManager(t, topo.host, st.Leases(), nil)
	mustAttach(t, m1, "vm-x", Policy{})
	a := mustAttach(t, m1, "vm-a", Policy{AllowDomains: []string{"allowed.test"}})
	if err := m1.Detach(context.Background(), "vm-x"); err != nil {
		t.Fatal(err)
	}
	if err := m1.Close(); err != nil {
		t.Fatal(err)
	}
	// The worker restarts: a new manager on the same store and host finds the same lease and takes the TAP over.
	m2 := newManager(t, topo.host, st.Leases(), nil)
	a2 := mustAttach(t, m2, "vm-a", Policy{AllowDomains: []string{"allowed.test"}})
	if fmt.Sprint(a2) != fmt.Sprint(a) || a.IP.String() != "172.16.0.3" {
		t.Fatalf("after a restart: %+v, before: %+v", a2, a)
	}
	checkAttached(t, m2, topo.host, a2)
	// The freed .2 goes to the next VM; vm-a keeps .3.
	if b := mustAttach(t, m2, "vm-b", Policy{}); b.IP.String() != "172.16.0.2" {
		t.Fatalf("next vm got %s", b.IP)
	}
}

// TestConcurrentAttach runs 50 concurrent Attach calls on two managers (two hosts) that share one store and one
// scope: no address or MAC may be given twice.
func TestConcurrentAttach(t *testing.T) {
	requireNetAdmin(t)
	for _, tc := range []struct {
		name string
		open func(testing.TB) store.Store
	}{{"sqlite", sqliteStore}, {"postgres", postgresStore}} {
		t.Run(tc.name, func(t *testing.T) {
			st := tc.open(t)
			var ms []*Manager
			for i := range 2 {
				ns := newNetNS(t, fmt.Sprint("c", i))
				ms = append(ms, newManager(t, ns, st.Leases(), func(c *Config) {
					c.Scope, c.Owner, c.Uplink, c.DisableDNSForwarder = "shared", fmt.Sprint("w", i), "lo", true
					c.GuestDNS = []netip.Addr{netip.MustParseAddr(dnsAddr)}
				}))
			}
			const n = 50
			atts := make([]Attachment, n)
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					atts[i], errs[i] = ms[i%2].Attach(context.Background(), fmt.Sprintf("vm-%02d", i), Policy{})
				})
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			ips, macs := map[netip.Addr]string{}, map[string]string{}
			for _, a := range atts {
				if prev, dup := ips[a.IP]; dup {
					t.Fatalf("%s and %s share %s", prev, a.VMID, a.IP)
				}
				if prev, dup := macs[a.MAC]; dup {
					t.Fatalf("%s and %s share %s", prev, a.VMID, a.MAC)
				}
				ips[a.IP], macs[a.MAC] = a.VMID, a.VMID
			}
			ls, err := st.Leases().List(context.Background(), "shared")
			if err != nil || len(ls) != n {
				t.Fatalf("%d leases stored (%v), want %d", len(ls), err, n)
			}
			for i := range n {
				wg.Go(func() { errs[i] = ms[i%2].Detach(context.Background(), atts[i].VMID) })
			}
			wg.Wait()
			if err := errors.Join(errs...); err != nil {
				t.Fatal(err)
			}
			if ls, _ := st.Leases().List(context.Background(), "shared"); len(ls) != 0 {
				t.Fatalf("%d leases left after detaching every vm", len(ls))
			}
		})
	}
}

func TestReconcile(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	ctx := context.Background()
	m := newManager(t, topo.host, st.Leases(), nil)
	a := mustAttach(t, m, "vm-a", Policy{})
	mustAttach(t, m, "vm-b", Policy{DenyCIDRs: pfx("1.2.3.0/24")})
	c := mustAttach(t, m, "vm-c", Policy{})
	// vm-c's TAP vanished (deleted by hand): its rules are left without it.
	ipCmd(t, "-n", topo.host.name, "link", "del", c.TAP)
	// A lease without any TAP (a crash between the lease and the TAP), one of another worker, and links that are
	// not the manager's: a dummy eth9, and one with a TAP's name but no alias of ours.
	leases := st.Leases()
	if _, err := leases.Acquire(ctx, store.LeaseRequest{Scope: m.Scope(), VMID: "vm-ghost", Owner: "w1",
		Prefix: DefaultCIDR}); err != nil {
		t.Fatal(err)
	}
	if _, err := leases.Acquire(ctx, store.LeaseRequest{Scope: m.Scope(), VMID: "vm-other", Owner: "w2",
		Prefix: DefaultCIDR}); err != nil {
		t.Fatal(err)
	}
	// (veth pairs: this kernel may lack the dummy driver)
	ipCmd(t, "-n", topo.host.name, "link", "add", "eth9", "type", "veth", "peer", "name", "eth9-peer")
	ipCmd(t, "-n", topo.host.name, "link", "add", TAPName("vm-foreign"), "type", "veth", "peer", "name", "foreign-peer")

	// The worker restarts and reconciles with what it still has: vm-a only. The new manager knows nothing but what
	// the kernel and the store hold.
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	m2 := newManager(t, topo.host, leases, nil)
	if err := m2.Reconcile(ctx, []string{"vm-a"}); err != nil {
		t.Fatalf("Reconcile: %v", err)
	}
	for _, id := range []string{"vm-b", "vm-c", "vm-ghost"} {
		checkGone(t, m2, topo.host, id)
	}
	ls, err := leases.List(ctx, m2.Scope())
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, l := range ls {
		left = append(left, l.VMID)
	}
	if !slices.Equal(left, []string{"vm-a", "vm-other"}) {
		t.Fatalf("leases left: %v, want vm-a and vm-other", left)
	}
	for _, name := range []string{"eth9", TAPName("vm-foreign"), a.TAP} {
		if linkDetails(topo.host, name) == "" {
			t.Fatalf("Reconcile removed %s", name)
		}
	}
	checkAttached(t, m2, topo.host, a)
}

// TestSetupRepairs breaks what Setup made (deletes the bridge, flushes a table, deletes both) and checks that
// Setup puts it back, with the attached VM's rules and bridge port, and leaves another table alone.
func TestSetupRepairs(t *testing.T) {
	topo := newTopology(t)
	st := sqliteStore(t)
	ctx := context.Background()
	m := newManager(t, topo.host, st.Leases(), nil)
	a := mustAttach(t, m, "vm-a", Policy{AllowDomains: []string{"allowed.test"}})

	// Someone else's table, which no repair may touch.
	cc, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	other := cc.AddTable(&nftables.Table{Name: "other", Family: nftables.TableFamilyINet})
	oc := cc.AddChain(&nftables.Chain{Name: "c", Table: other})
	cc.AddRule(&nftables.Rule{Table: other, Chain: oc, Exprs: []expr.Any{&expr.Counter{}}})
	if err := cc.Flush(); err != nil {
		t.Fatal(err)
	}
	baseRules := ruleCount(t, m, inetTable, chainForward)
	vmRules := ruleCount(t, m, inetTable, vmChain(a.TAP))

	check := func(what string) {
		t.Helper()
		if err := m.Setup(ctx); err != nil {
			t.Fatalf("Setup after %s: %v", what, err)
		}
		checkAttached(t, m, topo.host, a)
		if got := ruleCount(t, m, inetTable, chainForward); got != baseRules {
			t.Fatalf("after %s: forward chain has %d rules, want %d", what, got, baseRules)
		}
		if got := ruleCount(t, m, inetTable, vmChain(a.TAP)); got != vmRules {
			t.Fatalf("after %s: vm chain has %d rules, want %d", what, got, vmRules)
		}
		if got := ruleCount(t, m, other, "c"); got != 1 {
			t.Fatalf("after %s: the other table's chain has %d rules, want 1", what, got)
		}
		if out := ipCmd(t, "-n", topo.host.name, "-4", "addr", "show", "dev", DefaultBridge); !strings.Contains(out, "inet 172.16.0.1/24") {
			t.Fatalf("after %s: bridge has no gateway address:\n%s", what, out)
		}
	}
	check("nothing")

	ipCmd(t, "-n", topo.host.name, "link", "del", DefaultBridge)
	if d := linkDetails(topo.host, a.TAP); strings.Contains(d, "master") {
		t.Fatalf("tap still has a master after its bridge was deleted: %s", d)
	}
	check("deleting the bridge")

	cc.FlushTable(inetTable)
	cc.FlushTable(bridgeTable)
	if err := cc.Flush(); err != nil {
		t.Fatal(err)
	}
	if ruleCount(t, m, inetTable, chainForward) != 0 {
		t.Fatal("flush left rules")
	}
	check("flushing the tables")

	cc.DelTable(inetTable)
	cc.DelTable(bridgeTable)
	if err := cc.Flush(); err != nil {
		t.Fatal(err)
	}
	check("deleting the tables")

	// The forwarding switch too.
	if err := topo.host.run().sysctl("net/ipv4/ip_forward", "0", false); err != nil {
		t.Fatal(err)
	}
	check("turning forwarding off")
	if got := readSysctl(t, topo.host, "net/ipv4/ip_forward"); got != "1" {
		t.Fatalf("ip_forward = %s after Setup", got)
	}

	// A bridge of that name that is not ours is refused, not adopted.
	ipCmd(t, "-n", topo.host.name, "link", "add", "br-foreign", "type", "bridge")
	m2, err := New(Config{Leases: st.Leases(), NetNS: topo.host.handle, Bridge: "br-foreign", DisableDNSForwarder: true,
		GuestDNS: []netip.Addr{netip.MustParseAddr(dnsAddr)}, CIDR: netip.MustParsePrefix("172.17.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	defer m2.Close()
	if err := m2.Setup(ctx); err == nil || !strings.Contains(err.Error(), "not a bridge made by aetherium") {
		t.Fatalf("Setup on a foreign bridge: %v", err)
	}
	// A second aetherium bridge would rewrite the shared tables for itself and strip the first of its isolation.
	m3, err := New(Config{Leases: st.Leases(), NetNS: topo.host.handle, Bridge: "aebr2", DisableDNSForwarder: true,
		GuestDNS: []netip.Addr{netip.MustParseAddr(dnsAddr)}, CIDR: netip.MustParsePrefix("172.18.0.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	defer m3.Close()
	if err := m3.Setup(ctx); err == nil || !strings.Contains(err.Error(), "already has the aetherium bridge "+DefaultBridge) {
		t.Fatalf("Setup of a second bridge: %v", err)
	}
	if d := linkDetails(topo.host, "aebr2"); d != "" {
		t.Fatalf("the refused Setup made its bridge: %s", d)
	}
	if _, err := exec.LookPath("nft"); err == nil {
		out, _ := exec.Command("ip", "netns", "exec", topo.host.name, "nft", "list", "ruleset").CombinedOutput()
		t.Logf("ruleset:\n%s", out)
	}
}
