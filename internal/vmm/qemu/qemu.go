//go:build linux

package qemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/keyedmutex"
	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// Defaults for Config fields left zero.
const (
	DefaultBinary       = "qemu-system-x86_64"
	DefaultImgBinary    = "qemu-img"
	DefaultGuestInit    = "/sbin/aetherium-agent"
	DefaultReadyTimeout = 60 * time.Second // TCG boots take 2-3 s alone, several times that when many boot at once
	DefaultStopTimeout  = 5 * time.Second
	DefaultDiskMB       = 8192
	defaultVCPUs        = 1
	defaultMemoryMB     = 512
	minMemoryMB         = 128
	maxVCPUs            = 32
	// agentPortName is the virtio-serial port's name; the agent finds its port by it.
	agentPortName = "agent"
)

// Accelerators.
const (
	AccelAuto = "auto" // KVM when a probe boot under KVM works, TCG otherwise
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// Files in a VM's directory.
const (
	stateFile    = "state.json"
	consoleFile  = "console.log"
	agentSock    = "agent.sock"
	qmpSock      = "qmp.sock"
	rawDiskName  = "disk.raw"
	qcowDiskName = "disk.qcow2"
)

// consoleMarker begins the line written to the console log before each start.
const consoleMarker = "--- aetherium:"

// maxSunPath is the longest Unix socket path Linux accepts with its terminating NUL.
const maxSunPath = 107

// typicalIDLen is the length of the store's VM ids (UUIDs), used to check DataDir's depth at start-up.
const typicalIDLen = 36

// consoleTailBytes is how much of the console log goes into a failed start's error.
const consoleTailBytes = 4 << 10

// ImageResolver maps a VMConfig.Image that is not an absolute path (a template name such as "default" or
// "default@<version>") to the template's file.
type ImageResolver func(ref string) (string, error)

// Config configures a Backend.
type Config struct {
	// Binary is qemu-system-x86_64 (looked up in PATH when not absolute). ImgBinary is qemu-img, for qcow2 overlays.
	Binary    string
	ImgBinary string
	// KernelPath is the guest kernel: an uncompressed vmlinux with virtio-mmio, virtio-console and ext4 built in
	// (`aetherium image kernel build`). Required.
	KernelPath string
	// RootfsPath is the default template (ext4 with the agent as init), used when VMConfig.Image is empty. It is only
	// read: each VM gets a copy-on-write disk of it.
	RootfsPath string
	// Images resolves template names; nil accepts only absolute paths.
	Images ImageResolver
	// DataDir holds DataDir/qemu/<id> for each VM. Required.
	DataDir string
	// WorkerID is recorded in each VM's state; ListVMs returns only this worker's VMs.
	WorkerID string
	// InstallationID names the installation (server.InstallationID: one per data directory). It is recorded in
	// each VM's state and put in its QEMU's -name, and New reaps only QEMU processes that carry it: another
	// installation's VMs on the same host are never touched, even with the same worker id. Up to 32 lowercase
	// letters and digits; empty for none (processes are then told apart by DataDir alone).
	InstallationID string
	// DieWithWorker makes every QEMU die with this process (Pdeathsig): for tests, and for operators who want no
	// VM to outlive its worker. By default QEMU runs detached and a restarted worker adopts it again.
	DieWithWorker bool
	// Accel is AccelAuto (default), AccelKVM or AccelTCG.
	Accel string
	// DiskMB is the least size of a VM's disk: a template smaller than that is grown (sparsely: the space is only
	// used as the guest writes), and the agent grows the filesystem at boot. Default DefaultDiskMB.
	DiskMB int64
	// ExtraKernelArgs are appended to the kernel command line (before init's own arguments).
	ExtraKernelArgs string
	// ReadyTimeout bounds how long StartVM waits for the agent. Default 60s.
	ReadyTimeout time.Duration
	// StopTimeout bounds each step of StopVM (agent power-off, QMP quit). Default 5s.
	StopTimeout time.Duration
	// Network, when set, gives every VM a TAP device on the host's bridge with its egress policy
	// (internal/network); nil: VMs have no network interface.
	Network network.Attacher
	// TSCKHz is the host's TSC frequency, which a microvm guest under TCG must be told (tsc_early_khz): without it
	// boots hang calibrating against a PIT that microvm does not have. Default: read from /proc/cpuinfo.
	TSCKHz int
	Logger *slog.Logger
}

// Backend implements vmm.Orchestrator with QEMU.
type Backend struct {
	cfg   Config
	log   *slog.Logger
	accel string // kvm or tcg, decided in New
	why   string // why that accelerator

	vmLocks keyedmutex.Map      // serialise the operations on one VM
	boots   vmproc.Boots        // lets a delete cancel a start
	exits   *vmproc.ExitWatcher // tells the worker when a QEMU exits on its own (vmm.VMEvents)

	mu     sync.Mutex
	agents map[string]*agentConn
	procs  map[string]*vmproc.Process
	closed bool
}

var (
	_ vmm.Orchestrator = (*Backend)(nil)
	_ vmm.VMEvents     = (*Backend)(nil)
)

// agentConn is a VM's agent client and the multiplexed session under it.
type agentConn struct {
	client  *agentclient.Client
	session io.Closer
}

// New validates cfg, chooses the accelerator, prepares DataDir, reaps QEMU processes of this installation and
// DataDir that no VM accounts for (left by a worker that crashed while starting one), and adopts the QEMUs that
// still run for their VMs (left by a previous worker process: they run detached and outlive it).
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	b := &Backend{
		cfg:    cfg,
		log:    cfg.Logger.With("backend", "qemu"),
		agents: make(map[string]*agentConn),
		procs:  make(map[string]*vmproc.Process),
	}
	b.exits = vmproc.NewExitWatcher("qemu", b.log, func(id string) string {
		return vmproc.LastConsoleLine(filepath.Join(b.vmDir(id), consoleFile), consoleMarker)
	})
	if err := os.MkdirAll(b.vmsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("qemu backend: create data dir: %w", err)
	}
	if err := b.Health(ctx); err != nil {
		return nil, err
	}
	switch cfg.Accel {
	case AccelTCG:
		b.accel, b.why = AccelTCG, "configured"
	case AccelKVM:
		b.accel, b.why = AccelKVM, "configured"
	default:
		cached, err := CachedProbeKVM(ctx, cfg.DataDir, cfg.Binary, cfg.KernelPath)
		switch {
		case err != nil:
			b.accel, b.why = AccelTCG, "KVM cannot boot a guest here: "+err.Error()
		case cached:
			b.accel, b.why = AccelKVM, "a probe guest booted under KVM (remembered for this boot of the host)"
		default:
			b.accel, b.why = AccelKVM, "a probe guest booted under KVM"
		}
	}
	b.log.Info("qemu accelerator chosen", "accel", b.accel, "why", b.why)
	if err := b.reapOrphans(ctx); err != nil {
		b.log.Warn("reap orphaned qemu processes", "err", err)
	}
	if err := b.adopt(ctx); err != nil {
		return nil, err
	}
	if err := b.restoreNetwork(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

func (c *Config) setDefaults() error {
	var err error
	if c.DataDir == "" {
		return errors.New("qemu backend: DataDir is required")
	}
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return fmt.Errorf("qemu backend: DataDir: %w", err)
	}
	if c.KernelPath == "" {
		return errors.New("qemu backend: no guest kernel configured: build one with `aetherium image kernel build` " +
			"or set kernel_path to an uncompressed vmlinux")
	}
	if c.Binary == "" {
		c.Binary = DefaultBinary
	}
	if c.ImgBinary == "" {
		c.ImgBinary = DefaultImgBinary
	}
	for _, p := range []*string{&c.Binary, &c.ImgBinary} {
		if !strings.ContainsRune(*p, '/') {
			lp, err := exec.LookPath(*p)
			if err != nil {
				return fmt.Errorf("qemu backend: %s not found in PATH (install it: apt-get install qemu-system-x86 qemu-utils)", *p)
			}
			*p = lp
		}
	}
	for _, p := range []*string{&c.Binary, &c.ImgBinary, &c.KernelPath, &c.RootfsPath} {
		if *p == "" {
			continue
		}
		if *p, err = filepath.Abs(*p); err != nil {
			return fmt.Errorf("qemu backend: %w", err)
		}
	}
	sock := filepath.Join(c.DataDir, "qemu", strings.Repeat("x", typicalIDLen), agentSock)
	if len(sock) > maxSunPath {
		return fmt.Errorf("qemu backend: DataDir %q is too deep: socket paths would be %d bytes, over the %d-byte "+
			"Unix socket limit; choose a shorter DataDir", c.DataDir, len(sock), maxSunPath)
	}
	if !installationIDRE.MatchString(c.InstallationID) {
		return fmt.Errorf("qemu backend: installation id %q: want at most 32 lowercase letters and digits", c.InstallationID)
	}
	switch c.Accel {
	case "":
		c.Accel = AccelAuto
	case AccelAuto, AccelKVM, AccelTCG:
	default:
		return fmt.Errorf("qemu backend: accel %q (want auto, kvm or tcg)", c.Accel)
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.DiskMB <= 0 {
		c.DiskMB = DefaultDiskMB
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.TSCKHz <= 0 {
		if c.TSCKHz, err = hostTSCKHz(); err != nil {
			return fmt.Errorf("qemu backend: %w", err)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// hostTSCKHz reads the CPU frequency from /proc/cpuinfo ("cpu MHz : 2294.608"), in kHz.
func hostTSCKHz() (int, error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, fmt.Errorf("read host TSC frequency: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || strings.TrimSpace(k) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
		if err != nil || mhz <= 0 {
			return 0, fmt.Errorf("read host TSC frequency: bad cpu MHz %q", v)
		}
		return int(mhz * 1000), nil
	}
	return 0, errors.New("read host TSC frequency: no \"cpu MHz\" in /proc/cpuinfo; set the TSC frequency explicitly")
}

// Name implements vmm.Orchestrator.
func (b *Backend) Name() string { return "qemu" }

// Accelerator says which accelerator guests run under ("kvm" or "tcg") and why.
func (b *Backend) Accelerator() (accel, why string) { return b.accel, b.why }

// Health checks that the binaries, the kernel and the default template are there.
func (b *Backend) Health(context.Context) error {
	var errs []error
	for _, p := range []string{b.cfg.Binary, b.cfg.ImgBinary} {
		if st, err := os.Stat(p); err != nil {
			errs = append(errs, err)
		} else if st.Mode().Perm()&0o111 == 0 {
			errs = append(errs, fmt.Errorf("%s is not executable", p))
		}
	}
	for _, p := range []string{b.cfg.KernelPath, b.cfg.RootfsPath} {
		if p == "" {
			continue
		}
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("qemu backend: %w", err)
	}
	return nil
}

// Events implements vmm.VMEvents: an event when a QEMU this backend started or adopted exits on its own (crashed,
// killed behind the worker's back, its guest powered off or panicked), never for a stop or delete of the VM.
func (b *Backend) Events(ctx context.Context) <-chan vmm.Event { return b.exits.Events(ctx) }

// Close closes the agent sessions and ends the event subscriptions. QEMU processes keep running: they belong to
// the store's VMs, and the next backend on this DataDir adopts them (unless DieWithWorker, when they die with
// this process).
func (b *Backend) Close() error {
	b.exits.Close()
	b.mu.Lock()
	agents := b.agents
	b.agents = make(map[string]*agentConn)
	b.closed = true
	b.mu.Unlock()
	var errs []error
	for id, a := range agents {
		if err := a.close(); err != nil {
			errs = append(errs, fmt.Errorf("close agent of vm %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

func (a *agentConn) close() error {
	return errors.Join(a.client.Close(), a.session.Close())
}

func (b *Backend) vmsDir() string { return filepath.Join(b.cfg.DataDir, "qemu") }

func (b *Backend) vmDir(id string) string { return filepath.Join(b.vmsDir(), id) }

// lockVM serialises the operations on one VM (a retried task racing the first attempt, a delete during a start).
func (b *Backend) lockVM(id string) func() { return b.vmLocks.Lock(id) }

// validID keeps VM ids usable as directory names and in QEMU's -name.
var validID = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9-]{0,63}$`)

// installationIDRE keeps installation ids usable in QEMU's -name (no comma, no dash: the VM id follows one).
var installationIDRE = regexp.MustCompile(`^[a-z0-9]{0,32}$`)

func checkID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("qemu backend: invalid vm id %q (want [a-zA-Z0-9][a-zA-Z0-9-]*, at most 64 chars)", id)
	}
	return nil
}

// ConsoleLog returns the last max bytes of a VM's console log (the guest's serial console and QEMU's own
// messages), for shipping to the log sink before the VM's directory is removed. Guest output: treat as hostile.
func (b *Backend) ConsoleLog(id string, max int64) ([]byte, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	f, err := os.Open(filepath.Join(b.vmDir(id), consoleFile))
	if err != nil {
		return nil, fmt.Errorf("qemu backend: console log of vm %s: %w", id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if off := fi.Size() - max; off > 0 {
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return nil, err
		}
	}
	return io.ReadAll(io.LimitReader(f, max))
}
