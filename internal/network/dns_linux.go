//go:build linux

package network

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/miekg/dns"
)

// Bounds of how long an address the forwarder returned for an allowed name stays open to the guest. The answer's
// TTL is used within them: a very short TTL would close the address before the guest has connected, a very long
// one would keep a reassigned address open.
const (
	minLearnTTL = time.Minute
	maxLearnTTL = 24 * time.Hour
	// upstreamTimeout bounds one query to one upstream server.
	upstreamTimeout = 3 * time.Second
)

// guestDirectory is what the forwarder needs from the manager: which VM an address belongs to, and a way to open
// the learnt-address set of that VM.
type guestDirectory interface {
	guestByIP(ip netip.Addr) (*guest, bool)
	nft() (*nftables.Conn, error)
}

// forwarder is the DNS server on the gateway. Each query is answered according to the policy of the VM whose
// address sent it (the anti-spoofing rules make the source address trustworthy).
type forwarder struct {
	dir       guestDirectory
	ns        nsRunner
	upstreams []string // host:port
	log       *slog.Logger

	udp, tcp *dns.Server
	done     chan struct{}

	mu      sync.Mutex
	learned map[string]time.Time // "tap ip" -> when the kernel's element expires

	qmu      sync.Mutex
	inflight map[netip.Addr]int // queries being answered, per guest
}

// maxInflightPerGuest bounds the queries one guest can have in flight: each may hold upstream sockets for seconds,
// so a guest flooding its resolver would otherwise use up the worker's file descriptors.
const maxInflightPerGuest = 32

// admit counts a query of src in, or refuses it when src has too many in flight.
func (f *forwarder) admit(src netip.Addr) (release func(), ok bool) {
	f.qmu.Lock()
	defer f.qmu.Unlock()
	if f.inflight == nil {
		f.inflight = map[netip.Addr]int{}
	}
	if f.inflight[src] >= maxInflightPerGuest {
		return nil, false
	}
	f.inflight[src]++
	return func() {
		f.qmu.Lock()
		defer f.qmu.Unlock()
		if f.inflight[src]--; f.inflight[src] <= 0 {
			delete(f.inflight, src)
		}
	}, true
}

// startForwarder listens on addr (the gateway, port 53) in the namespace and serves until stop.
func startForwarder(ns nsRunner, addr netip.AddrPort, upstreams []string, dir guestDirectory, log *slog.Logger) (*forwarder, error) {
	f := &forwarder{dir: dir, ns: ns, upstreams: upstreams, log: log, done: make(chan struct{}),
		learned: map[string]time.Time{}}
	var pc net.PacketConn
	var ln net.Listener
	err := ns.do(func() error {
		var err error
		if pc, err = net.ListenPacket("udp4", addr.String()); err != nil {
			return err
		}
		if ln, err = net.Listen("tcp4", addr.String()); err != nil {
			_ = pc.Close()
			return err
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("dns forwarder: listen on %s: %w", addr, err)
	}
	f.udp = &dns.Server{PacketConn: pc, Handler: f, UDPSize: dns.DefaultMsgSize}
	f.tcp = &dns.Server{Listener: ln, Handler: f}
	var wg sync.WaitGroup
	for _, s := range []*dns.Server{f.udp, f.tcp} {
		started := make(chan struct{})
		s.NotifyStartedFunc = func() { close(started) }
		wg.Go(func() {
			if err := s.ActivateAndServe(); err != nil {
				log.Warn("dns forwarder stopped", "addr", addr, "err", err)
			}
		})
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			f.stop()
			return nil, fmt.Errorf("dns forwarder: server on %s did not start", addr)
		}
	}
	go func() { wg.Wait(); close(f.done) }()
	return f, nil
}

func (f *forwarder) stop() {
	_ = f.udp.Shutdown()
	_ = f.tcp.Shutdown()
}

// ServeDNS answers one query.
func (f *forwarder) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	reply := func(rcode int) {
		m := new(dns.Msg)
		m.SetRcode(r, rcode)
		_ = w.WriteMsg(m)
	}
	src, ok := addrOf4(w.RemoteAddr())
	g, known := f.dir.guestByIP(src)
	if !ok || !known {
		reply(dns.RcodeRefused) // not a guest this manager attached: it has no policy to apply
		return
	}
	if r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		reply(dns.RcodeNotImplemented)
		return
	}
	release, admitted := f.admit(src)
	if !admitted {
		f.log.Debug("dns query refused: too many in flight", "vm_id", g.att.VMID)
		reply(dns.RcodeRefused)
		return
	}
	defer release()
	name := strings.TrimSuffix(strings.ToLower(r.Question[0].Name), ".")
	p := g.policy
	if domainMatch(name, p.DenyDomains) || (len(p.AllowDomains) > 0 && !domainMatch(name, p.AllowDomains)) {
		f.log.Debug("dns query refused by policy", "vm_id", g.att.VMID, "name", name)
		reply(dns.RcodeRefused)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*upstreamTimeout)
	defer cancel()
	resp, err := f.exchange(ctx, r, w.RemoteAddr().Network() == "tcp")
	if err != nil {
		f.log.Warn("dns forwarder: upstream failed", "vm_id", g.att.VMID, "name", name, "err", err)
		reply(dns.RcodeServerFailure)
		return
	}
	if len(p.AllowDomains) > 0 {
		// The addresses must be open before the guest sees them, or its first connection would race the rule.
		if err := f.learn(g, resp); err != nil {
			f.log.Warn("dns forwarder: open resolved addresses", "vm_id", g.att.VMID, "name", name, "err", err)
			reply(dns.RcodeServerFailure)
			return
		}
	}
	resp.Id = r.Id
	if w.RemoteAddr().Network() != "tcp" {
		// An answer fetched again over TCP can be bigger than the guest's UDP buffer: truncate it (setting TC, so
		// the guest asks again over TCP) to what the guest said it takes.
		size := dns.MinMsgSize
		if o := r.IsEdns0(); o != nil && int(o.UDPSize()) > size {
			size = int(o.UDPSize())
		}
		resp.Truncate(size)
	}
	_ = w.WriteMsg(resp)
}

func addrOf4(a net.Addr) (netip.Addr, bool) {
	var ip net.IP
	switch v := a.(type) {
	case *net.UDPAddr:
		ip = v.IP
	case *net.TCPAddr:
		ip = v.IP
	default:
		return netip.Addr{}, false
	}
	addr, ok := netip.AddrFromSlice(ip)
	return addr.Unmap(), ok
}

// exchange asks each upstream in turn, over TCP when the guest asked over TCP or the UDP answer was truncated.
// The sockets are opened in the manager's namespace: that is where the uplink is.
func (f *forwarder) exchange(ctx context.Context, r *dns.Msg, overTCP bool) (*dns.Msg, error) {
	if len(f.upstreams) == 0 {
		return nil, errors.New("no upstream DNS servers configured (Config.Upstreams, or nameserver lines in /etc/resolv.conf)")
	}
	var errs []error
	for _, up := range f.upstreams {
		netw := "udp"
		if overTCP {
			netw = "tcp"
		}
		resp, err := f.exchangeOne(ctx, r, netw, up)
		if err == nil && resp.Truncated && netw == "udp" {
			resp, err = f.exchangeOne(ctx, r, "tcp", up)
		}
		if err == nil {
			return resp, nil
		}
		errs = append(errs, fmt.Errorf("%s over %s: %w", up, netw, err))
	}
	return nil, errors.Join(errs...)
}

func (f *forwarder) exchangeOne(ctx context.Context, r *dns.Msg, netw, up string) (*dns.Msg, error) {
	var conn net.Conn
	err := f.ns.do(func() error {
		var err error
		d := net.Dialer{Timeout: upstreamTimeout}
		conn, err = d.DialContext(ctx, netw, up)
		return err
	})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	c := &dns.Client{Net: netw, Timeout: upstreamTimeout}
	resp, _, err := c.ExchangeWithConnContext(ctx, r, &dns.Conn{Conn: conn})
	return resp, err
}

// learn puts the IPv4 addresses of resp's answer into the VM's learnt set for their TTL (within bounds). An address
// already there with less time left is deleted and added again in the same batch, since adding an element that
// exists leaves its timeout as it was.
func (f *forwarder) learn(g *guest, resp *dns.Msg) error {
	type learnt struct {
		ip  netip.Addr
		ttl time.Duration
	}
	var addrs []learnt
	for _, rr := range resp.Answer {
		a, ok := rr.(*dns.A)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.A.To4())
		if !ok {
			continue
		}
		ttl := min(max(time.Duration(a.Hdr.Ttl)*time.Second, minLearnTTL), maxLearnTTL)
		// The guest must not cache the answer longer than the address stays open.
		a.Hdr.Ttl = min(a.Hdr.Ttl, uint32(maxLearnTTL/time.Second))
		addrs = append(addrs, learnt{ip, ttl})
	}
	if len(addrs) == 0 {
		return nil
	}
	cc, err := f.dir.nft()
	if err != nil {
		return err
	}
	set := dnsSetOf(g.att.TAP)
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	var refresh []netip.Addr
	for _, a := range addrs {
		key := g.att.TAP + " " + a.ip.String()
		if exp, ok := f.learned[key]; ok && exp.After(now.Add(time.Second)) && exp.Before(now.Add(a.ttl)) {
			refresh = append(refresh, a.ip)
		}
	}
	add := func(withRefresh bool) error {
		if withRefresh && len(refresh) > 0 {
			if err := cc.SetDeleteElements(set, learnElements(refresh, 0)); err != nil {
				return err
			}
		}
		for _, a := range addrs {
			if err := cc.SetAddElements(set, learnElements([]netip.Addr{a.ip}, a.ttl)); err != nil {
				return err
			}
		}
		return cc.Flush()
	}
	if err := add(true); err != nil {
		// An element that expired in the kernel since it was recorded makes the delete fail: add only.
		if err2 := add(false); err2 != nil {
			return fmt.Errorf("add to nftables set %s: %w", set.Name, errors.Join(err, err2))
		}
	}
	for _, a := range addrs {
		key := g.att.TAP + " " + a.ip.String()
		if exp := now.Add(a.ttl); exp.After(f.learned[key]) {
			f.learned[key] = exp
		}
	}
	// Forget what has expired, so the map does not grow with the guest's browsing history.
	for k, exp := range f.learned {
		if exp.Before(now) {
			delete(f.learned, k)
		}
	}
	return nil
}

// forget drops what the forwarder remembers about a VM's TAP (its set is gone).
func (f *forwarder) forget(tap string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for k := range f.learned {
		if strings.HasPrefix(k, tap+" ") {
			delete(f.learned, k)
		}
	}
}

// resolvConfServers returns the nameservers of /etc/resolv.conf as host:port.
func resolvConfServers(path string) ([]string, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	var out []string
	sc := bufio.NewScanner(fh)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) >= 2 && f[0] == "nameserver" {
			if a, err := netip.ParseAddr(f[1]); err == nil && a.Is4() {
				out = append(out, netip.AddrPortFrom(a, 53).String())
			}
		}
	}
	return out, sc.Err()
}
