//go:build linux

package qemu

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/store/storeopen"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest"
)

// netHost is a network namespace standing in for a VM host: an uplink with a default route, nothing routed out.
func netHost(t *testing.T) (string, netns.NsHandle) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "no ip tool (iproute2)"
	}
	if why != "" {
		if vmmtest.RequireServices() {
			t.Fatalf("AETHERIUM_REQUIRE_SERVICES=1 but network namespaces cannot be made: %s", why)
		}
		t.Skip("SKIPPED: needs network namespaces: " + why)
	}
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	name := "aeq-" + hex.EncodeToString(b)
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v: %s", args, err, out)
		}
	}
	ip("netns", "add", name)
	h, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		h.Close()
		_ = exec.Command("ip", "netns", "del", name).Run()
	})
	ip("-n", name, "link", "set", "lo", "up")
	// A veth pair whose far end stays in the namespace, down: an uplink that leads nowhere.
	ip("-n", name, "link", "add", "up0", "type", "veth", "peer", "name", "up0-far")
	ip("-n", name, "addr", "add", "203.0.113.2/24", "dev", "up0")
	ip("-n", name, "link", "set", "up0", "up")
	ip("-n", name, "route", "add", "default", "via", "203.0.113.1")
	return name, h
}

// TestNetworkedGuests: the backend with a network manager gives each guest its address (kernel ip=), a resolver
// (agent, from aetherium.dns), a route to the gateway, and no way to the other guest; delete frees the TAP and
// the lease. Everything runs in a network namespace the test makes.
func TestNetworkedGuests(t *testing.T) {
	requireGuests(t)
	nsName, ns := netHost(t)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "aeq-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st, err := storeopen.Open(ctx, "sqlite://"+filepath.Join(dir, "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	mgr, err := network.New(network.Config{NetNS: ns, Leases: st.Leases(), Owner: "w1", Scope: "test/" + nsName})
	if err != nil {
		t.Fatal(err)
	}
	defer mgr.Close()
	if err := mgr.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	// QEMU opens the TAP by name, so it runs in the namespace: through `ip netns exec`, which execs QEMU in place
	// (same pid, same arguments, Pdeathsig kept).
	qemuBin, _ := exec.LookPath(DefaultBinary)
	wrapper := filepath.Join(dir, "qemu-in-netns")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec ip netns exec "+nsName+" "+qemuBin+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	b, cfg := newBackend(t, func(c *Config) { c.Binary = wrapper; c.Network = mgr })

	boot(t, b, "net-a")
	boot(t, b, "net-b")
	a, _ := b.GetVMStatus(ctx, "net-a")
	bb, _ := b.GetVMStatus(ctx, "net-b")
	if a.Network == nil || bb.Network == nil || a.Network.IP == bb.Network.IP || a.Network.MAC == bb.Network.MAC {
		t.Fatalf("addresses: %+v %+v", a.Network, bb.Network)
	}
	gw := a.Network.Gateway
	if res := run(t, b, "net-a", "cat", "/sys/class/net/eth0/address"); strings.TrimSpace(string(res.Stdout)) != a.Network.MAC {
		t.Fatalf("guest MAC %q, want %s", res.Stdout, a.Network.MAC)
	}
	if res := run(t, b, "net-a", "ip", "-4", "addr", "show", "eth0"); !strings.Contains(string(res.Stdout), a.Network.IP+"/24") {
		t.Fatalf("guest eth0: %s (want %s/24)", res.Stdout, a.Network.IP)
	}
	if res := run(t, b, "net-a", "cat", "/etc/resolv.conf"); !strings.Contains(string(res.Stdout), "nameserver "+gw) {
		t.Fatalf("resolv.conf = %q, want the gateway %s", res.Stdout, gw)
	}
	if res := run(t, b, "net-a", "ping", "-c", "1", "-W", "2", gw); res.ExitCode != 0 {
		t.Fatalf("guest cannot ping its gateway %s: %s%s", gw, res.Stdout, res.Stderr)
	}
	if res := run(t, b, "net-a", "ping", "-c", "1", "-W", "2", bb.Network.IP); res.ExitCode == 0 {
		t.Fatalf("guest a reached guest b (%s): guests must be isolated", bb.Network.IP)
	}
	if res := run(t, b, "net-a", "ping", "-c", "1", "-W", "2", "203.0.113.2"); res.ExitCode == 0 {
		t.Fatal("guest reached the host's uplink address: host addresses must be unreachable")
	}

	for _, id := range []string{"net-a", "net-b"} {
		if err := b.DeleteVM(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	leases, err := st.Leases().List(ctx, mgr.Scope())
	if err != nil {
		t.Fatal(err)
	}
	if len(leases) != 0 {
		t.Fatalf("leases left after delete: %+v", leases)
	}
	out, _ := exec.Command("ip", "-n", nsName, "-o", "link", "show").CombinedOutput()
	if strings.Contains(string(out), network.TAPName("net-a")) {
		t.Fatalf("TAP left after delete:\n%s", out)
	}
	_ = cfg
}

// TestNetworkedGuestIsAdopted: a worker restart (backend and network manager closed, new ones made on the same
// data directory and store) keeps a running guest's network: the same TAP, address and lease, and the guest still
// reaches its gateway; a delete then frees them.
func TestNetworkedGuestIsAdopted(t *testing.T) {
	requireGuests(t)
	nsName, ns := netHost(t)
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "aeq-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	st, err := storeopen.Open(ctx, "sqlite://"+filepath.Join(dir, "db.sqlite"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	newManager := func() *network.Manager {
		mgr, err := network.New(network.Config{NetNS: ns, Leases: st.Leases(), Owner: "w1", Scope: "test/" + nsName})
		if err != nil {
			t.Fatal(err)
		}
		if err := mgr.Setup(ctx); err != nil {
			t.Fatal(err)
		}
		return mgr
	}
	qemuBin, _ := exec.LookPath(DefaultBinary)
	wrapper := filepath.Join(dir, "qemu-in-netns")
	if err := os.WriteFile(wrapper, []byte("#!/bin/sh\nexec ip netns exec "+nsName+" "+qemuBin+" \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	mgr1 := newManager()
	b1, cfg := newBackend(t, func(c *Config) { c.Binary = wrapper; c.Network = mgr1 })
	if _, err := b1.CreateVM(ctx, vmm.VMConfig{ID: "net-keep", MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	if err := b1.StartVM(ctx, "net-keep"); err != nil {
		t.Fatal(err)
	}
	before, _ := b1.GetVMStatus(ctx, "net-keep")
	stBefore, _ := b1.loadState("net-keep")
	if res := run(t, b1, "net-keep", "ping", "-c", "1", "-W", "2", before.Network.Gateway); res.ExitCode != 0 {
		t.Fatalf("guest cannot ping its gateway before the restart: %s%s", res.Stdout, res.Stderr)
	}
	// The worker goes away: its backend and network manager close, the guest keeps running.
	_ = b1.Close()
	_ = mgr1.Close()

	mgr2 := newManager()
	defer mgr2.Close()
	cfg.Network = mgr2
	b2, err := New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	after, err := b2.GetVMStatus(ctx, "net-keep")
	if err != nil || after.State != vmm.StateRunning || after.Network == nil || after.Network.IP != before.Network.IP {
		t.Fatalf("after the restart: %+v, %v; want running with address %s", after, err, before.Network.IP)
	}
	if stAfter, _ := b2.loadState("net-keep"); stAfter.PID != stBefore.PID {
		t.Fatalf("QEMU pid %d after the restart, was %d", stAfter.PID, stBefore.PID)
	}
	if res := run(t, b2, "net-keep", "ping", "-c", "1", "-W", "2", after.Network.Gateway); res.ExitCode != 0 {
		t.Fatalf("guest cannot ping its gateway after the restart: %s%s", res.Stdout, res.Stderr)
	}
	leases, err := st.Leases().List(ctx, mgr2.Scope())
	if err != nil || len(leases) != 1 {
		t.Fatalf("leases after the restart: %+v, %v; want the one of the vm", leases, err)
	}
	if err := b2.DeleteVM(ctx, "net-keep"); err != nil {
		t.Fatal(err)
	}
	if leases, _ = st.Leases().List(ctx, mgr2.Scope()); len(leases) != 0 {
		t.Fatalf("leases left after delete: %+v", leases)
	}
	out, _ := exec.Command("ip", "-n", nsName, "-o", "link", "show").CombinedOutput()
	if strings.Contains(string(out), network.TAPName("net-keep")) {
		t.Fatalf("TAP left after delete:\n%s", out)
	}
}
