//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
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
	DefaultGuestInit    = "/sbin/aetherium-agent"
	DefaultReadyTimeout = 30 * time.Second
	DefaultStopTimeout  = 5 * time.Second
	DefaultDiskMB       = 8192
	DefaultAgentPort    = 9999
	// DefaultFirstCID is the lowest guest CID handed out: 0-2 are reserved (hypervisor, local, host).
	DefaultFirstCID = 3
	// DefaultCgroupVersion is the jailer's cgroup version.
	DefaultCgroupVersion = 2
	// DefaultJailerID is the uid and gid a jailed firecracker runs as unless configured (config.DefaultJailerID).
	DefaultJailerID = 10000
)

// DefaultKernelArgs boots the agent as init, listening on vsock. reboot=k makes a guest reboot (what the agent's
// power-off ends in) leave Firecracker, which exits; panic=1 turns a guest panic into one too.
// The backend adds aetherium.hostname before the "--" that starts init's own arguments.
const DefaultKernelArgs = "console=ttyS0 reboot=k panic=1 pci=off quiet init=" + DefaultGuestInit +
	" aetherium.listen=vsock:9999 -- --init"

// Files in a VM's directory (the sockets, kernel and a link to the disk are in the jail when jailed).
const (
	stateFile   = "state.json"
	consoleFile = "console.log"
	fcLogFile   = "firecracker.log"
	apiSockName = "api.sock"
	vsockName   = "vsock.sock"
	diskName    = "rootfs.ext4"
	kernelName  = "vmlinux"
)

// maxSunPath is the longest Unix socket path Linux accepts with its terminating NUL.
const maxSunPath = 107

// typicalIDLen is the length of the store's VM ids (UUIDs), used to check DataDir's depth at start-up.
const typicalIDLen = 36

// Config configures a Backend.
type Config struct {
	// FirecrackerBin is the firecracker binary. Required.
	FirecrackerBin string
	// JailerBin, when set, starts firecracker through the jailer: in a fresh chroot
	// JailerChrootBase/<firecracker's resolved name>/<id>/root made at every start and restore, as JailerUID and
	// JailerGID, with the cgroup values JailerCgroups (file=value, of JailerCgroupVersion) and in the network
	// namespace JailerNetNS. The kernel and the VM's disk are hard-linked into the chroot (so JailerChrootBase must
	// be on DataDir's filesystem). Setting the uid clears the parent-death signal: a jailed firecracker outlives a
	// worker that dies (see launch).
	JailerBin           string
	JailerChrootBase    string // default DataDir/jail
	JailerUID           int    // default DefaultJailerID; never root
	JailerGID           int    // default DefaultJailerID
	JailerCgroupVersion int    // 1 or 2, default 2
	JailerCgroups       []string
	JailerNetNS         string
	// TrackDirtyPages turns on Firecracker's dirty page tracking (machine-config track_dirty_pages), which Diff
	// snapshots need; it costs some guest performance, so it is off unless diff snapshots are wanted.
	TrackDirtyPages bool
	// KernelPath is the guest kernel (an uncompressed vmlinux). Required.
	KernelPath string
	// RootfsPath is the default root filesystem template (ext4). It is only read: each VM gets a copy-on-write
	// copy. A VMConfig.Image that is an absolute path names another template.
	RootfsPath string
	// DiskMB is the least size of a VM's disk: a smaller template is grown sparsely and the agent grows the
	// filesystem at boot. Default DefaultDiskMB.
	DiskMB int64
	// Images resolves a VMConfig.Image that is a template name ("name" or "name@version") to its file; nil accepts
	// only absolute paths.
	Images func(ref string) (string, error) `json:"-"`
	// Network, when set, gives every VM a TAP device on the host's bridge with its egress policy
	// (internal/network); nil: VMs have no network interface.
	Network network.Attacher `json:"-"`
	// DataDir holds DataDir/vms/<id> for each VM. Required.
	DataDir string
	// WorkerID is recorded in each VM's state; ListVMs returns only this worker's VMs.
	WorkerID string
	// InstallationID names the installation (server.InstallationID: one per data directory). It is recorded in
	// each VM's state and in its firecracker's environment (AETHERIUM_INSTALLATION_ID, a label `ps e` shows).
	InstallationID string
	// DieWithWorker makes every firecracker die with this process (Pdeathsig): for tests, and for operators who
	// want no VM to outlive its worker. By default firecracker runs detached and a restarted worker adopts it.
	DieWithWorker bool
	// KernelArgs is the guest's command line. Default DefaultKernelArgs.
	KernelArgs string
	// AgentPort is the guest vsock port the agent listens on. Default 9999.
	AgentPort uint32
	// FirstCID is the lowest guest CID handed out (default 3).
	FirstCID uint32
	// ReadyTimeout bounds how long StartVM waits for the agent after InstanceStart. Default 30s.
	ReadyTimeout time.Duration
	// StopTimeout bounds how long StopVM waits for the guest to power off before it kills firecracker. Default 5s.
	StopTimeout time.Duration
	// FirecrackerLogLevel, when set (Error, Warning, Info, Debug, Trace), configures Firecracker's own log
	// (PUT /logger) into firecracker.log next to the console log.
	FirecrackerLogLevel string
	Logger              *slog.Logger
}

// Backend implements vmm.Orchestrator with Firecracker.
type Backend struct {
	cfg Config
	log *slog.Logger

	// execFile and chrootBase are the firecracker binary and the chroot base with symlinks resolved, as the jailer
	// canonicalizes them: the jail is <chrootBase>/<base name of execFile>/<id>/root (set when jailed).
	execFile, chrootBase string

	vmLocks keyedmutex.Map      // serialise the operations on one VM
	boots   vmproc.Boots        // lets a delete cancel a start
	exits   *vmproc.ExitWatcher // tells the worker when a firecracker exits on its own (vmm.VMEvents)

	mu     sync.Mutex
	agents map[string]*agentclient.Client
	procs  map[string]*vmproc.Process // firecracker processes this backend started (its children)
	closed bool
}

var (
	_ vmm.Orchestrator = (*Backend)(nil)
	_ vmm.VMEvents     = (*Backend)(nil)
)

// consoleMarker begins the line written to the console log before each boot.
const consoleMarker = "--- aetherium:"

// New validates cfg, prepares DataDir and adopts the firecracker processes that still run for this worker's VMs
// (a previous worker process started them; they run detached and outlive it). It does not need the firecracker
// binary to run, only to exist.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	b := &Backend{
		cfg:    cfg,
		log:    cfg.Logger.With("backend", "firecracker"),
		agents: make(map[string]*agentclient.Client),
		procs:  make(map[string]*vmproc.Process),
	}
	b.exits = vmproc.NewExitWatcher("firecracker", b.log, func(id string) string {
		return vmproc.LastConsoleLine(filepath.Join(b.vmDir(id), consoleFile), consoleMarker)
	})
	if err := os.MkdirAll(b.vmsDir(), 0o700); err != nil {
		return nil, fmt.Errorf("firecracker backend: create data dir: %w", err)
	}
	if cfg.JailerBin != "" {
		if err := b.resolveJail(); err != nil {
			return nil, err
		}
	}
	if err := b.Health(ctx); err != nil {
		return nil, err
	}
	if err := b.adopt(ctx); err != nil {
		return nil, err
	}
	if err := b.restoreNetwork(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// restoreNetwork re-attaches this worker's VMs to the network after a restart and removes what belonged to VMs
// that are gone (see network.Restore).
func (b *Backend) restoreNetwork(ctx context.Context) error {
	if b.cfg.Network == nil {
		return nil
	}
	states, err := b.allStates()
	if err != nil {
		return err
	}
	vms := map[string]*network.Policy{}
	for _, st := range states {
		if st.WorkerID != b.cfg.WorkerID {
			continue
		}
		vms[st.ID] = nil
		if st.Net != nil {
			p := network.Policy{}
			if st.Egress != nil {
				p = *st.Egress
			}
			vms[st.ID] = &p
		}
	}
	failed, err := network.Restore(ctx, b.cfg.Network, vms)
	for id, ferr := range failed {
		b.log.Warn("re-attach vm network", "vm_id", id, "err", ferr)
	}
	if err != nil {
		return fmt.Errorf("firecracker backend: %w", err)
	}
	return nil
}

func (c *Config) setDefaults() error {
	var err error
	if c.DataDir == "" {
		return errors.New("firecracker backend: DataDir is required")
	}
	if c.DataDir, err = filepath.Abs(c.DataDir); err != nil {
		return fmt.Errorf("firecracker backend: DataDir: %w", err)
	}
	if c.FirecrackerBin == "" {
		return errors.New("firecracker backend: FirecrackerBin is required")
	}
	if c.KernelPath == "" {
		return errors.New("firecracker backend: KernelPath is required")
	}
	for _, p := range []*string{&c.FirecrackerBin, &c.KernelPath, &c.RootfsPath, &c.JailerBin, &c.JailerChrootBase} {
		if *p == "" {
			continue
		}
		if *p, err = filepath.Abs(*p); err != nil {
			return fmt.Errorf("firecracker backend: %w", err)
		}
	}
	if c.JailerBin == "" {
		sock := filepath.Join(c.DataDir, "vms", strings.Repeat("x", typicalIDLen), vsockName)
		if len(sock) > maxSunPath {
			return fmt.Errorf("firecracker backend: DataDir %q is too deep: socket paths would be %d bytes, over the "+
				"%d-byte Unix socket limit; choose a shorter DataDir", c.DataDir, len(sock), maxSunPath)
		}
	} else {
		if c.JailerChrootBase == "" {
			c.JailerChrootBase = filepath.Join(c.DataDir, "jail")
		}
		if c.JailerUID == 0 {
			c.JailerUID = DefaultJailerID
		}
		if c.JailerGID == 0 {
			c.JailerGID = DefaultJailerID
		}
		if c.JailerUID < 0 || c.JailerGID < 0 {
			return fmt.Errorf("firecracker backend: jailer uid %d / gid %d must not be negative", c.JailerUID, c.JailerGID)
		}
		for _, cg := range c.JailerCgroups {
			if k, v, ok := strings.Cut(cg, "="); !ok || k == "" || v == "" || strings.Contains(v, "=") {
				return fmt.Errorf("firecracker backend: jailer cgroup %q: want <file>=<value>", cg)
			}
		}
		switch c.JailerCgroupVersion {
		case 0:
			c.JailerCgroupVersion = DefaultCgroupVersion
		case 1, 2:
		default:
			return fmt.Errorf("firecracker backend: JailerCgroupVersion %d (want 1 or 2)", c.JailerCgroupVersion)
		}
	}
	if c.KernelArgs == "" {
		c.KernelArgs = DefaultKernelArgs
	}
	if c.DiskMB <= 0 {
		c.DiskMB = DefaultDiskMB
	}
	if c.AgentPort == 0 {
		c.AgentPort = DefaultAgentPort
	}
	if c.FirstCID < DefaultFirstCID {
		c.FirstCID = DefaultFirstCID
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	switch c.FirecrackerLogLevel {
	case "", "Error", "Warning", "Info", "Debug", "Trace", "Off":
	default:
		return fmt.Errorf("firecracker backend: FirecrackerLogLevel %q (want Error, Warning, Info, Debug, Trace or Off)",
			c.FirecrackerLogLevel)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// Name implements vmm.Orchestrator.
func (b *Backend) Name() string { return "firecracker" }

// Health checks that the binaries and the kernel are there and that /dev/kvm can be opened. A host without KVM
// can still create VMs, but none would boot: the worker reports it as unhealthy.
func (b *Backend) Health(context.Context) error {
	var errs []error
	for _, p := range []string{b.cfg.FirecrackerBin, b.cfg.JailerBin} {
		if p == "" {
			continue
		}
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
		return fmt.Errorf("firecracker backend: %w", err)
	}
	return nil
}

// KVMAvailable reports whether /dev/kvm can be opened for reading and writing (what firecracker needs). It says
// nothing about whether guests boot well (a nested KVM may run only special guests).
func KVMAvailable() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// Events implements vmm.VMEvents: an event when a firecracker this backend started or adopted exits on its own
// (crashed, killed behind the worker's back, its guest powered off or panicked), never for a stop or delete.
func (b *Backend) Events(ctx context.Context) <-chan vmm.Event { return b.exits.Events(ctx) }

// Close closes the agent clients and ends the event subscriptions. The firecracker processes keep running: they
// belong to the store's VMs, and the next backend on this DataDir adopts them (unless DieWithWorker, when they
// die with this process).
func (b *Backend) Close() error {
	b.exits.Close()
	b.mu.Lock()
	agents := b.agents
	b.agents = make(map[string]*agentclient.Client)
	b.closed = true
	b.mu.Unlock()
	var errs []error
	for id, c := range agents {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close agent client of vm %s: %w", id, err))
		}
	}
	return errors.Join(errs...)
}

func (b *Backend) vmsDir() string { return filepath.Join(b.cfg.DataDir, "vms") }

func (b *Backend) vmDir(id string) string { return filepath.Join(b.vmsDir(), id) }

// lockVM serialises the operations on one VM (a retried task racing the first attempt, a delete during a start).
func (b *Backend) lockVM(id string) func() { return b.vmLocks.Lock(id) }

// validID keeps VM ids usable as directory names and jailer ids (the jailer allows [a-zA-Z0-9-], at most 64).
var validID = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9-]{0,63}$`)

func checkID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("firecracker backend: invalid vm id %q (want [a-zA-Z0-9][a-zA-Z0-9-]*, at most 64 chars)", id)
	}
	return nil
}
