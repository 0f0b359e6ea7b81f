// Package network gives Aetherium's microVMs their network: each VM gets a TAP device on a host bridge, an IPv4
// address leased from a pool kept in the store, a MAC derived from that address, NAT to the internet through the
// uplink, isolation from the other guests, the host and private networks, and an egress policy of its own.
//
// # What it builds
//
// On Setup, in the network namespace it is given (the current one by default):
//
//   - a bridge (default aetherium0) holding the gateway address, the first host address of the CIDR
//     (default 172.16.0.1/24), with IPv6 off;
//   - IPv4 forwarding on;
//   - an nftables table "inet aetherium": masquerade of the CIDR out of the uplink; a forward chain that lets
//     replies back, drops guest-to-guest and new inbound connections to guests, and sends each guest's new
//     connections to its own chain through a verdict map keyed by its (anti-spoofed) source address; an input chain
//     that lets guests reach the gateway only for DNS, ICMP echo and the ports Config.AllowHostPorts names;
//   - a table "bridge aetherium" whose rules apply to the devices of group TAPGroup (the TAPs) only: anti-spoofing
//     per TAP (source MAC, source IPv4, ARP sender, nothing but IPv4 and ARP, each drop counted) through a verdict
//     map keyed by input port, a drop of everything from a TAP without such a chain, and a forward chain that drops
//     every frame from a TAP to another port (the ports are also isolated bridge ports);
//   - a DNS forwarder (miekg/dns) on the gateway, port 53, which answers each guest according to its policy.
//
// Attach gives a VM its TAP (persistent, vnet_hdr, single queue, owned by Config.TAPOwner and gid 0, named "ae" +
// 12 hex digits of a hash of the VM id, in device group TAPGroup, with the alias "aetherium owner=<owner> vm=<id>"),
// enslaved to the bridge as an isolated port, and its per-VM nftables objects (named after the TAP), made after the
// TAP so that a TAP never sends unfiltered. The Attachment it returns says how to start QEMU (QEMUArgs) and what to
// put on the guest's command line (KernelArgs). Detach removes them in the other order and then frees the lease.
//
// After a worker restart: New, Setup, Attach again (idempotent) each VM that still exists, with its policy (the
// policies live in the manager's memory: the forwarder answers only VMs attached since it started), then Reconcile
// with the list of those VMs.
//
// It never touches what it did not create: links are recognised by their alias, nftables objects live in its own
// two tables, and only those tables are ever flushed. One bridge per network namespace: Setup refuses a second
// aetherium bridge, because the tables are shared and each Setup writes its own bridge into them. Managers that share
// the bridge share one lease scope, and each one's Reconcile removes only the TAPs and leases of its Owner, but only
// one of them can run the DNS forwarder (see the limits below): in practice, one networked worker per host.
//
// # Egress policy
//
// A Policy is fixed when the VM is attached. Without one, a guest reaches the internet and nothing private: the
// ranges in PrivateRanges are dropped. CIDR rules override those defaults; between them, the most specific prefix
// wins, and deny wins a tie. Domain rules act through the DNS forwarder: a denied name (or a name not on a non-empty
// allow-list) is answered REFUSED; when an allow-list is set, the addresses the forwarder returned for allowed names
// go into a per-VM set (with the answer's TTL, at least a minute) and the guest may only open connections to those
// addresses and to its AllowCIDRs.
//
// Limits, by design:
//   - Without a domain allow-list, a guest that knows an address reaches it whatever name it has: DenyDomains only
//     stops the resolution. Use DenyCIDRs (or an allow-list) to keep a guest away from addresses.
//   - When a policy has domain rules, DNS (53) and DNS-over-TLS (853) to anything but the gateway are dropped, but
//     DNS over HTTPS cannot be told from other HTTPS: only an allow-list stops it.
//   - An allowed name's addresses stay open to the guest until the set entry times out, and for all names that share
//     them (a CDN address serves many sites).
//   - Connections already open are not cut when an entry times out (conntrack lets replies and the rest of the flow
//     through).
//   - Guests are IPv4 only; every other ethertype from a TAP is dropped.
//   - Another firewall on the host (Docker's FORWARD policy DROP, for one) can still drop guest traffic: every base
//     chain of every table must accept a packet, and this package does not touch the others.
//   - The DNS forwarder answers only the VMs its own manager attached (others get REFUSED), and only one process
//     can own the gateway's port 53: a second manager on the bridge fails its Setup unless DisableDNSForwarder is
//     set (its guests then need GuestDNS and cannot have domain rules).
package network
