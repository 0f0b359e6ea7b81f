package network

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, v := range s {
		out[i] = netip.MustParsePrefix(v)
	}
	return out
}

func rangesString(rs []addrRange) string {
	s := make([]string, len(rs))
	for i, r := range rs {
		s[i] = r.From.String() + "-" + r.To.String()
	}
	return strings.Join(s, " ")
}

func TestCIDRVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name         string
		allow, deny  []netip.Prefix
		accept, drop string
	}{
		{"none", nil, nil, "", ""},
		{"allow only", pfx("10.1.0.0/16"), nil, "10.1.0.0-10.1.255.255", ""},
		{"deny inside allow", pfx("10.1.0.0/16"), pfx("10.1.2.0/24"),
			"10.1.0.0-10.1.1.255 10.1.3.0-10.1.255.255", "10.1.2.0-10.1.2.255"},
		{"allow inside deny", pfx("1.2.3.4/32"), pfx("0.0.0.0/0"),
			"1.2.3.4-1.2.3.4", "0.0.0.0-1.2.3.3 1.2.3.5-255.255.255.255"},
		{"tie: deny wins", pfx("8.8.8.0/24"), pfx("8.8.8.0/24"), "", "8.8.8.0-8.8.8.255"},
		{"adjacent merge", pfx("10.0.0.0/25", "10.0.0.128/25"), nil, "10.0.0.0-10.0.0.255", ""},
		{"unmasked input", pfx("10.0.0.7/24"), nil, "10.0.0.0-10.0.0.255", ""},
		{"end of space", nil, pfx("255.255.255.0/24"), "", "255.255.255.0-255.255.255.255"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			acc, drp := cidrVerdicts(tc.allow, tc.deny)
			if got := rangesString(acc); got != tc.accept {
				t.Errorf("accept = %q, want %q", got, tc.accept)
			}
			if got := rangesString(drp); got != tc.drop {
				t.Errorf("drop = %q, want %q", got, tc.drop)
			}
		})
	}
}

// TestCIDRVerdictsAgainstBruteForce checks the flattening against the rule applied address by address, on
// random-ish policies over a small part of the address space.
func TestCIDRVerdictsAgainstBruteForce(t *testing.T) {
	base := netip.MustParseAddr("10.0.0.0")
	for seed := range 200 {
		var allow, deny []netip.Prefix
		for k := range 1 + seed%5 {
			bits := 24 + (seed*7+k*3)%9
			off := uint64((seed*131 + k*977) % 1024)
			p := netip.PrefixFrom(addrOf(u32(base)+off), bits).Masked()
			if (seed+k)%3 == 0 {
				deny = append(deny, p)
			} else {
				allow = append(allow, p)
			}
		}
		acc, drp := cidrVerdicts(allow, deny)
		in := func(rs []addrRange, a netip.Addr) bool {
			for _, r := range rs {
				if !a.Less(r.From) && !r.To.Less(a) {
					return true
				}
			}
			return false
		}
		for off := uint64(0); off < 1300; off++ {
			a := addrOf(u32(base) + off)
			want, bits := "", -1
			for _, p := range allow {
				if p.Contains(a) && p.Bits() > bits {
					want, bits = "accept", p.Bits()
				}
			}
			for _, p := range deny {
				if p.Contains(a) && p.Bits() >= bits {
					want, bits = "drop", p.Bits()
				}
			}
			got := ""
			if in(acc, a) {
				got = "accept"
			}
			if in(drp, a) {
				got += "drop"
			}
			if got != want {
				t.Fatalf("allow %v deny %v: %s is %q, want %q", allow, deny, a, got, want)
			}
		}
	}
}

func TestPolicyNormalize(t *testing.T) {
	p, err := Policy{AllowCIDRs: pfx("10.1.2.3/16"), AllowDomains: []string{"Example.COM.", "*.pypi.org"},
		DenyDomains: []string{"evil.example.com"}}.normalize()
	if err != nil {
		t.Fatal(err)
	}
	if p.AllowCIDRs[0].String() != "10.1.0.0/16" || !slices.Equal(p.AllowDomains, []string{"example.com", "pypi.org"}) {
		t.Fatalf("normalised: %+v", p)
	}
	for _, bad := range []Policy{
		{AllowCIDRs: pfx("fd00::/8")},
		{DenyCIDRs: []netip.Prefix{{}}},
		{AllowDomains: []string{"exa mple.com"}},
		{DenyDomains: []string{""}},
		{DenyDomains: []string{"-bad.com"}},
		{AllowDomains: []string{strings.Repeat("a", 64) + ".com"}},
	} {
		if _, err := bad.normalize(); !errors.Is(err, ErrInvalid) {
			t.Errorf("normalize(%+v) = %v, want ErrInvalid", bad, err)
		}
	}
}

func TestDomainMatch(t *testing.T) {
	ds := []string{"example.com", "pypi.org"}
	for name, want := range map[string]bool{
		"example.com": true, "www.example.com": true, "a.b.example.com": true, "pypi.org": true,
		"notexample.com": false, "example.com.evil.net": false, "com": false, "": false,
	} {
		if got := domainMatch(name, ds); got != want {
			t.Errorf("domainMatch(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestKernelArgsAndQEMUArgs(t *testing.T) {
	a := Attachment{VMID: "vm", TAP: TAPName("vm"), MAC: "02:ae:ac:10:00:07", IP: netip.MustParseAddr("172.16.0.7"),
		PrefixLen: 24, Gateway: netip.MustParseAddr("172.16.0.1"),
		DNS: []netip.Addr{netip.MustParseAddr("172.16.0.1"), netip.MustParseAddr("9.9.9.9")}}
	if got, want := KernelArgs(a), "ip=172.16.0.7::172.16.0.1:255.255.255.0::eth0:off aetherium.dns=172.16.0.1,9.9.9.9"; got != want {
		t.Fatalf("KernelArgs = %q, want %q", got, want)
	}
	a.PrefixLen, a.DNS = 20, nil
	if got, want := KernelArgs(a), "ip=172.16.0.7::172.16.0.1:255.255.240.0::eth0:off"; got != want {
		t.Fatalf("KernelArgs = %q, want %q", got, want)
	}
	q := strings.Join(a.QEMUArgs(), " ")
	if !strings.Contains(q, "ifname="+a.TAP+",script=no,downscript=no") || !strings.Contains(q, "mac=02:ae:ac:10:00:07") {
		t.Fatalf("QEMUArgs = %q", q)
	}
}

func TestTAPName(t *testing.T) {
	seen := map[string]string{}
	for i := range 10000 {
		id := fmt.Sprintf("%08d-2222-3333-4444-555555555555", i)
		n := TAPName(id)
		if len(n) > 15 || !isTAPName(n) || TAPName(id) != n {
			t.Fatalf("TAPName(%q) = %q: want a stable name of at most 15 characters", id, n)
		}
		if prev, dup := seen[n]; dup {
			t.Fatalf("%s and %s share %s", prev, id, n)
		}
		seen[n] = id
	}
	for _, n := range []string{"eth9", "ae", "aeXYZ123456789", "ae0123456789abc", "ae0123456789AB"} {
		if isTAPName(n) {
			t.Errorf("isTAPName(%q)", n)
		}
	}
	owner, vm, ok := parseAlias(linkAlias("w-1", "vm.2"))
	if !ok || owner != "w-1" || vm != "vm.2" {
		t.Fatalf("alias round trip: %q %q %v", owner, vm, ok)
	}
	for _, a := range []string{"", "aetherium bridge", "aetherium owner=x", "other owner=x vm=y"} {
		if _, _, ok := parseAlias(a); ok {
			t.Errorf("parseAlias(%q) accepted", a)
		}
	}
	if err := checkID("vm id", "has space"); !errors.Is(err, ErrInvalid) {
		t.Fatalf("checkID accepted a space: %v", err)
	}
}
