//go:build linux

package network

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/vishvananda/netns"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/store/storetest"
)

// The test network. Every address lives in namespaces the test makes; nothing is routed out of them.
const (
	uplinkHostAddr = "203.0.113.2"   // the host's address on its uplink (one of "the host's other addresses")
	uplinkInetAddr = "203.0.113.1"   // the internet side of the uplink, the host's default gateway
	publicAddr     = "198.51.100.10" // an internet server (HTTP on httpPort)
	publicAddr2    = "198.51.100.20" // another address of it
	dnsAddr        = "198.51.100.53" // the internet's DNS server, the forwarder's upstream
	privateAddr    = "10.66.0.10"    // a private server behind the uplink: guests must not reach it by default
	httpPort       = 8080
	hostPort       = 9000 // a host service guests must not reach
	hostPortOpen   = 9001 // a host service Config.AllowHostPorts opens
)

// testZone is what the internet's DNS server knows.
var testZone = map[string]string{
	"allowed.test.":     publicAddr,
	"bad.allowed.test.": publicAddr2,
	"other.test.":       publicAddr2,
}

func requireServices() bool { return os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" }

// requireNetAdmin skips the test (loudly) unless it can make network namespaces: root and the ip tool.
func requireNetAdmin(tb testing.TB) {
	tb.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not running as root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "the ip tool (iproute2) is not installed"
	} else if _, err := os.Stat("/dev/net/tun"); err != nil {
		why = "/dev/net/tun is missing"
	}
	if why == "" {
		return
	}
	if requireServices() {
		tb.Fatalf("AETHERIUM_REQUIRE_SERVICES=1 but network tests cannot run: %s", why)
	}
	tb.Skipf("SKIPPED: network tests need network namespaces: %s", why)
}

func ipCmd(tb testing.TB, args ...string) string {
	tb.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// netNS is a named network namespace the test made.
type netNS struct {
	name   string
	handle netns.NsHandle
}

func (n *netNS) run() nsRunner { return nsRunner{ns: n.handle} }

func newNetNS(tb testing.TB, role string) *netNS {
	tb.Helper()
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "aet-" + hex.EncodeToString(b) + "-" + role
	ipCmd(tb, "netns", "add", name)
	h, err := netns.GetFromName(name)
	if err != nil {
		_ = exec.Command("ip", "netns", "del", name).Run()
		tb.Fatalf("open netns %s: %v", name, err)
	}
	tb.Cleanup(func() {
		h.Close()
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			tb.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ipCmd(tb, "-n", name, "link", "set", "lo", "up")
	return &netNS{name: name, handle: h}
}

// topology is a host namespace (where the manager runs) whose default route goes over a veth pair (its uplink,
// "up0") to an internet namespace with an HTTP server on public and private addresses and a DNS server.
type topology struct {
	host, inet *netNS
	// hostConns counts connections the host's services accepted, by port.
	mu        sync.Mutex
	hostConns map[int]int
}

func newTopology(tb testing.TB) *topology {
	tb.Helper()
	requireNetAdmin(tb)
	t := &topology{host: newNetNS(tb, "h"), inet: newNetNS(tb, "i"), hostConns: map[int]int{}}
	h, i := t.host.name, t.inet.name
	ipCmd(tb, "-n", h, "link", "add", "up0", "type", "veth", "peer", "name", "wan0", "netns", i)
	ipCmd(tb, "-n", h, "addr", "add", uplinkHostAddr+"/24", "dev", "up0")
	ipCmd(tb, "-n", h, "link", "set", "up0", "up")
	ipCmd(tb, "-n", h, "route", "add", "default", "via", uplinkInetAddr)
	ipCmd(tb, "-n", i, "addr", "add", uplinkInetAddr+"/24", "dev", "wan0")
	ipCmd(tb, "-n", i, "link", "set", "wan0", "up")
	for _, a := range []string{publicAddr, publicAddr2, dnsAddr, privateAddr} {
		ipCmd(tb, "-n", i, "addr", "add", a+"/32", "dev", "lo")
	}
	t.serveHTTP(tb)
	t.serveDNS(tb)
	for _, p := range []int{hostPort, hostPortOpen} {
		t.serveHost(tb, p)
	}
	return t
}

// listen opens a listener in ns.
func listen(tb testing.TB, ns *netNS, network, addr string) net.Listener {
	tb.Helper()
	var ln net.Listener
	if err := ns.run().do(func() error {
		var err error
		ln, err = net.Listen(network, addr)
		return err
	}); err != nil {
		tb.Fatalf("listen on %s in %s: %v", addr, ns.name, err)
	}
	tb.Cleanup(func() { _ = ln.Close() })
	return ln
}

// serveHTTP answers "hello <local address> from <client address>" on every address of the internet namespace.
func (t *topology) serveHTTP(tb testing.TB) {
	ln := listen(tb, t.inet, "tcp4", fmt.Sprintf(":%d", httpPort))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		lh, _, _ := net.SplitHostPort(local.String())
		rh, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello %s from %s\n", lh, rh)
	}), ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { _ = srv.Close() })
}

func (t *topology) serveDNS(tb testing.TB) {
	h := dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		q := r.Question[0]
		if a, ok := testZone[strings.ToLower(q.Name)]; ok && q.Qtype == dns.TypeA {
			m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA,
				Class: dns.ClassINET, Ttl: 300}, A: net.ParseIP(a)})
		} else if !ok {
			m.Rcode = dns.RcodeNameError
		}
		_ = w.WriteMsg(m)
	})
	var pc net.PacketConn
	if err := t.inet.run().do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", dnsAddr+":53")
		return err
	}); err != nil {
		tb.Fatalf("dns server: %v", err)
	}
	udp := &dns.Server{PacketConn: pc, Handler: h}
	tcp := &dns.Server{Listener: listen(tb, t.inet, "tcp4", dnsAddr+":53"), Handler: h}
	for _, s := range []*dns.Server{udp, tcp} {
		go func() { _ = s.ActivateAndServe() }()
		tb.Cleanup(func() { _ = s.Shutdown() })
	}
}

// serveHost runs a service on every address of the host namespace that says "host" and counts its clients.
func (t *topology) serveHost(tb testing.TB, port int) {
	ln := listen(tb, t.host, "tcp4", fmt.Sprintf(":%d", port))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.mu.Lock()
			t.hostConns[port]++
			t.mu.Unlock()
			_, _ = io.WriteString(c, "host\n")
			_ = c.Close()
		}
	}()
}

func (t *topology) hostConnCount(port int) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.hostConns[port]
}

// ---- stores

func testLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func sqliteStore(tb testing.TB) store.Store {
	tb.Helper()
	dir, err := os.MkdirTemp("", "aenet-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = os.RemoveAll(dir) })
	st, err := sqlite.Open(context.Background(), dir+"/a.db")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return st
}

func postgresStore(tb testing.TB) store.Store {
	tb.Helper()
	st, err := postgres.Open(context.Background(), storetest.PostgresDatabase(tb))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(context.Background()); err != nil {
		tb.Fatal(err)
	}
	return st
}

// newManager makes a manager in ns, with a set-up network, closed when the test ends.
func newManager(tb testing.TB, ns *netNS, leases store.LeaseStore, mod func(*Config)) *Manager {
	tb.Helper()
	cfg := Config{Leases: leases, NetNS: ns.handle, Scope: "test/" + ns.name, Owner: "w1", Logger: testLogger(),
		Upstreams: []netip.AddrPort{netip.MustParseAddrPort(dnsAddr + ":53")}}
	if mod != nil {
		mod(&cfg)
	}
	m, err := New(cfg)
	if err != nil {
		tb.Fatalf("New: %v", err)
	}
	tb.Cleanup(func() { _ = m.Close() })
	if err := m.Setup(context.Background()); err != nil {
		tb.Fatalf("Setup: %v", err)
	}
	return m
}

// readSysctl reads a /proc/sys value in ns.
func readSysctl(tb testing.TB, ns *netNS, path string) string {
	tb.Helper()
	var b []byte
	if err := ns.run().do(func() error {
		var err error
		b, err = os.ReadFile("/proc/sys/" + path)
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// linkDetails is `ip -d link show dev name` in ns, or "" when there is no such link.
func linkDetails(ns *netNS, name string) string {
	out, err := exec.Command("ip", "-n", ns.name, "-d", "link", "show", "dev", name).CombinedOutput()
	if err != nil {
		return ""
	}
	return string(out)
}

// firstLine is for messages.
func firstLine(s string) string {
	sc := bufio.NewScanner(strings.NewReader(s))
	if sc.Scan() {
		return sc.Text()
	}
	return ""
}
