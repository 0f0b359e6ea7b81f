//go:build linux

package network

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/transport"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest"
)

// The guest fixture (kernel and template) is built once, on first use, into fixtureDir; TestMain removes it.
var (
	fixtureOnce  sync.Once
	fixtureDir   string
	fixtureSkip  string
	guestKernel  string
	guestRootfs  string
	tscKHzForTCG int
)

func TestMain(m *testing.M) {
	code := m.Run()
	if fixtureDir != "" {
		_ = os.RemoveAll(fixtureDir)
	}
	os.Exit(code)
}

// requireGuests skips (or fails, with AETHERIUM_REQUIRE_SERVICES=1) unless QEMU guests can boot, building the
// fixture the first time.
func requireGuests(tb testing.TB) {
	tb.Helper()
	requireNetAdmin(tb)
	fixtureOnce.Do(func() {
		if fixtureSkip = vmmtest.QEMUMissing(); fixtureSkip != "" {
			return
		}
		guestKernel, _ = vmmtest.Kernel()
		var err error
		if tscKHzForTCG, err = hostTSCKHz(); err != nil {
			fixtureSkip = err.Error()
			return
		}
		if fixtureDir, err = os.MkdirTemp("", "aenetfx-"); err != nil {
			fixtureSkip = err.Error()
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		_, man, err := vmmtest.Template(ctx, fixtureDir, "nettest")
		if err != nil {
			fixtureSkip = "cannot build a guest template (needs a Docker engine): " + err.Error()
			return
		}
		guestRootfs = man.Path
	})
	if fixtureSkip == "" {
		return
	}
	if requireServices() {
		tb.Fatalf("AETHERIUM_REQUIRE_SERVICES=1 but QEMU guests cannot run: %s", fixtureSkip)
	}
	tb.Skipf("SKIPPED: needs qemu-system-x86_64, a guest kernel and a Docker engine: %s", fixtureSkip)
}

// hostTSCKHz reads the CPU frequency: a microvm guest under TCG must be told it (see the qemu backend).
func hostTSCKHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil && mhz > 0 {
				return int(mhz * 1000), nil
			}
		}
	}
	return 0, fmt.Errorf("no \"cpu MHz\" in /proc/cpuinfo")
}

// testGuest is a QEMU microvm guest (TCG) whose NIC is an attachment's TAP, driven through its agent.
type testGuest struct {
	att    Attachment
	client *agentclient.Client
	dir    string
}

// bootGuest starts a guest on att inside the host namespace (QEMU opens the TAP by name, so it must run where the
// TAP is) and waits for its agent.
func bootGuest(t testing.TB, host *netNS, att Attachment) *testGuest {
	t.Helper()
	return bootGuestFrom(t, host, att, guestRootfs, "qemu64,+arat", 256)
}

// bootGuestFrom is bootGuest from another root filesystem template, CPU model and memory size.
func bootGuestFrom(t testing.TB, host *netNS, att Attachment, rootfs, cpu string, memMB int) *testGuest {
	t.Helper()
	dir, err := os.MkdirTemp("", "aeg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	disk := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", rootfs, disk).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img: %v: %s", err, out)
	}
	sock := filepath.Join(dir, "agent.sock")
	cmdline := strings.Join([]string{"console=ttyS0", "reboot=t", "panic=-1", "pci=off", "quiet", "cryptomgr.notests",
		"mitigations=off", "root=/dev/vda", "rw", "rootfstype=ext4", "init=/sbin/aetherium-agent",
		"aetherium.listen=virtio-serial:agent", "aetherium.hostname=g" + att.IP.String()[len("172.16.0."):],
		"tsc_early_khz=" + strconv.Itoa(tscKHzForTCG), "tsc=reliable", KernelArgs(att)}, " ") + " -- --init"
	args := []string{"netns", "exec", host.name, "qemu-system-x86_64",
		"-name", "aetherium-nettest-" + att.VMID,
		"-M", "microvm,x-option-roms=off", "-accel", "tcg,tb-size=64", "-cpu", cpu,
		"-m", strconv.Itoa(memMB), "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "file,id=console,path=" + filepath.Join(dir, "console.log"), "-serial", "chardev:console",
		"-kernel", guestKernel, "-append", cmdline,
		"-drive", "id=root,if=none,format=qcow2,file=" + disk + ",discard=unmap",
		"-device", "virtio-blk-device,drive=root", "-device", "virtio-rng-device",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,server=on,wait=off,path=" + sock,
		"-device", "virtserialport,chardev=agent,name=agent"}
	args = append(args, att.QEMUArgs()...)
	cmd := exec.Command("ip", args...)
	logf, err := os.Create(filepath.Join(dir, "qemu.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	dial, session := transport.Multiplexed(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	})
	client := agentclient.New(dial)
	t.Cleanup(func() {
		_ = client.Close()
		_ = session.Close()
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	ready := make(chan error, 1)
	go func() { _, err := client.WaitReady(ctx); ready <- err }()
	select {
	case err = <-ready:
	case err = <-exited:
		err = fmt.Errorf("qemu exited: %v", err)
	}
	if err != nil {
		console, _ := os.ReadFile(filepath.Join(dir, "console.log"))
		qlog, _ := os.ReadFile(filepath.Join(dir, "qemu.log"))
		t.Fatalf("guest %s did not become ready: %v\nqemu: %s\nconsole:\n%s", att.VMID, err, qlog, tail(console, 3000))
	}
	return &testGuest{att: att, client: client, dir: dir}
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// sh runs a shell command in the guest and returns its output (stdout and stderr) and exit code.
func (g *testGuest) sh(t testing.TB, command string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := g.client.Exec(ctx, agent.ExecRequest{Shell: command, Timeout: 90 * time.Second})
	if err != nil {
		t.Fatalf("guest %s: exec %q: %v", g.att.VMID, command, err)
	}
	return string(res.Stdout) + string(res.Stderr), res.ExitCode
}

// must runs command and fails the test unless it succeeds; it returns the output.
func (g *testGuest) must(t testing.TB, what, command string) string {
	t.Helper()
	out, code := g.sh(t, command)
	if code != 0 {
		t.Fatalf("guest %s: %s: `%s` exited %d:\n%s", g.att.VMID, what, command, code, out)
	}
	return out
}

// mustFail runs command and fails the test if it succeeds.
func (g *testGuest) mustFail(t testing.TB, what, command string) {
	t.Helper()
	out, code := g.sh(t, command)
	if code == 0 {
		t.Fatalf("guest %s: %s: `%s` succeeded but must not:\n%s", g.att.VMID, what, command, out)
	}
}

// httpGet fetches / from ip:port in the guest and succeeds if the test server answered. (busybox's wget of the
// test template crashes: nc speaks HTTP/1.0 just as well.)
func httpGet(ip string, port int) string {
	return fmt.Sprintf("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 4 %s %d | grep hello", ip, port)
}

// tcp connects from the guest and prints what the server says.
func tcp(ip string, port int) string { return fmt.Sprintf("nc -w 4 %s %d </dev/null", ip, port) }

// TestGuests boots real guests (QEMU, TCG) on the manager's TAPs and checks what they can and cannot reach:
// address, gateway, internet through NAT, no other guest, no private server, no host service, the CIDR and domain
// policies, and anti-spoofing. Every "cannot" has a "can" beside it that differs in the one thing being tested, so a
// broken test network shows up as a failure, not as a pass.
func TestGuests(t *testing.T) {
	requireGuests(t)
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), func(c *Config) {
		c.AllowHostPorts = []HostPort{{Proto: "tcp", Port: hostPortOpen}}
	})
	attA := mustAttach(t, m, "guest-a", Policy{})
	attB := mustAttach(t, m, "guest-b", Policy{DenyCIDRs: pfx(publicAddr + "/32"), AllowCIDRs: pfx("10.66.0.0/16")})
	attC := mustAttach(t, m, "guest-c", Policy{AllowDomains: []string{"allowed.test"},
		DenyDomains: []string{"bad.allowed.test"}})
	guests := make([]*testGuest, 3)
	var wg sync.WaitGroup
	for i, att := range []Attachment{attA, attB, attC} {
		wg.Go(func() { guests[i] = bootGuestOrError(t, topo.host, att) })
	}
	wg.Wait()
	for _, g := range guests {
		if g == nil {
			t.FailNow() // bootGuestOrError reported why
		}
	}
	a, b, c := guests[0], guests[1], guests[2]
	gw := m.Gateway().String()

	t.Run("Address", func(t *testing.T) {
		for _, g := range guests {
			out := g.must(t, "show address", "ip -4 addr show dev eth0; ip route")
			if !strings.Contains(out, "inet "+g.att.IP.String()+"/24") || !strings.Contains(out, "default via "+gw) {
				t.Fatalf("guest %s: want %s/24 via %s:\n%s", g.att.VMID, g.att.IP, gw, out)
			}
			if out := g.must(t, "show mac", "cat /sys/class/net/eth0/address"); strings.TrimSpace(out) != g.att.MAC {
				t.Fatalf("guest %s has MAC %s, want %s", g.att.VMID, out, g.att.MAC)
			}
		}
	})

	t.Run("Gateway", func(t *testing.T) {
		a.must(t, "ping the gateway", "ping -c 1 -W 3 "+gw)
		out := a.must(t, "resolve through the forwarder", "nslookup allowed.test "+gw)
		if !strings.Contains(out, publicAddr) {
			t.Fatalf("nslookup through the gateway:\n%s", out)
		}
	})

	t.Run("InternetThroughNAT", func(t *testing.T) {
		out := a.must(t, "fetch from the internet", httpGet(publicAddr, httpPort))
		// The server sees the host's uplink address: the guest's address was masqueraded.
		if want := fmt.Sprintf("hello %s from %s", publicAddr, uplinkHostAddr); !strings.Contains(out, want) {
			t.Fatalf("got %q, want %q", out, want)
		}
		a.must(t, "query the internet's DNS directly", "nslookup allowed.test "+dnsAddr)
	})

	t.Run("NoOtherGuest", func(t *testing.T) {
		b.must(t, "start a server in guest b", "(httpd -p 8081 -h /etc &) ; sleep 1")
		// The host reaches it (so it runs), guest a does not, neither by its address nor by ping, nor b to a.
		if err := hostGet(topo.host, fmt.Sprintf("http://%s:8081/hostname", b.att.IP)); err != nil {
			t.Fatalf("the host cannot reach guest b's server (the check below would prove nothing): %v", err)
		}
		a.mustFail(t, "fetch from guest b", fmt.Sprintf("printf 'GET /hostname HTTP/1.0\\r\\n\\r\\n' | nc -w 4 %s 8081 | grep 200", b.att.IP))
		a.mustFail(t, "ping guest b", "ping -c 1 -W 2 "+b.att.IP.String())
		b.mustFail(t, "ping guest a", "ping -c 1 -W 2 "+a.att.IP.String())
	})

	t.Run("NoPrivateServer", func(t *testing.T) {
		url := httpGet(privateAddr, httpPort)
		a.mustFail(t, "reach a private address by default", url)
		b.must(t, "reach it with an AllowCIDRs rule", url)
	})

	t.Run("NoHostServices", func(t *testing.T) {
		before := topo.hostConnCount(hostPort)
		a.mustFail(t, "reach a host service on the gateway", tcp(gw, hostPort)+" | grep host")
		a.mustFail(t, "reach it on the host's uplink address", tcp(uplinkHostAddr, hostPort)+" | grep host")
		if n := topo.hostConnCount(hostPort); n != before {
			t.Fatalf("the host service accepted %d connections from the guest", n-before)
		}
		a.must(t, "reach the service Config.AllowHostPorts opens", tcp(gw, hostPortOpen)+" | grep host")
	})

	t.Run("EgressCIDRDeny", func(t *testing.T) {
		b.mustFail(t, "reach a denied address", httpGet(publicAddr, httpPort))
		b.must(t, "reach another internet address", httpGet(publicAddr2, httpPort))
	})

	t.Run("DomainAllowList", func(t *testing.T) {
		// Before any resolution, not even the address that allowed.test will have is open.
		c.mustFail(t, "connect before resolving", httpGet(publicAddr, httpPort))
		out := c.must(t, "resolve an allowed name", "nslookup allowed.test "+gw)
		if !strings.Contains(out, publicAddr) {
			t.Fatalf("nslookup allowed.test:\n%s", out)
		}
		c.must(t, "connect to its address", httpGet(publicAddr, httpPort))
		c.mustFail(t, "resolve a name off the list", "nslookup other.test "+gw)
		c.mustFail(t, "resolve a denied subdomain of an allowed name", "nslookup bad.allowed.test "+gw)
		c.mustFail(t, "connect to an address never resolved", httpGet(publicAddr2, httpPort))
		c.mustFail(t, "bypass the forwarder with another resolver", "nslookup allowed.test "+dnsAddr)
		els := setElements(t, m, dnsSet(c.att.TAP))
		if len(els) != 1 || net.IP(els[0].Key).String() != publicAddr || els[0].Timeout < minLearnTTL {
			t.Fatalf("learnt set of guest c: %+v", els)
		}
	})

	t.Run("SpoofedSourceDropped", func(t *testing.T) {
		url := httpGet(publicAddr2, httpPort)
		a.must(t, "fetch before spoofing", url)
		before := spoofDrops(t, m, a.att.TAP)
		// Guest a takes guest b's address, whose traffic the egress map would accept: only anti-spoofing stops it.
		spoof := fmt.Sprintf("ip addr flush dev eth0 && ip addr add %s/24 dev eth0 && ip route add default via %s",
			b.att.IP, gw)
		restore := fmt.Sprintf("ip addr flush dev eth0 && ip addr add %s/24 dev eth0 && ip route add default via %s",
			a.att.IP, gw)
		a.must(t, "take guest b's address", spoof)
		_, code := a.sh(t, url)
		a.must(t, "restore the address", restore)
		if code == 0 {
			t.Fatal("a guest using another guest's address reached the internet")
		}
		if after := spoofDrops(t, m, a.att.TAP); after <= before {
			t.Fatalf("the anti-spoofing chain dropped nothing (%d before, %d after)", before, after)
		}
		a.must(t, "fetch after restoring", url)
		// A changed MAC is dropped too.
		a.must(t, "change the MAC", "ip link set dev eth0 address 02:00:00:00:00:01")
		_, code = a.sh(t, "ip neigh flush all; "+url)
		a.must(t, "restore the MAC", "ip link set dev eth0 address "+a.att.MAC)
		if code == 0 {
			t.Fatal("a guest with another MAC reached the internet")
		}
		a.must(t, "fetch after restoring the MAC", "ip neigh flush all; "+url)
	})
}

// bootGuestOrError is bootGuest for a goroutine: t.Fatal must not be called off the test's goroutine.
func bootGuestOrError(t *testing.T, host *netNS, att Attachment) (g *testGuest) {
	done := make(chan struct{})
	ft := &fatalCatcher{T: t}
	go func() {
		defer close(done)
		defer func() {
			if r := recover(); r != nil && r != errFatal {
				panic(r)
			}
		}()
		g = bootGuest(ft, host, att)
	}()
	<-done
	return g
}

var errFatal = new(int)

// fatalCatcher turns Fatalf into Errorf plus a panic its goroutine recovers, so boot failures can be reported from
// goroutines.
type fatalCatcher struct{ *testing.T }

func (f *fatalCatcher) Fatalf(format string, args ...any) {
	f.T.Errorf(format, args...)
	panic(errFatal)
}

func (f *fatalCatcher) Fatal(args ...any) {
	f.T.Error(args...)
	panic(errFatal)
}

// spoofDrops sums the counters of the VM's anti-spoofing chain.
func spoofDrops(t testing.TB, m *Manager, tap string) uint64 {
	t.Helper()
	cc, err := m.nft()
	if err != nil {
		t.Fatal(err)
	}
	rules, err := cc.GetRules(bridgeTable, &nftables.Chain{Name: spoofChain(tap), Table: bridgeTable})
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, r := range rules {
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				n += c.Packets
			}
		}
	}
	return n
}

// hostGet fetches url from the host namespace.
func hostGet(host *netNS, url string) error {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := host.run().do(func() error {
				var err error
				var d net.Dialer
				c, err = d.DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}}
	resp, err := client.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
