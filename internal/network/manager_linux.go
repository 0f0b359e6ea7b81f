//go:build linux

package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/aetherium/aetherium/internal/store"
)

// Config configures a Manager. Only Leases is required.
type Config struct {
	// Bridge is the bridge's name. Default DefaultBridge.
	Bridge string
	// CIDR is the guests' IPv4 network; the gateway (on the bridge) is its first host address. /8 to /30.
	// Default DefaultCIDR.
	CIDR netip.Prefix
	// Uplink is the interface guest traffic leaves through, masqueraded. Default: the interface of the IPv4
	// default route, looked up at every Setup.
	Uplink string
	// GuestDNS are the resolvers given to guests (Attachment.DNS). Default: the gateway, where the forwarder
	// answers. Guests whose policy has domain rules get the gateway whatever this says.
	GuestDNS []netip.Addr
	// Upstreams are the servers the DNS forwarder asks. Default: the nameservers of /etc/resolv.conf (a local stub
	// such as 127.0.0.53 works: the forwarder runs on the host).
	Upstreams []netip.AddrPort
	// DisableDNSForwarder runs no forwarder: guests need GuestDNS, and policies with domain rules are refused.
	DisableDNSForwarder bool
	// AllowHostPorts are services on the gateway address guests may reach, besides DNS and ICMP echo.
	AllowHostPorts []HostPort
	// GuestOnlyPorts are TCP ports on the gateway address that this bridge's guests may reach and nothing else
	// may: connections to them from any other interface (the uplink, loopback: host processes) are dropped. The
	// worker's credential proxy listens there; it tells its guests apart by their source addresses, which the
	// anti-spoofing rules pin to each TAP.
	GuestOnlyPorts []uint16
	// Leases stores the address leases. Required.
	Leases store.LeaseStore
	// Scope names the lease pool. Default: "<hostname>/<CIDR>", so that the workers of one host share it.
	Scope string
	// Owner names this manager (the worker id): Reconcile removes only the TAPs and leases of its owner.
	// Default DefaultOwner.
	Owner string
	// NetNS is the network namespace to work in; zero (or netns.None()) means the current one. The manager does
	// not close it.
	NetNS netns.NsHandle
	// TAPOwner is the uid allowed to open the TAP devices besides CAP_NET_ADMIN holders: QEMU's user when it does
	// not run as root. Default 0 (root).
	TAPOwner uint32
	Logger   *slog.Logger
}

// Manager owns a bridge, its nftables tables and the TAPs of the VMs it attaches. It is safe for concurrent use.
type Manager struct {
	cfg       Config
	log       *slog.Logger
	gw        netip.Addr
	bridgeMAC net.HardwareAddr
	ns        nsRunner
	nl        *netlink.Handle
	upstreams []string

	// mu serialises the host changes (netlink, nftables) of Setup, Attach, Detach and Reconcile, and Close. It is
	// never held across a lease write: the database may be slow or remote, and one VM's lease must not hold up
	// every other VM's attach on the host. vms keeps a VM's lease and host side consistent instead.
	mu  sync.Mutex
	fwd *forwarder
	// vms is one lock per VM, held by Attach and Detach from the lease to the TAP (or back), and by Reconcile for
	// the VMs it removes: what stops a VM's lease being released while its TAP is being made, or re-leased while
	// its TAP is being removed.
	vms vmLocks
	rmu sync.Mutex // serialises Reconcile

	gmu    sync.RWMutex // guards guests, read by the DNS forwarder
	guests map[string]*guest
	closed bool
}

// guest is a VM this manager attached.
type guest struct {
	att    Attachment
	policy Policy // normalised
}

// New checks cfg and returns a manager. It changes nothing on the host: call Setup.
func New(cfg Config) (*Manager, error) {
	if cfg.Leases == nil {
		return nil, fmt.Errorf("%w: network manager: Config.Leases is required", ErrInvalid)
	}
	if cfg.Bridge == "" {
		cfg.Bridge = DefaultBridge
	}
	if len(cfg.Bridge) > 15 || cfg.Bridge == "." || cfg.Bridge == ".." {
		return nil, fmt.Errorf("%w: bridge name %q: at most 15 characters", ErrInvalid, cfg.Bridge)
	}
	if !cfg.CIDR.IsValid() {
		cfg.CIDR = DefaultCIDR
	}
	if err := store.CheckLeaseRequest(store.LeaseRequest{Scope: "x", VMID: "x", Prefix: cfg.CIDR}); err != nil {
		return nil, fmt.Errorf("%w: network manager: CIDR: %w", ErrInvalid, err)
	}
	if cfg.Owner == "" {
		cfg.Owner = DefaultOwner
	}
	if err := checkID("owner", cfg.Owner); err != nil {
		return nil, err
	}
	if cfg.Scope == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("network manager: default lease scope: hostname: %w (set Config.Scope)", err)
		}
		cfg.Scope = host + "/" + cfg.CIDR.String()
	}
	for _, hp := range cfg.AllowHostPorts {
		if (hp.Proto != "tcp" && hp.Proto != "udp") || hp.Port == 0 {
			return nil, fmt.Errorf("%w: allowed host port %s/%d: want tcp or udp and a port", ErrInvalid, hp.Proto, hp.Port)
		}
	}
	for _, p := range cfg.GuestOnlyPorts {
		if p == 0 || p == 53 {
			return nil, fmt.Errorf("%w: guest-only port %d: want a TCP port other than 53", ErrInvalid, p)
		}
	}
	for _, d := range cfg.GuestDNS {
		if !d.Is4() {
			return nil, fmt.Errorf("%w: guest DNS server %s is not IPv4", ErrInvalid, d)
		}
	}
	if cfg.DisableDNSForwarder && len(cfg.GuestDNS) == 0 {
		return nil, fmt.Errorf("%w: without the DNS forwarder, Config.GuestDNS must name the guests' resolvers", ErrInvalid)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{cfg: cfg, log: log.With("component", "network", "bridge", cfg.Bridge), guests: map[string]*guest{},
		ns: nsRunner{ns: -1}}
	m.gw = cfg.CIDR.Addr().Next()
	m.bridgeMAC, _ = net.ParseMAC(store.LeaseMAC(m.gw)) // the gateway is never leased, so no guest has this MAC
	if cfg.NetNS > 0 {
		m.ns.ns = cfg.NetNS
	}
	if !cfg.DisableDNSForwarder {
		if len(cfg.Upstreams) > 0 {
			for _, u := range cfg.Upstreams {
				m.upstreams = append(m.upstreams, u.String())
			}
		} else {
			ups, err := resolvConfServers("/etc/resolv.conf")
			if err != nil || len(ups) == 0 {
				m.log.Warn("dns forwarder has no upstream servers: guests' queries will fail (set Config.Upstreams)",
					"err", err)
			}
			m.upstreams = ups
		}
	}
	var err error
	if m.ns.current() {
		m.nl, err = netlink.NewHandle()
	} else {
		m.nl, err = netlink.NewHandleAt(m.ns.ns)
	}
	if err != nil {
		return nil, fmt.Errorf("network manager: netlink: %w", err)
	}
	return m, nil
}

// Gateway is the bridge's address, the guests' default gateway.
func (m *Manager) Gateway() netip.Addr { return m.gw }

// Scope is the lease pool this manager allocates from.
func (m *Manager) Scope() string { return m.cfg.Scope }

// nft returns a fresh nftables connection to the namespace. Each operation takes its own: a Conn buffers one batch.
func (m *Manager) nft() (*nftables.Conn, error) {
	big := nftables.WithSockOptions(bigBuffers)
	if m.ns.current() {
		return nftables.New(big)
	}
	return nftables.New(nftables.WithNetNSFd(int(m.ns.ns)), big)
}

func (m *Manager) guestByIP(ip netip.Addr) (*guest, bool) {
	m.gmu.RLock()
	defer m.gmu.RUnlock()
	for _, g := range m.guests {
		if g.att.IP == ip {
			return g, true
		}
	}
	return nil, false
}

// Close stops the DNS forwarder. The bridge, the tables and the TAPs stay: guests keep their network while the
// worker restarts, and the next manager's Setup and Attach take them over.
func (m *Manager) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	if m.fwd != nil {
		m.fwd.stop()
		<-m.fwd.done
		m.fwd = nil
	}
	m.nl.Close()
	return nil
}

var errClosed = errors.New("network manager is closed")

// Setup creates or repairs the host side: the bridge with the gateway address, IPv4 forwarding, the nftables
// tables with the base rules and the rules of every VM this manager attached, the TAPs' bridge membership, and the
// DNS forwarder. It is idempotent; Reconcile runs it too.
func (m *Manager) Setup(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return errClosed
	}
	return m.setup(ctx)
}

func (m *Manager) setup(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	uplink, err := m.uplink()
	if err != nil {
		return err
	}
	br, err := m.ensureBridge()
	if err != nil {
		return err
	}
	if err := m.ns.sysctl("net/ipv4/ip_forward", "1", false); err != nil {
		return fmt.Errorf("network setup: enable IPv4 forwarding: %w", err)
	}
	if err := m.adoptTAPs(br); err != nil {
		return err
	}
	cc, err := m.nft()
	if err != nil {
		return fmt.Errorf("network setup: nftables: %w", err)
	}
	spec := baseSpec{bridge: m.cfg.Bridge, gateway: m.gw, cidr: m.cfg.CIDR, uplink: uplink,
		dns: !m.cfg.DisableDNSForwarder, hostPorts: m.cfg.AllowHostPorts, guestOnlyPorts: m.cfg.GuestOnlyPorts}
	if err := addBase(cc, spec); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	m.gmu.RLock()
	for _, g := range m.guests {
		if err = addVM(cc, m.vmSpec(g)); err != nil {
			break
		}
	}
	m.gmu.RUnlock()
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	if err := cc.Flush(); err != nil {
		return fmt.Errorf("network setup: write nftables tables inet/bridge %s: %w", TableName, err)
	}
	if !m.cfg.DisableDNSForwarder && m.fwd == nil {
		fwd, err := startForwarder(m.ns, netip.AddrPortFrom(m.gw, 53), m.upstreams, m, m.log)
		if err != nil {
			return fmt.Errorf("network setup: %w (another worker's network on this host may own the gateway's "+
				"DNS port: run one networked worker per host, or network: off on the others)", err)
		}
		m.fwd = fwd
	}
	m.log.Debug("network set up", "cidr", m.cfg.CIDR, "gateway", m.gw, "uplink", uplink,
		"host_ports", hostPortsString(m.cfg.AllowHostPorts))
	return nil
}

// uplink returns Config.Uplink, or the interface of the default route.
func (m *Manager) uplink() (string, error) {
	if m.cfg.Uplink != "" {
		return m.cfg.Uplink, nil
	}
	routes, err := routeList(m.nl)
	if err != nil {
		return "", fmt.Errorf("network setup: find the uplink: %w", err)
	}
	best, bestPrio := 0, math.MaxInt
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
		}
		idx := r.LinkIndex
		if idx == 0 && len(r.MultiPath) > 0 {
			idx = r.MultiPath[0].LinkIndex
		}
		if idx != 0 && r.Priority < bestPrio {
			best, bestPrio = idx, r.Priority
		}
	}
	if best == 0 {
		return "", errors.New("network setup: no IPv4 default route to find the uplink by: set Config.Uplink")
	}
	l, err := m.nl.LinkByIndex(best)
	if err != nil {
		return "", fmt.Errorf("network setup: uplink (link %d of the default route): %w", best, err)
	}
	return l.Attrs().Name, nil
}

// ensureBridge creates the bridge, or checks that the existing one is ours, and brings it to its configuration.
func (m *Manager) ensureBridge() (netlink.Link, error) {
	name := m.cfg.Bridge
	l, err := linkByName(m.nl, name)
	if err != nil {
		return nil, fmt.Errorf("network setup: %w", err)
	}
	if l == nil {
		if err := m.checkOnlyBridge(); err != nil {
			return nil, err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: m.bridgeMAC}}
		if err := m.nl.LinkAdd(br); err != nil {
			return nil, fmt.Errorf("network setup: create bridge %s: %w", name, err)
		}
		if l, err = m.nl.LinkByName(name); err != nil {
			return nil, fmt.Errorf("network setup: bridge %s: %w", name, err)
		}
		if err := m.nl.LinkSetAlias(l, bridgeAlias); err != nil {
			return nil, fmt.Errorf("network setup: bridge %s: set alias: %w", name, err)
		}
		m.log.Info("bridge created", "gateway", m.gw)
	} else {
		if _, ok := l.(*netlink.Bridge); !ok || l.Attrs().Alias != bridgeAlias {
			return nil, fmt.Errorf("network setup: link %s exists but is not a bridge made by aetherium (type %s, "+
				"alias %q): remove it or set another bridge name", name, l.Type(), l.Attrs().Alias)
		}
		if err := m.checkOnlyBridge(); err != nil {
			return nil, err
		}
		if !slices.Equal(l.Attrs().HardwareAddr, m.bridgeMAC) {
			if err := m.nl.LinkSetHardwareAddr(l, m.bridgeMAC); err != nil {
				return nil, fmt.Errorf("network setup: bridge %s: set MAC: %w", name, err)
			}
		}
	}
	// The guests speak IPv4 only; an IPv6 link-local address on the bridge would only invite traffic.
	if err := m.ns.sysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1", true); err != nil {
		return nil, fmt.Errorf("network setup: bridge %s: %w", name, err)
	}
	addrs, err := addrList(m.nl, l)
	if err != nil {
		return nil, fmt.Errorf("network setup: %w", err)
	}
	want := &net.IPNet{IP: m.gw.AsSlice(), Mask: net.CIDRMask(m.cfg.CIDR.Bits(), 32)}
	have := false
	for _, a := range addrs {
		if a.IPNet.IP.Equal(want.IP) && a.IPNet.Mask.String() == want.Mask.String() {
			have = true
		}
	}
	if !have {
		if err := m.nl.AddrReplace(l, &netlink.Addr{IPNet: want}); err != nil {
			return nil, fmt.Errorf("network setup: bridge %s: add gateway address %s: %w", name, want, err)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("network setup: bridge %s: set up: %w", name, err)
		}
	}
	return l, nil
}

// checkOnlyBridge refuses a second aetherium bridge in the namespace: the nftables tables are one per namespace and
// each Setup writes its own bridge, uplink and CIDR into their base chains, so a manager of another bridge would
// silently take the first one's isolation away. Workers of one host share one bridge (and one lease scope).
func (m *Manager) checkOnlyBridge() error {
	links, err := linkList(m.nl)
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Bridge); ok && l.Attrs().Alias == bridgeAlias && l.Attrs().Name != m.cfg.Bridge {
			return fmt.Errorf("network setup: this host already has the aetherium bridge %s; the firewall tables are "+
				"shared, so every worker of a host must use that bridge (network_bridge %s and its CIDR), or remove it "+
				"first", l.Attrs().Name, l.Attrs().Name)
		}
	}
	return nil
}

// adoptTAPs puts every TAP this package made (any owner's: they share the bridge) back on the bridge as an
// isolated port, up: what a deleted and recreated bridge needs.
func (m *Manager) adoptTAPs(br netlink.Link) error {
	links, err := linkList(m.nl)
	if err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	for _, l := range links {
		if _, _, ok := parseAlias(l.Attrs().Alias); !ok || !isTAPName(l.Attrs().Name) {
			continue
		}
		if err := m.plugTAP(l, br); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
	}
	return nil
}

// plugTAP makes l an isolated, up port of br.
func (m *Manager) plugTAP(l, br netlink.Link) error {
	name := l.Attrs().Name
	if l.Attrs().Group != TAPGroup {
		if err := m.nl.LinkSetGroup(l, TAPGroup); err != nil {
			return fmt.Errorf("tap %s: set device group: %w", name, err)
		}
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		if err := m.nl.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("tap %s: attach to bridge %s: %w", name, br.Attrs().Name, err)
		}
	}
	// Isolated ports cannot send to each other, whatever the tables say: the second wall between guests.
	if err := m.nl.LinkSetIsolated(l, true); err != nil {
		return fmt.Errorf("tap %s: isolate the bridge port: %w", name, err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := m.nl.LinkSetUp(l); err != nil {
			return fmt.Errorf("tap %s: set up: %w", name, err)
		}
	}
	return nil
}

func (m *Manager) vmSpec(g *guest) vmSpec {
	mac, _ := net.ParseMAC(g.att.MAC)
	return vmSpec{tap: g.att.TAP, ip: g.att.IP, mac: mac, policy: g.policy}
}

// Attach gives VM vmID its network: a lease, a TAP on the bridge and its rules (anti-spoofing and policy).
// Attaching an attached VM again (a retried task, a restarted worker) checks and repairs the same TAP and lease,
// and applies policy. Setup must have run.
func (m *Manager) Attach(ctx context.Context, vmID string, policy Policy) (Attachment, error) {
	if err := checkID("vm id", vmID); err != nil {
		return Attachment{}, err
	}
	p, err := policy.normalize()
	if err != nil {
		return Attachment{}, err
	}
	if p.hasDomains() && m.cfg.DisableDNSForwarder {
		return Attachment{}, fmt.Errorf("%w: vm %s: a policy with domain rules needs the DNS forwarder, which is "+
			"disabled", ErrInvalid, vmID)
	}
	unlock := m.vms.lock(vmID)
	defer unlock()
	m.gmu.RLock()
	_, attached := m.guests[vmID]
	m.gmu.RUnlock()
	// The lease first, outside the host-wide lock; the VM's lock keeps its Detach and Reconcile out until the TAP
	// exists.
	lease, err := m.cfg.Leases.Acquire(ctx, store.LeaseRequest{Scope: m.cfg.Scope, VMID: vmID, Owner: m.cfg.Owner,
		Prefix: m.cfg.CIDR})
	if err != nil {
		return Attachment{}, fmt.Errorf("attach vm %s: lease an address: %w", vmID, err)
	}
	att := Attachment{VMID: vmID, TAP: TAPName(vmID), MAC: lease.MAC, IP: lease.IP, PrefixLen: m.cfg.CIDR.Bits(),
		Gateway: m.gw, DNS: m.cfg.GuestDNS}
	if len(att.DNS) == 0 || p.hasDomains() {
		att.DNS = []netip.Addr{m.gw}
	}
	g := &guest{att: att, policy: p}
	m.mu.Lock()
	if m.closed {
		// The lease stays: with the netlink handle closed nothing can tell whether a TAP of this VM still uses it.
		// Reconcile releases it if the VM is gone.
		m.mu.Unlock()
		return Attachment{}, errClosed
	}
	err = m.attach(g)
	if err == nil {
		m.gmu.Lock()
		m.guests[vmID] = g
		m.gmu.Unlock()
	}
	var undoErr error
	if err != nil && !attached {
		// A first attach that failed takes back what it made, then the lease: an address is released only once
		// no TAP or rule of it is left. A VM that was attached keeps its previous attachment.
		undoErr = m.detachHost(vmID, att.TAP, nil)
	}
	m.mu.Unlock()
	if err != nil {
		if !attached {
			if undoErr == nil {
				undoErr = m.cfg.Leases.Release(context.WithoutCancel(ctx), m.cfg.Scope, vmID)
			}
			if undoErr != nil {
				m.log.Warn("failed attach not undone; Detach or Reconcile removes the rest", "vm_id", vmID, "err", undoErr)
			}
		}
		return Attachment{}, fmt.Errorf("attach vm %s: %w", vmID, err)
	}
	m.log.Info("vm attached", "vm_id", vmID, "tap", att.TAP, "ip", att.IP, "mac", att.MAC)
	return att, nil
}

// attach creates (or checks) the TAP, then the rules: a TAP without rules yet drops everything (its port is not in
// the ports map), so there is never a moment the guest is unfiltered.
func (m *Manager) attach(g *guest) error {
	br, err := linkByName(m.nl, m.cfg.Bridge)
	if err != nil {
		return err
	}
	if br == nil {
		return fmt.Errorf("bridge %s does not exist: run Setup first", m.cfg.Bridge)
	}
	tap, err := m.ensureTAP(g.att.TAP, g.att.VMID)
	if err != nil {
		return err
	}
	if err := m.plugTAP(tap, br); err != nil {
		return err
	}
	cc, err := m.nft()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if err := addVM(cc, m.vmSpec(g)); err != nil {
		return err
	}
	if err := cc.Flush(); err != nil {
		return fmt.Errorf("write the vm's nftables rules (has Setup run?): %w", err)
	}
	return nil
}

// ensureTAP returns VM vmID's TAP, creating it if needed. A link of that name that is not this VM's TAP is an
// error, never reused.
func (m *Manager) ensureTAP(name, vmID string) (netlink.Link, error) {
	alias := linkAlias(m.cfg.Owner, vmID)
	l, err := linkByName(m.nl, name)
	if err != nil {
		return nil, err
	}
	if l != nil {
		owner, vm, ok := parseAlias(l.Attrs().Alias)
		if _, isTap := l.(*netlink.Tuntap); !isTap || !ok || vm != vmID {
			return nil, fmt.Errorf("link %s exists and is not the TAP of vm %s (type %s, alias %q)", name, vmID,
				l.Type(), l.Attrs().Alias)
		}
		if owner != m.cfg.Owner { // the VM moved to this worker
			if err := m.nl.LinkSetAlias(l, alias); err != nil {
				return nil, fmt.Errorf("tap %s: set alias: %w", name, err)
			}
		}
		return l, nil
	}
	tap := &netlink.Tuntap{
		LinkAttrs: netlink.LinkAttrs{Name: name},
		Mode:      netlink.TUNTAP_MODE_TAP,
		// One queue, no packet information header, virtio-net headers (QEMU's offloads). QEMU sets its own flags
		// when it attaches; multi-queue must match, hence off here as there.
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR,
		Owner: m.cfg.TAPOwner,
		// The ioctls cannot leave the group unset; gid 0 is the one group that grants nothing root lacks.
		Group: 0,
	}
	// /dev/net/tun makes the device in the namespace of the thread that opens it.
	err = m.ns.do(func() error { return m.nl.LinkAdd(tap) })
	if err != nil {
		return nil, fmt.Errorf("create tap %s: %w", name, err)
	}
	if l, err = m.nl.LinkByName(name); err != nil {
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	// The group first: from then on the layer-2 rules drop what the TAP sends until its own chain exists.
	if err := m.nl.LinkSetGroup(l, TAPGroup); err != nil {
		_ = m.nl.LinkDel(l)
		return nil, fmt.Errorf("tap %s: set device group: %w", name, err)
	}
	if err := m.nl.LinkSetAlias(l, alias); err != nil {
		_ = m.nl.LinkDel(l)
		return nil, fmt.Errorf("tap %s: set alias: %w", name, err)
	}
	if err := m.ns.sysctl("net/ipv6/conf/"+name+"/disable_ipv6", "1", true); err != nil {
		_ = m.nl.LinkDel(l)
		return nil, fmt.Errorf("tap %s: %w", name, err)
	}
	return l, nil
}

// Detach removes VM vmID's rules, its TAP and its lease, in that order (an address is never leased again while
// rules for it remain). Detaching a VM that has none of them succeeds.
func (m *Manager) Detach(ctx context.Context, vmID string) error {
	if err := checkID("vm id", vmID); err != nil {
		return err
	}
	unlock := m.vms.lock(vmID)
	defer unlock()
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errClosed
	}
	err := m.detachHost(vmID, TAPName(vmID), nil)
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("detach vm %s: %w", vmID, err)
	}
	// After the host side, outside the host-wide lock: the VM's lock keeps a new Attach of it waiting until then.
	if err := m.cfg.Leases.Release(ctx, m.cfg.Scope, vmID); err != nil {
		return fmt.Errorf("detach vm %s: release lease: %w", vmID, err)
	}
	m.log.Info("vm detached", "vm_id", vmID)
	return nil
}

// detachHost removes a VM's rules and TAP (not its lease); st is the tables' state when the caller has read it
// already. m.mu is held.
func (m *Manager) detachHost(vmID, tap string, st *tableState) error {
	if err := m.removeRules(tap, st); err != nil {
		return err
	}
	if m.fwd != nil {
		m.fwd.forget(tap)
	}
	m.gmu.Lock()
	delete(m.guests, vmID)
	m.gmu.Unlock()
	l, err := linkByName(m.nl, tap)
	if err != nil {
		return err
	}
	if l != nil {
		if _, vm, ok := parseAlias(l.Attrs().Alias); ok && vm == vmID {
			if err := m.nl.LinkDel(l); err != nil {
				return fmt.Errorf("delete tap %s: %w", tap, err)
			}
		}
	}
	return nil
}

func (m *Manager) removeRules(tap string, st *tableState) error {
	cc, err := m.nft()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	if st == nil {
		if st, err = readTables(cc); err != nil {
			return err
		}
	}
	if err := removeVM(cc, st, tap); err != nil {
		return err
	}
	if err := cc.Flush(); err != nil {
		return fmt.Errorf("remove the nftables rules of tap %s: %w", tap, err)
	}
	return nil
}

// Reconcile makes the host match keep, the VMs of this owner that still exist: it repairs Setup's drift, removes
// this owner's TAPs, rules and leases of VMs not in keep, and removes per-VM rules whose TAP is gone (what a crash
// half way through Detach leaves). Other owners' VMs and links this package did not create are left alone, and so
// is a VM whose Attach or Detach is in progress: that call finishes its work.
func (m *Manager) Reconcile(ctx context.Context, keep []string) error {
	m.rmu.Lock()
	defer m.rmu.Unlock()
	keepSet := map[string]bool{}
	for _, id := range keep {
		keepSet[id] = true
	}
	removed, errs, err := m.reconcileHost(ctx, keepSet)
	if err != nil {
		return err
	}
	// The leases, outside the host-wide lock. Those of the VMs just removed first: their locks are still held.
	done := map[string]bool{}
	for _, r := range removed {
		if err := m.cfg.Leases.Release(ctx, m.cfg.Scope, r.vmID); err != nil {
			errs = append(errs, fmt.Errorf("release lease of vm %s: %w", r.vmID, err))
		}
		done[r.vmID] = true
		r.unlock()
	}
	leases, err := m.cfg.Leases.List(ctx, m.cfg.Scope)
	if err != nil {
		errs = append(errs, fmt.Errorf("list leases: %w", err))
	}
	for _, l := range leases {
		if l.Owner != m.cfg.Owner || keepSet[l.VMID] || done[l.VMID] {
			continue
		}
		if err := m.releaseIfUnused(ctx, l); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("reconcile: %w", err)
	}
	return nil
}

// removedVM is a VM whose host side Reconcile removed, still locked until its lease is released.
type removedVM struct {
	vmID   string
	unlock func()
}

// reconcileHost is the host side of Reconcile, under the host-wide lock. It never waits for a VM's lock (an Attach
// holding one waits for the host-wide lock): a VM whose lock is taken is left to the call that holds it.
func (m *Manager) reconcileHost(ctx context.Context, keepSet map[string]bool) (removed []removedVM, errs []error, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, nil, errClosed
	}
	if err := m.setup(ctx); err != nil {
		return nil, nil, fmt.Errorf("reconcile: %w", err)
	}
	cc, err := m.nft()
	if err != nil {
		return nil, nil, fmt.Errorf("reconcile: nftables: %w", err)
	}
	// Tables first, links second: rules are made after their TAP and removed before it, so a VM chain read here
	// whose TAP is missing below is a leftover, never an Attach in progress.
	st, err := readTables(cc)
	if err != nil {
		return nil, nil, fmt.Errorf("reconcile: %w", err)
	}
	links, err := linkList(m.nl)
	if err != nil {
		return nil, nil, fmt.Errorf("reconcile: %w", err)
	}
	remove := func(vmID, tap string, st *tableState) {
		unlock, ok := m.vms.tryLock(vmID)
		if !ok {
			m.log.Info("reconcile: leaving a vm whose attach or detach is in progress to it", "vm_id", vmID)
			return
		}
		if err := m.detachHost(vmID, tap, st); err != nil {
			unlock()
			errs = append(errs, fmt.Errorf("vm %s: %w", vmID, err))
			return
		}
		removed = append(removed, removedVM{vmID: vmID, unlock: unlock})
	}
	taps := map[string]bool{}
	for _, l := range links {
		name := l.Attrs().Name
		owner, vmID, ok := parseAlias(l.Attrs().Alias)
		if !ok || !isTAPName(name) {
			continue
		}
		taps[name] = true
		if owner != m.cfg.Owner || keepSet[vmID] {
			continue
		}
		m.log.Info("reconcile: removing the network of a vm that is gone", "vm_id", vmID, "tap", name)
		remove(vmID, name, st)
	}
	// Attached VMs not in keep whose TAP has vanished: their rules and their entry go too.
	m.gmu.RLock()
	var stale []string
	for id, g := range m.guests {
		if !keepSet[id] && !taps[g.att.TAP] {
			stale = append(stale, id)
		}
	}
	m.gmu.RUnlock()
	for _, id := range stale {
		remove(id, TAPName(id), nil)
	}
	for chain := range st.inetChains {
		tap, ok := strings.CutPrefix(chain, vmChainPrefix)
		if ok && isTAPName(tap) && !taps[tap] {
			m.log.Info("reconcile: removing rules left without a tap", "tap", tap)
			if err := m.removeRules(tap, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	for chain := range st.bridgeChains {
		tap, ok := strings.CutPrefix(chain, spoofChainPrefix)
		if ok && isTAPName(tap) && !taps[tap] && !st.inetChains[vmChain(tap)] {
			if err := m.removeRules(tap, nil); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return removed, errs, nil
}

// releaseIfUnused releases lease l of a VM not to keep, once no Attach or Detach of it runs, unless the VM is
// attached by now or a link of its TAP's name exists (an address is never released while a TAP may use it). A
// lease without any TAP is what a crash between the lease and the TAP leaves.
func (m *Manager) releaseIfUnused(ctx context.Context, l *store.Lease) error {
	unlock := m.vms.lock(l.VMID)
	defer unlock()
	m.gmu.RLock()
	_, attached := m.guests[l.VMID]
	m.gmu.RUnlock()
	if attached {
		return nil
	}
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return errClosed
	}
	link, err := linkByName(m.nl, TAPName(l.VMID))
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("lease of vm %s: %w", l.VMID, err)
	}
	if link != nil {
		m.log.Warn("reconcile: keeping the lease of a vm that is gone while a link of its tap's name exists",
			"vm_id", l.VMID, "ip", l.IP, "link", link.Attrs().Name)
		return nil
	}
	m.log.Info("reconcile: releasing the lease of a vm that is gone", "vm_id", l.VMID, "ip", l.IP)
	if err := m.cfg.Leases.Release(ctx, m.cfg.Scope, l.VMID); err != nil {
		return fmt.Errorf("release lease of vm %s: %w", l.VMID, err)
	}
	return nil
}

// vmLocks hands out one mutex per VM id; an entry lives while someone holds or waits for it.
type vmLocks struct {
	mu sync.Mutex
	m  map[string]*vmLock
}

type vmLock struct {
	mu   sync.Mutex
	refs int // holders and waiters, under vmLocks.mu
}

// lock waits for id's lock and returns its unlock.
func (l *vmLocks) lock(id string) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = map[string]*vmLock{}
	}
	e := l.m[id]
	if e == nil {
		e = &vmLock{}
		l.m[id] = e
	}
	e.refs++
	l.mu.Unlock()
	e.mu.Lock()
	return func() { l.release(id, e) }
}

// tryLock takes id's lock only if nobody holds or waits for it.
func (l *vmLocks) tryLock(id string) (func(), bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.m == nil {
		l.m = map[string]*vmLock{}
	}
	if _, busy := l.m[id]; busy {
		return nil, false
	}
	e := &vmLock{refs: 1}
	e.mu.Lock()
	l.m[id] = e
	return func() { l.release(id, e) }, true
}

func (l *vmLocks) release(id string, e *vmLock) {
	e.mu.Unlock()
	l.mu.Lock()
	if e.refs--; e.refs == 0 {
		delete(l.m, id)
	}
	l.mu.Unlock()
}
