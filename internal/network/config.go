package network

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/aetherium/aetherium/internal/store"
)

// Defaults for Config fields left zero.
const (
	DefaultBridge = "aetherium0"
	DefaultOwner  = "default"
	// TAPPrefix starts the name of every TAP device a Manager creates.
	TAPPrefix = "ae"
	// TableName names the manager's nftables tables (one of family inet, one of family bridge).
	TableName = "aetherium"
	// aliasPrefix starts the alias (IFLA_IFALIAS) of every link a Manager creates: how it knows its own links.
	aliasPrefix = "aetherium"
	// GuestInterface is the guest's network interface (its only one).
	GuestInterface = "eth0"
	// TAPGroup is the device group (IFLA_GROUP) of every TAP a Manager creates: the layer-2 rules apply to the
	// devices of this group only.
	TAPGroup = 0xae7a
)

// DefaultCIDR is the guests' network unless Config.CIDR says otherwise.
var DefaultCIDR = netip.MustParsePrefix("172.16.0.0/24")

// PrivateRanges are the destinations a guest cannot reach unless a CIDR rule of its policy allows them: RFC 1918,
// link-local (cloud metadata services live there), carrier-grade NAT, loopback, "this network", multicast and the
// reserved block.
var PrivateRanges = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("100.64.0.0/10"),
	netip.MustParsePrefix("127.0.0.0/8"),
	netip.MustParsePrefix("169.254.0.0/16"),
	netip.MustParsePrefix("172.16.0.0/12"),
	netip.MustParsePrefix("192.168.0.0/16"),
	netip.MustParsePrefix("224.0.0.0/4"),
	netip.MustParsePrefix("240.0.0.0/4"),
}

// ErrPoolExhausted is wrapped by Attach when every address of the CIDR is leased.
var ErrPoolExhausted = store.ErrPoolExhausted

// ErrInvalid is wrapped by errors about bad configuration, VM ids or policies.
var ErrInvalid = errors.New("invalid network configuration")

// HostPort is a service on the gateway address that guests may reach (Config.AllowHostPorts).
type HostPort struct {
	Proto string // "tcp" or "udp"
	Port  uint16
}

// Policy is a VM's egress policy, fixed when it is attached. The zero Policy lets the guest reach the internet and
// nothing in PrivateRanges. See the package documentation for how the rules combine and what they cannot do.
type Policy struct {
	// AllowCIDRs and DenyCIDRs are IPv4 networks the guest may or may not open connections to. They override the
	// defaults (so AllowCIDRs can open a private range); between them the most specific prefix wins, and deny wins
	// a tie.
	AllowCIDRs []netip.Prefix `json:"allow_cidrs,omitempty"`
	DenyCIDRs  []netip.Prefix `json:"deny_cidrs,omitempty"`
	// AllowDomains, when not empty, is the only names the DNS forwarder resolves for the guest, and the only
	// addresses (besides AllowCIDRs) it may connect to are those the forwarder returned for them. A domain matches
	// itself and its subdomains.
	AllowDomains []string `json:"allow_domains,omitempty"`
	// DenyDomains are names (with their subdomains) the forwarder refuses to resolve; deny wins over allow.
	DenyDomains []string `json:"deny_domains,omitempty"`
}

// limits on a policy's size: each entry costs set elements and forwarder work.
const (
	maxPolicyCIDRs   = 1024
	maxPolicyDomains = 1024
)

// hasDomains reports whether the policy has domain rules (and so needs the forwarder and the DNS lockdown).
func (p Policy) hasDomains() bool { return len(p.AllowDomains) > 0 || len(p.DenyDomains) > 0 }

// normalize checks p and returns it with masked prefixes and lower-case domains without a final dot.
func (p Policy) normalize() (Policy, error) {
	var out Policy
	if len(p.AllowCIDRs)+len(p.DenyCIDRs) > maxPolicyCIDRs {
		return out, fmt.Errorf("%w: policy: more than %d CIDRs", ErrInvalid, maxPolicyCIDRs)
	}
	if len(p.AllowDomains)+len(p.DenyDomains) > maxPolicyDomains {
		return out, fmt.Errorf("%w: policy: more than %d domains", ErrInvalid, maxPolicyDomains)
	}
	cidrs := func(in []netip.Prefix, what string) ([]netip.Prefix, error) {
		var o []netip.Prefix
		for _, c := range in {
			if !c.IsValid() || !c.Addr().Is4() {
				return nil, fmt.Errorf("%w: policy: %s %q is not an IPv4 network (guests have IPv4 only)",
					ErrInvalid, what, c)
			}
			o = append(o, c.Masked())
		}
		return o, nil
	}
	domains := func(in []string, what string) ([]string, error) {
		var o []string
		for _, d := range in {
			n, err := normalizeDomain(d)
			if err != nil {
				return nil, fmt.Errorf("%w: policy: %s: %w", ErrInvalid, what, err)
			}
			o = append(o, n)
		}
		return o, nil
	}
	var err error
	if out.AllowCIDRs, err = cidrs(p.AllowCIDRs, "allowed CIDR"); err != nil {
		return out, err
	}
	if out.DenyCIDRs, err = cidrs(p.DenyCIDRs, "denied CIDR"); err != nil {
		return out, err
	}
	if out.AllowDomains, err = domains(p.AllowDomains, "allowed domain"); err != nil {
		return out, err
	}
	if out.DenyDomains, err = domains(p.DenyDomains, "denied domain"); err != nil {
		return out, err
	}
	return out, nil
}

var labelRE = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$`)

// normalizeDomain lower-cases d and strips a final dot; "*." in front is accepted and means the same as without
// (a domain always covers its subdomains).
func normalizeDomain(d string) (string, error) {
	n := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(d)), ".")
	n = strings.TrimPrefix(n, "*.")
	if n == "" || len(n) > 253 {
		return "", fmt.Errorf("domain %q: empty or longer than 253 characters", d)
	}
	for _, l := range strings.Split(n, ".") {
		if !labelRE.MatchString(l) {
			return "", fmt.Errorf("domain %q: label %q is not a DNS label", d, l)
		}
	}
	return n, nil
}

// domainMatch reports whether name (normalised: lower case, no final dot) is one of domains or under one.
func domainMatch(name string, domains []string) bool {
	for _, d := range domains {
		if name == d || strings.HasSuffix(name, "."+d) {
			return true
		}
	}
	return false
}

// addrRange is an inclusive range of IPv4 addresses.
type addrRange struct{ From, To netip.Addr }

func u32(a netip.Addr) uint64 {
	b := a.As4()
	return uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])
}

func addrOf(v uint64) netip.Addr {
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

// cidrVerdicts flattens a policy's CIDR rules into disjoint ranges to accept and to drop: for every address
// covered by a rule, the most specific rule decides, deny winning a tie. Addresses no rule covers are in neither.
// nftables interval sets cannot hold overlapping elements, hence the flattening.
func cidrVerdicts(allow, deny []netip.Prefix) (accept, drop []addrRange) {
	type rule struct {
		lo, hi uint64 // [lo, hi)
		bits   int
		deny   bool
	}
	var rules []rule
	bounds := map[uint64]bool{}
	add := func(ps []netip.Prefix, isDeny bool) {
		for _, p := range ps {
			p = p.Masked()
			lo := u32(p.Addr())
			hi := lo + 1<<(32-p.Bits())
			rules = append(rules, rule{lo, hi, p.Bits(), isDeny})
			bounds[lo], bounds[hi] = true, true
		}
	}
	add(allow, false)
	add(deny, true)
	points := make([]uint64, 0, len(bounds))
	for b := range bounds {
		points = append(points, b)
	}
	slices.Sort(points)
	appendRange := func(list []addrRange, lo, hi uint64) []addrRange {
		if n := len(list); n > 0 && u32(list[n-1].To)+1 == lo {
			list[n-1].To = addrOf(hi - 1)
			return list
		}
		return append(list, addrRange{addrOf(lo), addrOf(hi - 1)})
	}
	for i := 0; i+1 < len(points); i++ {
		lo, hi := points[i], points[i+1]
		best := -1
		for j, r := range rules {
			if r.lo <= lo && hi <= r.hi {
				if best < 0 || r.bits > rules[best].bits || (r.bits == rules[best].bits && r.deny) {
					best = j
				}
			}
		}
		switch {
		case best < 0:
		case rules[best].deny:
			drop = appendRange(drop, lo, hi)
		default:
			accept = appendRange(accept, lo, hi)
		}
	}
	return accept, drop
}

// Attachment is what Attach gives a VM: the TAP QEMU opens and the guest's addressing.
type Attachment struct {
	VMID      string
	TAP       string // the TAP device's name, at most 15 characters
	MAC       string // the guest's MAC ("02:ae:" + the address's bytes), for QEMU's -device ...,mac=
	IP        netip.Addr
	PrefixLen int
	Gateway   netip.Addr
	DNS       []netip.Addr // the resolvers the guest should use
}

// Netmask is the guest's netmask in dotted form ("255.255.255.0").
func (a Attachment) Netmask() string {
	return net.IP(net.CIDRMask(a.PrefixLen, 32)).String()
}

// QEMUArgs are the arguments that give a QEMU microvm guest this attachment's NIC: the TAP as netdev (QEMU opens
// it by name, which needs CAP_NET_ADMIN or the TAP's owner uid, and runs no scripts) and a virtio-net device with
// the attachment's MAC, which the anti-spoofing rules expect.
func (a Attachment) QEMUArgs() []string {
	return []string{
		"-netdev", "tap,id=net0,ifname=" + a.TAP + ",script=no,downscript=no,vhost=off",
		"-device", "virtio-net-device,netdev=net0,mac=" + a.MAC,
	}
}

// KernelArgs is the guest kernel's command line for a: "ip=<ip>::<gateway>:<netmask>::eth0:off" configures the
// interface before init (CONFIG_IP_PNP), and "aetherium.dns=<a,b>" tells the agent which resolvers to write into
// /etc/resolv.conf.
func KernelArgs(a Attachment) string {
	args := fmt.Sprintf("ip=%s::%s:%s::%s:off", a.IP, a.Gateway, a.Netmask(), GuestInterface)
	if len(a.DNS) > 0 {
		dns := make([]string, len(a.DNS))
		for i, d := range a.DNS {
			dns[i] = d.String()
		}
		args += " aetherium.dns=" + strings.Join(dns, ",")
	}
	return args
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// checkID validates a VM id or an owner: they go into a link alias, space separated, so no spaces.
func checkID(what, id string) error {
	if !idRE.MatchString(id) {
		return fmt.Errorf("%w: %s %q: want 1 to 128 letters, digits, '.', '_' or '-'", ErrInvalid, what, id)
	}
	return nil
}

// TAPName is the TAP device of VM id: "ae" and the first 12 hex digits of the id's SHA-256, 14 characters (the
// kernel allows 15). A hash keeps it stable and short whatever the id looks like; the link's alias records the id,
// so that a collision is detected rather than taken for the other VM's TAP.
func TAPName(vmID string) string {
	sum := sha256.Sum256([]byte(vmID))
	return TAPPrefix + hex.EncodeToString(sum[:6])
}

// isTAPName reports whether name has the form TAPName gives.
func isTAPName(name string) bool {
	if len(name) != len(TAPPrefix)+12 || !strings.HasPrefix(name, TAPPrefix) {
		return false
	}
	_, err := hex.DecodeString(name[len(TAPPrefix):])
	return err == nil && strings.ToLower(name) == name
}

// linkAlias is the alias of VM id's TAP.
func linkAlias(owner, vmID string) string { return aliasPrefix + " owner=" + owner + " vm=" + vmID }

// bridgeAlias is the alias of the bridge.
const bridgeAlias = aliasPrefix + " bridge"

// parseAlias returns the owner and the VM of a TAP alias; ok is false for an alias this package did not write.
func parseAlias(alias string) (owner, vmID string, ok bool) {
	f := strings.Fields(alias)
	if len(f) != 3 || f[0] != aliasPrefix || !strings.HasPrefix(f[1], "owner=") || !strings.HasPrefix(f[2], "vm=") {
		return "", "", false
	}
	return strings.TrimPrefix(f[1], "owner="), strings.TrimPrefix(f[2], "vm="), true
}

// hostPortsString is for logs.
func hostPortsString(ps []HostPort) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.Proto + "/" + strconv.Itoa(int(p.Port))
	}
	return strings.Join(s, ",")
}

// Attacher is what a VM backend needs of a Manager: attach and detach VMs, and after a restart settle the rest.
type Attacher interface {
	Attach(ctx context.Context, vmID string, policy Policy) (Attachment, error)
	Detach(ctx context.Context, vmID string) error
	Reconcile(ctx context.Context, keep []string) error
}

// Restore is what a VM backend does with its Attacher when it starts: attach again every VM it still has (the
// manager keeps policies in memory only; attaching again is idempotent and repairs a missing TAP or rule) and
// reconcile away the network of VMs that are gone. vms maps each VM id to its policy, nil for a VM that has no
// network. It returns the VMs whose re-attachment failed, with why; those VMs keep their old attachment on record.
func Restore(ctx context.Context, a Attacher, vms map[string]*Policy) (failed map[string]error, err error) {
	keep := make([]string, 0, len(vms))
	for id, p := range vms {
		keep = append(keep, id)
		if p == nil {
			continue
		}
		if _, err := a.Attach(ctx, id, *p); err != nil {
			if failed == nil {
				failed = map[string]error{}
			}
			failed[id] = err
		}
	}
	slices.Sort(keep)
	if err := a.Reconcile(ctx, keep); err != nil {
		return failed, fmt.Errorf("reconcile vm network: %w", err)
	}
	return failed, nil
}

// ParsePolicy makes a Policy from its text form (CIDRs as "203.0.113.0/24", domains as names), checking it the
// way Attach will; errors wrap ErrInvalid.
func ParsePolicy(allowCIDRs, denyCIDRs, allowDomains, denyDomains []string) (Policy, error) {
	parse := func(what string, in []string) ([]netip.Prefix, error) {
		var out []netip.Prefix
		for _, c := range in {
			pfx, err := netip.ParsePrefix(strings.TrimSpace(c))
			if err != nil {
				return nil, fmt.Errorf("%w: policy: %s %q: %w", ErrInvalid, what, c, err)
			}
			out = append(out, pfx)
		}
		return out, nil
	}
	var p Policy
	var err error
	if p.AllowCIDRs, err = parse("allowed CIDR", allowCIDRs); err != nil {
		return p, err
	}
	if p.DenyCIDRs, err = parse("denied CIDR", denyCIDRs); err != nil {
		return p, err
	}
	p.AllowDomains, p.DenyDomains = allowDomains, denyDomains
	return p.normalize()
}
