//go:build linux

package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/image"
	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/docker"
	"github.com/aetherium/aetherium/internal/vmm/firecracker"
	"github.com/aetherium/aetherium/internal/vmm/qemu"
)

// DefaultImageName is the template and kernel name used when none is configured.
const DefaultImageName = "default"

// openBackend builds the configured VM backend; "auto" tries firecracker, then qemu, then docker, and logs which
// one it took and why it passed over the others.
// The store holds the network's address leases; with a nil store (doctor) VMs get no network. nm counts the VMs'
// network attachments and detachments (nil: none).
func openBackend(ctx context.Context, cfg config.Config, st store.Store, nm *metrics.Network, log *slog.Logger) (vmBackend, error) {
	switch cfg.Backend {
	case "firecracker":
		return openFirecracker(ctx, cfg, st, nm, log)
	case "qemu":
		return openQEMU(ctx, cfg, st, nm, log)
	case "docker":
		return openDocker(ctx, cfg, log)
	case "auto":
		return openAuto(ctx, cfg, st, nm, log)
	default:
		return nil, fmt.Errorf("unknown backend %q", cfg.Backend)
	}
}

func openAuto(ctx context.Context, cfg config.Config, st store.Store, nm *metrics.Network, log *slog.Logger) (vmBackend, error) {
	var skipped []string
	try := func(name string, open func() (vmBackend, error)) vmBackend {
		b, err := open()
		if err != nil {
			skipped = append(skipped, name+": "+err.Error())
			return nil
		}
		return b
	}
	for _, c := range []struct {
		name string
		open func() (vmBackend, error)
	}{
		{"firecracker", func() (vmBackend, error) { return autoFirecracker(ctx, cfg, st, nm, log) }},
		{"qemu", func() (vmBackend, error) { return openQEMU(ctx, cfg, st, nm, log) }},
		{"docker", func() (vmBackend, error) { return openDocker(ctx, cfg, log) }},
	} {
		if b := try(c.name, c.open); b != nil {
			log.Info("vm backend chosen", "backend", c.name, "passed_over", strings.Join(skipped, "; "))
			return b, nil
		}
	}
	return nil, fmt.Errorf("no vm backend can run on this host: %s", strings.Join(skipped, "; "))
}

// autoFirecracker opens firecracker only where it would really run guests: its binary is installed and a probe
// guest boots under KVM (with QEMU, which is how the host can be tested without a Firecracker-specific probe).
func autoFirecracker(ctx context.Context, cfg config.Config, st store.Store, nm *metrics.Network, log *slog.Logger) (vmBackend, error) {
	bin := cfg.FirecrackerBin
	if bin == "" {
		p, err := exec.LookPath("firecracker")
		if err != nil {
			return nil, errors.New("firecracker is not installed")
		}
		bin = p
	}
	kernel, _, err := guestImages(cfg)
	if err != nil {
		return nil, err
	}
	if err := probeKVM(); err != nil {
		return nil, err
	}
	qemuBin := cfg.QEMUBin
	if qemuBin == "" {
		qemuBin = qemu.DefaultBinary
	}
	if p, err := exec.LookPath(qemuBin); err == nil {
		if _, err := qemu.CachedProbeKVM(ctx, cfg.DataDir, p, kernel); err != nil {
			return nil, err
		}
	}
	cfg.FirecrackerBin = bin
	return openFirecracker(ctx, cfg, st, nm, log)
}

func openFirecracker(ctx context.Context, cfg config.Config, st store.Store, nm *metrics.Network, log *slog.Logger) (vmBackend, error) {
	kernel, rootfs, err := guestImages(cfg)
	if err != nil {
		return nil, fmt.Errorf("firecracker backend: %w", err)
	}
	net, err := openNetwork(ctx, cfg, st, log)
	if err != nil {
		return nil, fmt.Errorf("firecracker backend: %w", err)
	}
	fcfg := firecracker.Config{
		FirecrackerBin: cfg.FirecrackerBin, JailerBin: cfg.JailerBin, KernelPath: kernel,
		RootfsPath: rootfs, Images: templateResolver(cfg), DataDir: cfg.DataDir, WorkerID: cfg.WorkerID,
		InstallationID: cfg.InstallationID, ReadyTimeout: cfg.ReadyWait, DiskMB: int64(cfg.DiskMB), Logger: log,
	}
	if net != nil {
		fcfg.Network = countAttachments(net, nm)
	}
	setJailer(&fcfg, cfg)
	b, err := firecracker.New(ctx, fcfg)
	if err != nil {
		if net != nil {
			_ = net.Close()
		}
		return nil, err // already says "firecracker backend: ..."
	}
	if net == nil {
		return b, nil
	}
	return wrapNetwork(b, net), nil
}

func openQEMU(ctx context.Context, cfg config.Config, st store.Store, nm *metrics.Network, log *slog.Logger) (vmBackend, error) {
	bin := cfg.QEMUBin
	if bin == "" {
		bin = qemu.DefaultBinary
	}
	if _, err := exec.LookPath(bin); err != nil {
		return nil, fmt.Errorf("qemu backend: %s is not installed (apt-get install qemu-system-x86 qemu-utils)", bin)
	}
	kernel, rootfs, err := guestImages(cfg)
	if err != nil {
		return nil, fmt.Errorf("qemu backend: %w", err)
	}
	net, err := openNetwork(ctx, cfg, st, log)
	if err != nil {
		return nil, fmt.Errorf("qemu backend: %w", err)
	}
	qcfg := qemu.Config{
		Binary: bin, KernelPath: kernel, RootfsPath: rootfs, Images: templateResolver(cfg),
		DataDir: cfg.DataDir, WorkerID: cfg.WorkerID, InstallationID: cfg.InstallationID, Accel: cfg.QEMUAccel,
		ReadyTimeout: cfg.ReadyWait, DiskMB: int64(cfg.DiskMB), Logger: log,
	}
	if net != nil {
		qcfg.Network = countAttachments(net, nm)
	}
	b, err := qemu.New(ctx, qcfg)
	if err != nil {
		if net != nil {
			_ = net.Close()
		}
		return nil, err // already says "qemu backend: ..."
	}
	if net == nil {
		return b, nil
	}
	return wrapNetwork(b, net), nil
}

// withNetwork closes the network manager with its backend (the network itself stays up for the VMs).
type withNetwork struct {
	vmBackend
	net *network.Manager
}

func (w *withNetwork) Close() error { return errors.Join(w.vmBackend.Close(), w.net.Close()) }

// withNetworkEvents is withNetwork for a backend that reports VM events (vmm.VMEvents): the embedded interface
// would hide them from the worker's type assertion.
type withNetworkEvents struct {
	*withNetwork
	events vmm.VMEvents
}

func (w withNetworkEvents) Events(ctx context.Context) <-chan vmm.Event { return w.events.Events(ctx) }

// wrapNetwork wraps b so that closing it closes net too, keeping b's optional interfaces visible.
func wrapNetwork(b vmBackend, net *network.Manager) vmBackend {
	w := &withNetwork{vmBackend: b, net: net}
	if ev, ok := b.(vmm.VMEvents); ok {
		return withNetworkEvents{withNetwork: w, events: ev}
	}
	return w
}

// countAttachments returns a counting its attachments and detachments in nm; a itself when nm is nil.
func countAttachments(a network.Attacher, nm *metrics.Network) network.Attacher {
	if nm == nil {
		return a
	}
	return &countingAttacher{Attacher: a, m: nm}
}

type countingAttacher struct {
	network.Attacher
	m *metrics.Network
}

func (c *countingAttacher) Attach(ctx context.Context, vmID string, policy network.Policy) (network.Attachment, error) {
	att, err := c.Attacher.Attach(ctx, vmID, policy)
	c.m.Attached(err)
	return att, err
}

func (c *countingAttacher) Detach(ctx context.Context, vmID string) error {
	err := c.Attacher.Detach(ctx, vmID)
	c.m.Detached(err)
	return err
}

// openNetwork sets up the host network of microVMs: with network "auto" only when running as root (and quietly
// without it otherwise), with "on" or fail.
func openNetwork(ctx context.Context, cfg config.Config, st store.Store, log *slog.Logger) (*network.Manager, error) {
	if cfg.Network == "off" || st == nil {
		return nil, nil
	}
	if os.Geteuid() != 0 {
		if cfg.Network == "on" {
			return nil, errors.New("network: setting up the bridge, TAP devices and nftables rules needs root (or set network: off)")
		}
		log.Warn("vms get no network: the worker is not root (network: auto)")
		return nil, nil
	}
	cidr, err := netip.ParsePrefix(cfg.NetworkCIDR)
	if err != nil {
		return nil, fmt.Errorf("network_cidr: %w", err)
	}
	ncfg := network.Config{Bridge: cfg.NetworkBridge, CIDR: cidr, Leases: st.Leases(), Owner: cfg.WorkerID, Logger: log}
	if cfg.CredProxyPort > 0 {
		// The credential proxy's port on the gateway: open to the guests, closed to everything else.
		ncfg.GuestOnlyPorts = []uint16{uint16(cfg.CredProxyPort)}
	}
	m, err := network.New(ncfg)
	if err != nil {
		return nil, fmt.Errorf("network: %w", err)
	}
	if err := m.Setup(ctx); err != nil {
		_ = m.Close()
		return nil, fmt.Errorf("network: %w (set network: off to run vms without one)", err)
	}
	log.Info("vm network ready", "bridge", cfg.NetworkBridge, "cidr", cidr, "gateway", m.Gateway())
	return m, nil
}

func openDocker(ctx context.Context, cfg config.Config, log *slog.Logger) (vmBackend, error) {
	b, err := docker.New(ctx, docker.Config{
		DataDir: cfg.DataDir, AgentBinary: cfg.AgentBinary, BusyboxPath: cfg.Busybox, DefaultImage: cfg.DockerImage,
		WorkerID: cfg.WorkerID, InstallationID: cfg.InstallationID, NetworkMode: cfg.DockerNet,
		ReadyTimeout: cfg.ReadyWait, Logger: log,
	})
	if err != nil {
		return nil, err // already says "docker backend: ..."
	}
	return b, nil
}

// guestImages returns the kernel and default template of a microVM backend: the configured paths, or the kernel
// and the template named "default" in the data directory.
func guestImages(cfg config.Config) (kernel, rootfs string, err error) {
	kernel, rootfs = cfg.KernelPath, cfg.RootfsPath
	if kernel == "" {
		ks, err := image.NewKernelStore(filepath.Join(cfg.DataDir, "kernels"))
		if err != nil {
			return "", "", err
		}
		m, err := ks.Get(DefaultImageName)
		if err != nil {
			return "", "", fmt.Errorf("no guest kernel: %w (build one with `aetherium image kernel build`, or set kernel_path)", err)
		}
		kernel = m.Path
	}
	if rootfs == "" {
		m, err := openTemplates(cfg).Get(DefaultImageName)
		if err != nil {
			return "", "", fmt.Errorf("no default root filesystem template: %w (build one with `aetherium image build "+
				"--name default ...`, or set rootfs_path)", err)
		}
		rootfs = m.Path
	}
	return kernel, rootfs, nil
}

// templateStore is the data directory's template store; a store that cannot be opened resolves nothing.
type templateStore interface {
	Get(ref string) (image.Manifest, error)
}

type brokenStore struct{ err error }

func (b brokenStore) Get(string) (image.Manifest, error) { return image.Manifest{}, b.err }

func openTemplates(cfg config.Config) templateStore {
	s, err := image.NewStore(filepath.Join(cfg.DataDir, "images"))
	if err != nil {
		return brokenStore{err}
	}
	return s
}

// templateResolver maps a VM's image ("name" or "name@version") to its template file.
func templateResolver(cfg config.Config) func(string) (string, error) {
	return func(ref string) (string, error) {
		m, err := openTemplates(cfg).Get(ref)
		if err != nil {
			return "", err
		}
		return m.Path, nil
	}
}

// setJailer copies the jailer settings into the Firecracker backend's configuration.
func setJailer(fcfg *firecracker.Config, cfg config.Config) {
	fcfg.JailerUID, fcfg.JailerGID = cfg.JailerUID, cfg.JailerGID
	fcfg.JailerChrootBase, fcfg.JailerCgroupVersion = cfg.JailerChrootBase, cfg.JailerCgroupVersion
	fcfg.JailerCgroups, fcfg.JailerNetNS = strings.Fields(cfg.JailerCgroups), cfg.JailerNetNS
}
