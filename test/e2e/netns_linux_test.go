//go:build linux

package e2e

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm/vmproc"
	"github.com/aetherium/aetherium/pkg/client"
)

// A network namespace of its own for a server whose microVMs have networking: the worker makes its bridge,
// TAPs and nftables tables there, so the machine's own interfaces and firewall are never touched. A veth pair
// links it to the test: the test listens on the host side (upstreams the worker's credential proxy reaches) and
// calls the API on the namespace side.
type netNS struct {
	name     string
	hostIP   string // the test's side of the link
	nsIP     string // the server's side
	hostLink string
}

var netnsSeq atomic.Int32

// newNetNS makes the namespace and its link, and removes them when the test ends. It needs root and iproute2.
func newNetNS(t *testing.T) *netNS {
	t.Helper()
	if os.Geteuid() != 0 {
		requireService(t, "root (network namespaces)", false, "not root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		requireService(t, "iproute2's ip (network namespaces)", false, err.Error())
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	n := int(netnsSeq.Add(1))
	sub := int(b[0])%200 + 20 // 10.252.<sub>.<4n>/30: unlikely to meet another test's
	ns := &netNS{name: "ae-e2e-" + hex.EncodeToString(b), hostLink: "aee" + hex.EncodeToString(b),
		hostIP: fmt.Sprintf("10.252.%d.%d", sub, 4*n+1), nsIP: fmt.Sprintf("10.252.%d.%d", sub, 4*n+2)}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns.name)
	t.Cleanup(func() {
		_ = exec.Command("ip", "link", "del", ns.hostLink).Run()
		_ = exec.Command("ip", "netns", "del", ns.name).Run()
	})
	run("link", "add", ns.hostLink, "type", "veth", "peer", "name", "eth-e2e", "netns", ns.name)
	run("addr", "add", ns.hostIP+"/30", "dev", ns.hostLink)
	run("link", "set", ns.hostLink, "up")
	run("-n", ns.name, "addr", "add", ns.nsIP+"/30", "dev", "eth-e2e")
	run("-n", ns.name, "link", "set", "eth-e2e", "up")
	run("-n", ns.name, "link", "set", "lo", "up")
	run("-n", ns.name, "route", "add", "default", "via", ns.hostIP)
	return ns
}

// listen opens a TCP listener on the test's side of the link.
func (ns *netNS) listen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", ns.hostIP+":0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// nsServer is serve running inside a namespace.
type nsServer struct {
	p       *proc
	dataDir string
	addr    string
	client  *client.Client
}

// serve starts `aetherium serve` in the namespace with networking on and env (the guests' settings), waits until
// it is ready, and stops it (and checks that no guest is left) when the test ends.
func (ns *netNS) serve(t *testing.T, env ...string) *nsServer {
	t.Helper()
	s := &nsServer{dataDir: shortDir(t), addr: ns.nsIP + ":8080"}
	env = append(serveEnv(s.dataDir, s.addr, "AETHERIUM_WORKER_ID=e2e-netns-"+ns.name), env...)
	env = append(env, "AETHERIUM_NETWORK=on", "AETHERIUM_SHUTDOWN_VMS=true")
	s.p = startArgv(t, "serve in "+ns.name, env, []string{"ip", "netns", "exec", ns.name, filepath.Join(binDir, "aetherium"), "serve"})
	t.Cleanup(func() {
		s.p.stop(syscall.SIGTERM, 60*time.Second)
		for _, f := range guestsUnder(s.dataDir) {
			_ = vmproc.KillGroup(f.PID)
		}
	})
	waitHTTP(t, s.addr, s.p)
	s.client = newClient(t, s.addr, readLine(t, filepath.Join(s.dataDir, "admin-api-key")))
	waitReady(t, s.client)
	return s
}
