package store

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/model"
)

// ErrPoolExhausted is wrapped by LeaseStore.Acquire when every host address of the prefix is leased.
var ErrPoolExhausted = errors.New("address pool exhausted")

// Lease is an IPv4 address of an allocation pool held by one VM. The network manager derives the VM's MAC from
// it, so the (scope, ip), (scope, vm_id) and (scope, mac) uniqueness of the table are one guarantee seen three ways.
type Lease struct {
	// Scope names the pool: the host and the bridge's CIDR, so that several workers on one host share it.
	Scope string
	IP    netip.Addr
	VMID  string
	// Owner is the worker (network manager) that attached the VM; Reconcile only releases its own leases.
	Owner     string
	MAC       string // LeaseMAC(IP)
	CreatedAt time.Time
}

// LeaseRequest asks LeaseStore.Acquire for a VM's address.
type LeaseRequest struct {
	Scope  string
	VMID   string
	Owner  string
	Prefix netip.Prefix // an IPv4 network (host bits zero) with at least two host addresses: /8 to /30
}

// LeaseMAC is the MAC of the VM holding ip: 02:ae followed by the four bytes of the address. 02 makes it locally
// administered and unicast; it is unique within a scope because leases are.
func LeaseMAC(ip netip.Addr) string {
	b := ip.As4()
	return net.HardwareAddr{0x02, 0xae, b[0], b[1], b[2], b[3]}.String()
}

// CheckLeaseRequest validates req; the error wraps model.ErrInvalidInput.
func CheckLeaseRequest(req LeaseRequest) error {
	switch {
	case req.Scope == "" || req.VMID == "":
		return fmt.Errorf("%w: lease: scope and vm id are required", model.ErrInvalidInput)
	case !textOK(req.Scope, req.VMID, req.Owner):
		return fmt.Errorf("%w: lease: scope, vm id and owner must be valid UTF-8 without NUL bytes", model.ErrInvalidInput)
	case !req.Prefix.IsValid() || !req.Prefix.Addr().Is4():
		return fmt.Errorf("%w: lease: prefix %s is not an IPv4 network", model.ErrInvalidInput, req.Prefix)
	case req.Prefix.Bits() < 8 || req.Prefix.Bits() > 30:
		return fmt.Errorf("%w: lease: prefix %s must be between /8 and /30", model.ErrInvalidInput, req.Prefix)
	case req.Prefix.Masked() != req.Prefix:
		return fmt.Errorf("%w: lease: prefix %s has host bits set (want %s)", model.ErrInvalidInput, req.Prefix,
			req.Prefix.Masked())
	}
	return nil
}

func textOK(ss ...string) bool {
	for _, s := range ss {
		if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
			return false
		}
	}
	return true
}

// LeaseUsable reports whether ip may be leased from prefix: inside it, and neither the network address, the gateway
// (the first host address) nor the broadcast address.
func LeaseUsable(prefix netip.Prefix, ip netip.Addr) bool {
	if !prefix.Contains(ip) {
		return false
	}
	gw := prefix.Addr().Next()
	return ip != prefix.Addr() && ip != gw && ip != lastAddr(prefix)
}

// FirstFreeLease returns the lowest usable address of prefix that is not in used, or an error wrapping
// ErrPoolExhausted.
func FirstFreeLease(prefix netip.Prefix, used []netip.Addr) (netip.Addr, error) {
	taken := make(map[netip.Addr]bool, len(used))
	for _, a := range used {
		taken[a] = true
	}
	last := lastAddr(prefix)
	// Host addresses start after the gateway; the scan ends before the broadcast address.
	for a := prefix.Addr().Next().Next(); a.IsValid() && a.Less(last); a = a.Next() {
		if !taken[a] {
			return a, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("lease from %s: all %d host addresses are leased: %w (release leases of "+
		"deleted VMs, or configure a larger network)", prefix, usableCount(prefix), ErrPoolExhausted)
}

// SortLeases orders leases by address, as List returns them.
func SortLeases(ls []*Lease) {
	slices.SortFunc(ls, func(a, b *Lease) int { return a.IP.Compare(b.IP) })
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	n := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	n |= 1<<(32-p.Bits()) - 1
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

func usableCount(p netip.Prefix) int { return 1<<(32-p.Bits()) - 3 }
