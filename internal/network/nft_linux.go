//go:build linux

package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	mdnetlink "github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nftBuffer is the send and receive buffer of the manager's nftables sockets. Setup (so Reconcile) writes the
// rules of every VM in one batch, one message, and the kernel queues the acknowledgement of each of its parts
// before the first is read: with the default buffers (about 208 KiB) the acknowledgements overflowed (ENOBUFS)
// from 11 VMs on, and the batch itself (EMSGSIZE) from 76. 32 MiB holds the rules of a few thousand VMs; the
// memory is only taken as it is used.
const nftBuffer = 32 << 20

// bigBuffers sets nftBuffer on an nftables socket, past net.core.rmem_max and wmem_max when the process may
// (CAP_NET_ADMIN, which the manager needs anyway), else as far as those limits allow.
func bigBuffers(c *mdnetlink.Conn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("nftables socket: %w", err)
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		set := func(force, plain int) error {
			if err := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, force, nftBuffer); err != nil {
				return unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, plain, nftBuffer)
			}
			return nil
		}
		serr = errors.Join(set(unix.SO_RCVBUFFORCE, unix.SO_RCVBUF), set(unix.SO_SNDBUFFORCE, unix.SO_SNDBUF))
	}); err != nil {
		return fmt.Errorf("nftables socket: %w", err)
	}
	if serr != nil {
		return fmt.Errorf("nftables socket: buffer sizes: %w", serr)
	}
	return nil
}

// Names of the objects in the manager's tables. Per-VM objects carry the VM's TAP name.
const (
	chainForward     = "forward"
	chainInput       = "input"
	chainPostrouting = "postrouting"
	chainPrerouting  = "prerouting"
	setPrivate       = "private"
	mapEgress        = "egress" // guest address -> jump to the VM's egress chain
	mapPorts         = "ports"  // TAP name -> jump to the VM's anti-spoofing chain (bridge table)
	vmChainPrefix    = "vm_"
	spoofChainPrefix = "spoof_"
)

func vmChain(tap string) string    { return vmChainPrefix + tap }
func spoofChain(tap string) string { return spoofChainPrefix + tap }
func allowSet(tap string) string   { return vmChainPrefix + tap + "_allow" }
func denySet(tap string) string    { return vmChainPrefix + tap + "_deny" }
func dnsSet(tap string) string     { return vmChainPrefix + tap + "_dns" }

var (
	inetTable   = &nftables.Table{Name: TableName, Family: nftables.TableFamilyINet}
	bridgeTable = &nftables.Table{Name: TableName, Family: nftables.TableFamilyBridge}
)

// bridgeFilterPriority is NF_BR_PRI_FILTER_BRIDGED, where nft's "priority filter" puts bridge chains.
var bridgeFilterPriority = nftables.ChainPriorityRef(-200)

// ---- expression helpers

// ifname is an interface name as the kernel compares it: IFNAMSIZ bytes, NUL padded.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}

func meta(key expr.MetaKey) expr.Any { return &expr.Meta{Key: key, Register: 1} }

func eq(data []byte) expr.Any  { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }
func neq(data []byte) expr.Any { return &expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: data} }

func payload(base expr.PayloadBase, offset, length uint32) expr.Any {
	return &expr.Payload{DestRegister: 1, Base: base, Offset: offset, Len: length}
}

func verdict(k expr.VerdictKind) expr.Any { return &expr.Verdict{Kind: k} }

func inSet(s *nftables.Set) expr.Any {
	return &expr.Lookup{SourceRegister: 1, SetName: s.Name, SetID: s.ID}
}

func vmap(s *nftables.Set) expr.Any {
	return &expr.Lookup{SourceRegister: 1, DestRegister: 0, IsDestRegSet: true, SetName: s.Name, SetID: s.ID}
}

func iif(name string) []expr.Any { return []expr.Any{meta(expr.MetaKeyIIFNAME), eq(ifname(name))} }
func oif(name string) []expr.Any { return []expr.Any{meta(expr.MetaKeyOIFNAME), eq(ifname(name))} }

// ctState matches packets whose conntrack state has any of bits.
func ctState(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: binaryutil.NativeEndian.PutUint32(0)},
		neq(binaryutil.NativeEndian.PutUint32(0)),
	}
}

var establishedRelated = ctState(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED)

// ipv4 matches IPv4 packets (in the inet family, which also sees IPv6).
func ipv4() []expr.Any {
	return []expr.Any{meta(expr.MetaKeyNFPROTO), eq([]byte{unix.NFPROTO_IPV4})}
}

func ipDaddr() expr.Any { return payload(expr.PayloadBaseNetworkHeader, 16, 4) }
func ipSaddr() expr.Any { return payload(expr.PayloadBaseNetworkHeader, 12, 4) }

func l4proto(p byte) []expr.Any { return []expr.Any{meta(expr.MetaKeyL4PROTO), eq([]byte{p})} }

func dport(port uint16) []expr.Any {
	return []expr.Any{payload(expr.PayloadBaseTransportHeader, 2, 2), eq(binaryutil.BigEndian.PutUint16(port))}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func one(e ...expr.Any) []expr.Any { return e }

// ---- base objects

// baseSpec is what Setup puts in the tables.
type baseSpec struct {
	bridge    string
	gateway   netip.Addr
	cidr      netip.Prefix
	uplink    string
	dns       bool // the forwarder runs: guests may query the gateway on port 53
	hostPorts []HostPort
	// guestOnlyPorts are TCP ports of the gateway address open to the guests and closed to everything else.
	guestOnlyPorts []uint16
}

// addBase queues the base objects: the tables, the shared sets and maps (created, never flushed: other managers'
// VMs may have elements there), and the base chains, flushed and refilled so that their rules are exactly these.
// Being one batch, the replacement is atomic.
func addBase(cc *nftables.Conn, b baseSpec) error {
	cc.AddTable(inetTable)
	cc.AddTable(bridgeTable)

	private := &nftables.Set{Table: inetTable, Name: setPrivate, KeyType: nftables.TypeIPAddr, Interval: true}
	if err := cc.AddSet(private, nil); err != nil {
		return fmt.Errorf("nftables set %s: %w", setPrivate, err)
	}
	cc.FlushSet(private)
	if err := cc.SetAddElements(private, rangeElements(prefixRanges(PrivateRanges))); err != nil {
		return fmt.Errorf("nftables set %s: %w", setPrivate, err)
	}
	egress := egressMap()
	if err := cc.AddSet(egress, nil); err != nil {
		return fmt.Errorf("nftables map %s: %w", mapEgress, err)
	}
	ports := portsMap()
	if err := cc.AddSet(ports, nil); err != nil {
		return fmt.Errorf("nftables map %s: %w", mapPorts, err)
	}

	accept := nftables.ChainPolicyAccept
	base := func(t *nftables.Table, name string, hook *nftables.ChainHook, prio *nftables.ChainPriority,
		typ nftables.ChainType) *nftables.Chain {
		c := cc.AddChain(&nftables.Chain{Name: name, Table: t, Hooknum: hook, Priority: prio, Type: typ, Policy: &accept})
		cc.FlushChain(c)
		return c
	}
	rule := func(c *nftables.Chain, exprs []expr.Any) {
		cc.AddRule(&nftables.Rule{Table: c.Table, Chain: c, Exprs: exprs})
	}
	br := b.bridge
	gw := b.gateway.AsSlice()

	// Forwarded traffic. The policy accepts: only traffic from or to the bridge is this table's business.
	fwd := base(inetTable, chainForward, nftables.ChainHookForward, nftables.ChainPriorityFilter, nftables.ChainTypeFilter)
	rule(fwd, cat(iif(br), oif(br), one(verdict(expr.VerdictDrop))))              // guest to guest, routed
	rule(fwd, cat(oif(br), establishedRelated, one(verdict(expr.VerdictAccept)))) // replies to guests
	rule(fwd, cat(oif(br), one(verdict(expr.VerdictDrop))))                       // new connections to guests
	rule(fwd, cat(iif(br), establishedRelated, one(verdict(expr.VerdictAccept)))) // guests' open connections
	rule(fwd, cat(iif(br), ipv4(), one(ipSaddr(), vmap(egress))))                 // each guest's own chain
	rule(fwd, cat(iif(br), one(verdict(expr.VerdictDrop))))                       // no VM has that source

	// Guests to the host itself (any of its addresses).
	in := base(inetTable, chainInput, nftables.ChainHookInput, nftables.ChainPriorityFilter, nftables.ChainTypeFilter)
	for _, p := range b.guestOnlyPorts {
		// Before anything accepts: from any interface but the bridge, the gateway's guest-only ports are closed.
		rule(in, cat(one(meta(expr.MetaKeyIIFNAME), neq(ifname(br))), ipv4(), one(ipDaddr(), eq(gw)),
			l4proto(unix.IPPROTO_TCP), dport(p), one(verdict(expr.VerdictDrop))))
	}
	rule(in, cat(iif(br), establishedRelated, one(verdict(expr.VerdictAccept))))
	toGW := cat(iif(br), ipv4(), one(ipDaddr(), eq(gw)))
	for _, p := range b.guestOnlyPorts {
		rule(in, cat(toGW, l4proto(unix.IPPROTO_TCP), dport(p), one(verdict(expr.VerdictAccept))))
	}
	if b.dns {
		rule(in, cat(toGW, l4proto(unix.IPPROTO_UDP), dport(53), one(verdict(expr.VerdictAccept))))
		rule(in, cat(toGW, l4proto(unix.IPPROTO_TCP), dport(53), one(verdict(expr.VerdictAccept))))
	}
	rule(in, cat(toGW, l4proto(unix.IPPROTO_ICMP), one(payload(expr.PayloadBaseTransportHeader, 0, 1),
		eq([]byte{8}), verdict(expr.VerdictAccept)))) // echo request
	for _, hp := range b.hostPorts {
		proto := byte(unix.IPPROTO_TCP)
		if hp.Proto == "udp" {
			proto = unix.IPPROTO_UDP
		}
		rule(in, cat(toGW, l4proto(proto), dport(hp.Port), one(verdict(expr.VerdictAccept))))
	}
	rule(in, cat(iif(br), one(verdict(expr.VerdictDrop))))

	// NAT out of the uplink.
	post := base(inetTable, chainPostrouting, nftables.ChainHookPostrouting, nftables.ChainPriorityNATSource,
		nftables.ChainTypeNAT)
	mask := net.CIDRMask(b.cidr.Bits(), 32)
	rule(post, cat(ipv4(), one(ipSaddr(), &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask,
		Xor: []byte{0, 0, 0, 0}}, eq(b.cidr.Addr().AsSlice())), oif(b.uplink), one(&expr.Masq{})))

	// Layer 2, for the TAPs only (they carry the device group TAPGroup; matching the bridge itself would need
	// meta ibrname, which kernels without CONFIG_NFT_BRIDGE_META lack): every frame a TAP sends goes through its
	// anti-spoofing chain, a TAP without one drops everything, and no frame goes from a TAP to another port.
	pre := base(bridgeTable, chainPrerouting, nftables.ChainHookPrerouting, bridgeFilterPriority, nftables.ChainTypeFilter)
	ours := []expr.Any{meta(expr.MetaKeyIIFGROUP), eq(binaryutil.NativeEndian.PutUint32(TAPGroup))}
	rule(pre, cat(ours, one(meta(expr.MetaKeyIIFNAME), vmap(ports))))
	rule(pre, cat(ours, one(&expr.Counter{}, verdict(expr.VerdictDrop))))
	bfwd := base(bridgeTable, chainForward, nftables.ChainHookForward, bridgeFilterPriority, nftables.ChainTypeFilter)
	rule(bfwd, cat(ours, one(verdict(expr.VerdictDrop))))
	return nil
}

func egressMap() *nftables.Set {
	return &nftables.Set{Table: inetTable, Name: mapEgress, IsMap: true, KeyType: nftables.TypeIPAddr,
		DataType: nftables.TypeVerdict}
}

func portsMap() *nftables.Set {
	// Host byte order is how nft marks an ifname key; without it `nft list` shows the names as "".
	return &nftables.Set{Table: bridgeTable, Name: mapPorts, IsMap: true, KeyType: nftables.TypeIFName,
		DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
}

// ---- per-VM objects

// vmSpec is one VM's share of the tables.
type vmSpec struct {
	tap    string
	ip     netip.Addr
	mac    net.HardwareAddr
	policy Policy // normalised
}

// addVM queues a VM's objects: its anti-spoofing chain (bridge table) and its egress chain with its sets (inet
// table), each flushed and refilled, then the map elements that send its traffic there. The set of addresses the
// DNS forwarder learnt is created but not flushed, so a repeated Attach keeps what the guest resolved.
func addVM(cc *nftables.Conn, v vmSpec) error {
	mac := []byte(v.mac)
	ip := v.ip.AsSlice()
	rule := func(c *nftables.Chain, exprs []expr.Any) {
		cc.AddRule(&nftables.Rule{Table: c.Table, Chain: c, Exprs: exprs})
	}

	spoof := cc.AddChain(&nftables.Chain{Name: spoofChain(v.tap), Table: bridgeTable})
	cc.FlushChain(spoof)
	const ethIP, ethARP = 0x0800, 0x0806
	proto := func(p uint16) []expr.Any {
		return []expr.Any{meta(expr.MetaKeyPROTOCOL), eq(binaryutil.BigEndian.PutUint16(p))}
	}
	// Each drop counts, so that spoofing attempts show in `nft list chain bridge aetherium spoof_<tap>`.
	drop := func() []expr.Any { return one(&expr.Counter{}, verdict(expr.VerdictDrop)) }
	rule(spoof, cat(one(payload(expr.PayloadBaseLLHeader, 6, 6), neq(mac)), drop())) // ether saddr
	rule(spoof, cat(proto(ethIP), one(payload(expr.PayloadBaseNetworkHeader, 12, 4), neq(ip)), drop()))
	rule(spoof, cat(proto(ethARP), one(payload(expr.PayloadBaseNetworkHeader, 8, 6), neq(mac)), drop()))
	rule(spoof, cat(proto(ethARP), one(payload(expr.PayloadBaseNetworkHeader, 14, 4), neq(ip)), drop()))
	rule(spoof, cat(proto(ethIP), one(verdict(expr.VerdictAccept))))
	rule(spoof, cat(proto(ethARP), one(verdict(expr.VerdictAccept))))
	rule(spoof, drop()) // IPv6, VLAN tags and the rest

	chain := cc.AddChain(&nftables.Chain{Name: vmChain(v.tap), Table: inetTable})
	cc.FlushChain(chain)
	p := v.policy
	if p.hasDomains() {
		// The forwarder is the only resolver such a guest may use, or its domain rules would be moot.
		for _, pr := range []byte{unix.IPPROTO_UDP, unix.IPPROTO_TCP} {
			for _, port := range []uint16{53, 853} {
				rule(chain, cat(l4proto(pr), dport(port), drop()))
			}
		}
	}
	acceptRanges, dropRanges := cidrVerdicts(p.AllowCIDRs, p.DenyCIDRs)
	for _, s := range []struct {
		name   string
		ranges []addrRange
		kind   expr.VerdictKind
	}{{denySet(v.tap), dropRanges, expr.VerdictDrop}, {allowSet(v.tap), acceptRanges, expr.VerdictAccept}} {
		if len(s.ranges) == 0 {
			continue
		}
		set := &nftables.Set{Table: inetTable, Name: s.name, KeyType: nftables.TypeIPAddr, Interval: true}
		if err := cc.AddSet(set, nil); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.name, err)
		}
		cc.FlushSet(set)
		if err := cc.SetAddElements(set, rangeElements(s.ranges)); err != nil {
			return fmt.Errorf("nftables set %s: %w", s.name, err)
		}
		rule(chain, cat(ipv4(), one(ipDaddr(), inSet(set), verdict(s.kind))))
	}
	private := &nftables.Set{Table: inetTable, Name: setPrivate}
	rule(chain, cat(ipv4(), one(ipDaddr(), inSet(private), verdict(expr.VerdictDrop))))
	if len(p.AllowDomains) > 0 {
		learnt := dnsSetOf(v.tap)
		if err := cc.AddSet(learnt, nil); err != nil {
			return fmt.Errorf("nftables set %s: %w", learnt.Name, err)
		}
		rule(chain, cat(ipv4(), one(ipDaddr(), inSet(learnt), verdict(expr.VerdictAccept))))
		rule(chain, one(verdict(expr.VerdictDrop)))
	} else {
		rule(chain, one(verdict(expr.VerdictAccept)))
	}

	if err := cc.SetAddElements(egressMap(), []nftables.SetElement{{Key: ip,
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain.Name}}}); err != nil {
		return fmt.Errorf("nftables map %s: %w", mapEgress, err)
	}
	if err := cc.SetAddElements(portsMap(), []nftables.SetElement{{Key: ifname(v.tap),
		VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: spoof.Name}}}); err != nil {
		return fmt.Errorf("nftables map %s: %w", mapPorts, err)
	}
	return nil
}

func dnsSetOf(tap string) *nftables.Set {
	return &nftables.Set{Table: inetTable, Name: dnsSet(tap), KeyType: nftables.TypeIPAddr, HasTimeout: true}
}

// tableState is what the manager's tables hold, read back for removals and reconciliation.
type tableState struct {
	inetChains   map[string]bool
	bridgeChains map[string]bool
	inetSets     map[string]bool
	// egress maps guest addresses to the chain they jump to; ports maps TAP names to theirs.
	egress map[netip.Addr]string
	ports  map[string]string
}

// readTables lists the manager's tables. Missing tables read as empty.
func readTables(cc *nftables.Conn) (*tableState, error) {
	st := &tableState{inetChains: map[string]bool{}, bridgeChains: map[string]bool{}, inetSets: map[string]bool{},
		egress: map[netip.Addr]string{}, ports: map[string]string{}}
	chains, err := cc.ListChains()
	if err != nil {
		return nil, fmt.Errorf("list nftables chains: %w", err)
	}
	haveInet, haveBridge := false, false
	for _, c := range chains {
		if c.Table == nil || c.Table.Name != TableName {
			continue
		}
		switch c.Table.Family {
		case nftables.TableFamilyINet:
			st.inetChains[c.Name], haveInet = true, true
		case nftables.TableFamilyBridge:
			st.bridgeChains[c.Name], haveBridge = true, true
		}
	}
	if haveInet {
		sets, err := cc.GetSets(inetTable)
		if err != nil {
			return nil, fmt.Errorf("list nftables sets of inet %s: %w", TableName, err)
		}
		for _, s := range sets {
			st.inetSets[s.Name] = true
		}
		if st.inetSets[mapEgress] {
			els, err := cc.GetSetElements(egressMap())
			if err != nil {
				return nil, fmt.Errorf("list nftables map %s: %w", mapEgress, err)
			}
			for _, e := range els {
				if a, ok := netip.AddrFromSlice(e.Key); ok {
					st.egress[a] = verdictChain(e.Val)
				}
			}
		}
	}
	if haveBridge {
		sets, err := cc.GetSets(bridgeTable)
		if err != nil {
			return nil, fmt.Errorf("list nftables sets of bridge %s: %w", TableName, err)
		}
		for _, s := range sets {
			if s.Name != mapPorts {
				continue
			}
			els, err := cc.GetSetElements(portsMap())
			if err != nil {
				return nil, fmt.Errorf("list nftables map %s: %w", mapPorts, err)
			}
			for _, e := range els {
				st.ports[strings.TrimRight(string(e.Key), "\x00")] = verdictChain(e.Val)
			}
		}
	}
	return st, nil
}

// verdictChain returns the chain a vmap element's verdict names: the library hands over the raw
// NFTA_DATA_VERDICT attributes (code, then chain).
func verdictChain(b []byte) string {
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER)
		if l < 4 || l > len(b) {
			return ""
		}
		if typ == unix.NFTA_VERDICT_CHAIN {
			return strings.TrimRight(string(b[4:l]), "\x00")
		}
		adv := (l + 3) &^ 3
		if adv > len(b) {
			return ""
		}
		b = b[adv:]
	}
	return ""
}

// removeVM queues the removal of the objects of the VM with TAP tap that st shows, map elements first (a chain
// cannot go while an element jumps to it).
func removeVM(cc *nftables.Conn, st *tableState, tap string) error {
	var errs []error
	var elems []nftables.SetElement
	for a, c := range st.egress {
		if c == vmChain(tap) {
			elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	if len(elems) > 0 {
		errs = append(errs, cc.SetDeleteElements(egressMap(), elems))
	}
	if _, ok := st.ports[tap]; ok {
		errs = append(errs, cc.SetDeleteElements(portsMap(), []nftables.SetElement{{Key: ifname(tap)}}))
	}
	if st.inetChains[vmChain(tap)] {
		c := &nftables.Chain{Name: vmChain(tap), Table: inetTable}
		cc.FlushChain(c)
		cc.DelChain(c)
	}
	for _, name := range []string{allowSet(tap), denySet(tap), dnsSet(tap)} {
		if st.inetSets[name] {
			cc.DelSet(&nftables.Set{Table: inetTable, Name: name})
		}
	}
	if st.bridgeChains[spoofChain(tap)] {
		c := &nftables.Chain{Name: spoofChain(tap), Table: bridgeTable}
		cc.FlushChain(c)
		cc.DelChain(c)
	}
	return errors.Join(errs...)
}

// ---- ranges and set elements

func prefixRanges(ps []netip.Prefix) []addrRange {
	out := make([]addrRange, len(ps))
	for i, p := range ps {
		lo := u32(p.Masked().Addr())
		out[i] = addrRange{addrOf(lo), addrOf(lo + 1<<(32-p.Bits()) - 1)}
	}
	return out
}

// rangeElements encodes disjoint ranges as interval set elements: each range opens at its first address and closes
// (an interval-end element) at the address after its last; a range that reaches 255.255.255.255 does not close.
func rangeElements(rs []addrRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, r := range rs {
		out = append(out, nftables.SetElement{Key: r.From.AsSlice()})
		if end := u32(r.To) + 1; end <= 0xffffffff {
			out = append(out, nftables.SetElement{Key: addrOf(end).AsSlice(), IntervalEnd: true})
		}
	}
	return out
}

// learnElements are the addresses the forwarder returned, each for ttl.
func learnElements(addrs []netip.Addr, ttl time.Duration) []nftables.SetElement {
	out := make([]nftables.SetElement, len(addrs))
	for i, a := range addrs {
		out[i] = nftables.SetElement{Key: a.AsSlice(), Timeout: ttl}
	}
	return out
}
