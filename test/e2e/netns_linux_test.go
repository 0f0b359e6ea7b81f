//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// netNS is a network namespace of a test, joined to the host's by a veth pair: the host side HostIP/30, the
// namespace side NSIP/30 with the default route through HostIP. A server started in it (serveInNetNS) builds its
// VM bridge, TAPs and nftables tables there, and leaves this machine's own interfaces and firewall alone; the
// test reaches it at NSIP, and it reaches servers the test runs on HostIP (a scripted model API, a git server).
type netNS struct {
	Name   string
	HostIP string
	NSIP   string
}

// Path is the namespace's file, for nsenter --net.
func (n *netNS) Path() string { return "/run/netns/" + n.Name }

// newNetNS makes a fresh namespace with its veth pair, or skips (fails under AETHERIUM_REQUIRE_SERVICES=1) when
// this process cannot (it needs root and iproute2). Everything is removed when the test ends, failed or not:
// deleting the namespace deletes its veth end, which deletes the pair.
func newNetNS(t testing.TB) *netNS {
	t.Helper()
	_, ipErr := exec.LookPath("ip")
	_, nsenterErr := exec.LookPath("nsenter")
	requireService(t, "network namespaces", os.Geteuid() == 0 && ipErr == nil && nsenterErr == nil,
		fmt.Sprintf("need root, ip (iproute2) and nsenter (util-linux): euid %d, %v, %v", os.Geteuid(), ipErr, nsenterErr))
	id := make([]byte, 3)
	if _, err := rand.Read(id); err != nil {
		t.Fatal(err)
	}
	suffix := hex.EncodeToString(id)
	n := &netNS{Name: "aee-" + suffix}
	sub, err := freeSubnet()
	if err != nil {
		t.Fatal(err)
	}
	n.HostIP, n.NSIP = fmt.Sprintf("10.251.%d.1", sub), fmt.Sprintf("10.251.%d.2", sub)
	hostIf, nsIf := "aeeh"+suffix, "aeen"+suffix
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", n.Name)
	t.Cleanup(func() {
		// Deleting the veth's host end is enough when the namespace survives (a process still in it); the
		// namespace goes when its last process does.
		_ = exec.Command("ip", "link", "del", hostIf).Run()
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("remove network namespace %s: %v\n%s", n.Name, err, out)
		}
	})
	run("link", "add", hostIf, "type", "veth", "peer", "name", nsIf, "netns", n.Name)
	run("addr", "add", n.HostIP+"/30", "dev", hostIf)
	run("link", "set", hostIf, "up")
	run("-n", n.Name, "link", "set", "lo", "up")
	run("-n", n.Name, "addr", "add", n.NSIP+"/30", "dev", nsIf)
	run("-n", n.Name, "link", "set", nsIf, "up")
	run("-n", n.Name, "route", "add", "default", "via", n.HostIP)
	return n
}

// freeSubnet picks a 10.251.<n>.0/30 no interface of this host uses (other tests may run beside this one).
func freeSubnet() (int, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return 0, fmt.Errorf("list addresses: %w", err)
	}
	used := map[int]bool{}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok {
			if ip4 := ipn.IP.To4(); ip4 != nil && ip4[0] == 10 && ip4[1] == 251 {
				used[int(ip4[2])] = true
			}
		}
	}
	b := make([]byte, 1)
	for range 64 {
		if _, err := rand.Read(b); err != nil {
			return 0, err
		}
		if !used[int(b[0])] {
			return int(b[0]), nil
		}
	}
	return 0, fmt.Errorf("no free 10.251.x.0/30 subnet")
}

// listenHost listens on the host side of the veth, for upstream servers that serve in the namespace reaches.
func (n *netNS) listenHost(t testing.TB) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", n.HostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// serveHost serves h on the host side of the veth and returns its base URL.
func (n *netNS) serveHost(t testing.TB, h http.Handler) string {
	t.Helper()
	l := n.listenHost(t)
	srv := &http.Server{Handler: h}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String()
}

// serveInNetNS starts aetherium serve in the namespace with the microVM backend and its network on (env is
// added last and wins), listening on the namespace's side of the veth, and returns the API address and the
// process. The data directory is dataDir.
func serveInNetNS(t testing.TB, n *netNS, dataDir, workerID string, env ...string) (string, *proc) {
	t.Helper()
	addr := net.JoinHostPort(n.NSIP, "8080")
	full := append(serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID), requireGuests(t)...)
	full = append(full, "AETHERIUM_NETWORK=on")
	full = append(full, env...)
	cmd := exec.Command("nsenter", "--net="+n.Path(), "--", filepath.Join(binDir, "aetherium"), "serve")
	p := startCmd(t, "serve in "+n.Name, cmd, full)
	waitHTTP(t, addr, p)
	return addr, p
}

// tapsIn lists the TAP (and TUN) devices of the namespace.
func (n *netNS) tapsIn(t testing.TB) []string {
	t.Helper()
	out, err := exec.Command("ip", "-n", n.Name, "-o", "link", "show", "type", "tun").CombinedOutput()
	if err != nil {
		t.Fatalf("list TAPs in %s: %v\n%s", n.Name, err, out)
	}
	var names []string
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if f := strings.Fields(l); len(f) > 1 {
			names = append(names, strings.TrimSuffix(f[1], ":"))
		}
	}
	return names
}
