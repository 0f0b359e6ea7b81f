// Package docker is the Docker backend of the VM orchestrator seam (vmm.Orchestrator). Each "VM" is a container
// that runs the guest agent as PID 1; the host talks to the agent over a Unix socket in a per-VM host directory
// that is bind-mounted into the container. The guest can write that directory, so the host never follows what it
// finds there: it connects to the socket without following links and checks that its listener is the container's
// init before it speaks (see agentDialer). It is meant for tests and development: a container is not a security
// boundary the way a microVM is.
//
// Everything goes through the Docker Engine API (never the docker CLI). No image registry is assumed to be
// reachable: the default root filesystem is a busybox image built locally from the host's static busybox.
package docker

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	dockerclient "github.com/docker/docker/client"

	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
)

// Labels put on every container this backend makes. A restarted worker finds its VMs through them.
const (
	LabelManaged  = "aetherium.managed"
	LabelVMID     = "aetherium.vm-id"
	LabelVMName   = "aetherium.vm-name"
	LabelWorkerID = "aetherium.worker-id"
	// LabelInstallationID carries Config.InstallationID: a backend only ever lists, adopts or removes containers
	// of its own installation, so two installations on one engine (two data directories, even with the same
	// worker id) never touch each other's VMs.
	LabelInstallationID = "aetherium.installation-id"
)

// Paths inside the container.
const (
	guestAgentPath = "/.aetherium/bin/aetherium-agent"
	guestRunDir    = "/run/aetherium"
	guestListen    = "unix:" + guestRunDir + "/" + socketName
	socketName     = "agent.sock"
	containerTag   = "aetherium-"
)

// Defaults for Config fields left zero.
const (
	DefaultBusyboxPath  = "/bin/busybox"
	DefaultNetworkMode  = "none"
	DefaultReadyTimeout = 30 * time.Second
	DefaultStopTimeout  = 10 * time.Second
	// DefaultPidsLimit bounds the processes of one VM so that a fork bomb inside it cannot starve the host.
	DefaultPidsLimit = 4096
)

// maxSunPath is the longest Unix socket path Linux accepts with its terminating NUL (sizeof sun_path is 108).
const maxSunPath = 107

// typicalIDLen is the length of the store's VM ids (UUIDs); New checks DataDir against it so that a DataDir too
// deep for socket paths fails at start-up instead of at the first CreateVM.
const typicalIDLen = 36

// Config configures a Backend.
type Config struct {
	// DataDir holds per-VM directories (DataDir/vms/<id>, mode 0700); each is bind-mounted at /run/aetherium in its
	// container and holds the agent's socket. It must be a path the Docker engine sees (a local engine).
	DataDir string
	// AgentBinary is the path of a static aetherium-agent binary. New copies it into DataDir/bin (named by its
	// content hash), and that copy is bind-mounted read-only into every container and used as its entrypoint, so
	// any local image works without the agent baked in. The copy is what lets a worker that runs in a container
	// use the agent of its own image: the engine sees DataDir (it must anyway), not the worker's root filesystem.
	AgentBinary string
	// BusyboxPath is a static busybox used to build the default image (Debian: busybox-static). Default /bin/busybox.
	BusyboxPath string
	// DefaultImage is used when a VMConfig names no image. Empty: the locally built busybox base image.
	DefaultImage string
	// WorkerID labels the containers this backend makes; ListVMs returns only those with this label.
	WorkerID string
	// InstallationID is the id of the installation that owns DataDir (server.InstallationID). Every container
	// is labelled with it (LabelInstallationID), and the backend lists, inspects and removes only containers that
	// carry it. Containers made before installation ids existed carry no such label: they are this backend's
	// only if their /run/aetherium is this DataDir's directory of their VM (another installation's never is).
	// Empty: no label is written, and only such unlabelled containers of this DataDir are this backend's.
	InstallationID string
	// NetworkMode is "none" (default) or "bridge".
	NetworkMode string
	// ReadyTimeout bounds how long StartVM waits for the agent after the container starts. Default 30s.
	ReadyTimeout time.Duration
	// StopTimeout is how long StopVM lets the agent exit on SIGTERM before the engine kills it. Default 5s.
	StopTimeout time.Duration
	Logger      *slog.Logger
}

// Backend implements vmm.Orchestrator on a Docker engine.
type Backend struct {
	cfg     Config
	cli     *dockerclient.Client
	log     *slog.Logger
	maxCPUs int // CPUs the engine reports; NanoCPUs above it are rejected by the engine

	// baseLock serialises building the base image (a channel so that waiting respects ctx); baseRef caches it.
	baseLock chan struct{}
	baseRef  string

	// agentMount is the copy of AgentBinary in DataDir/bin that containers mount.
	agentMount string

	mu     sync.Mutex
	agents map[string]*agentclient.Client // per-VM agent clients, keyed by VM id
	closed bool

	ev eventState // Events
}

var (
	_ vmm.Orchestrator = (*Backend)(nil)
	_ vmm.VMEvents     = (*Backend)(nil)
)

// New validates cfg, connects to the Docker engine named by the environment (DOCKER_HOST etc., default the local
// socket) and checks that it answers.
func New(ctx context.Context, cfg Config) (*Backend, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	cli, err := dockerclient.NewClientWithOpts(dockerclient.FromEnv, dockerclient.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("docker backend: create engine client: %w", err)
	}
	info, err := cli.Info(ctx)
	if err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("docker backend: engine at %s does not answer: %w", cli.DaemonHost(), err)
	}
	b := &Backend{
		cfg:      cfg,
		cli:      cli,
		log:      cfg.Logger.With("backend", "docker"),
		maxCPUs:  info.NCPU,
		baseLock: make(chan struct{}, 1),
		agents:   make(map[string]*agentclient.Client),
		ev:       eventState{done: make(chan struct{})},
	}
	if err := os.MkdirAll(b.vmsDir(), 0o700); err != nil {
		_ = cli.Close()
		return nil, fmt.Errorf("docker backend: create data dir: %w", err)
	}
	if b.agentMount, err = stageAgent(cfg.AgentBinary, filepath.Join(cfg.DataDir, "bin")); err != nil {
		_ = cli.Close()
		return nil, err
	}
	b.log.Debug("docker backend ready", "engine", info.ServerVersion, "api", cli.ClientVersion(), "cpus", info.NCPU,
		"data_dir", cfg.DataDir, "network", cfg.NetworkMode)
	return b, nil
}

func (c *Config) setDefaults() error {
	if c.DataDir == "" {
		return errors.New("docker backend: DataDir is required")
	}
	dataDir, err := filepath.Abs(c.DataDir)
	if err != nil {
		return fmt.Errorf("docker backend: DataDir: %w", err)
	}
	c.DataDir = dataDir
	if n := len(socketPath(dataDir, strings.Repeat("x", typicalIDLen))); n > maxSunPath {
		return fmt.Errorf("docker backend: DataDir %q is too deep: agent socket paths would be %d bytes, over the "+
			"%d-byte Unix socket limit; choose a shorter DataDir", dataDir, n, maxSunPath)
	}
	if c.AgentBinary == "" {
		return errors.New("docker backend: AgentBinary is required (build it with " +
			"`CGO_ENABLED=0 go build -o aetherium-agent ./cmd/aetherium-agent`)")
	}
	if c.AgentBinary, err = filepath.Abs(c.AgentBinary); err != nil {
		return fmt.Errorf("docker backend: AgentBinary: %w", err)
	}
	if err := checkStaticExecutable(c.AgentBinary); err != nil {
		return fmt.Errorf("docker backend: agent binary: %w (build a static one with "+
			"`CGO_ENABLED=0 go build -o %s ./cmd/aetherium-agent`)", err, c.AgentBinary)
	}
	if c.BusyboxPath == "" {
		c.BusyboxPath = DefaultBusyboxPath
	}
	switch c.NetworkMode {
	case "":
		c.NetworkMode = DefaultNetworkMode
	case "none", "bridge":
	default:
		return fmt.Errorf("docker backend: NetworkMode %q not supported (use \"none\" or \"bridge\")", c.NetworkMode)
	}
	if c.ReadyTimeout <= 0 {
		c.ReadyTimeout = DefaultReadyTimeout
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// checkStaticExecutable makes sure path is an executable ELF file without a program interpreter: the file is run
// inside arbitrary images, where a dynamically linked binary would find neither its loader nor its libraries.
func checkStaticExecutable(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("%s is not a regular file", path)
	}
	if st.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%s is not executable", path)
	}
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s is not an ELF executable: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (it has a program interpreter)", path)
		}
	}
	return nil
}

// stageAgent copies the agent binary at src into dir as aetherium-agent-<first 16 hex digits of its SHA-256>,
// unless that file is there already, and returns the copy's path. Copies of other versions are kept: containers
// made with them mount them, and a container that is started again needs its file.
func stageAgent(src, dir string) (string, error) {
	f, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("docker backend: agent binary: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("docker backend: read agent binary: %w", err)
	}
	dst := filepath.Join(dir, "aetherium-agent-"+hex.EncodeToString(h.Sum(nil))[:16])
	if st, err := os.Stat(dst); err == nil && st.Mode().IsRegular() {
		return dst, nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("docker backend: agent directory: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", fmt.Errorf("docker backend: read agent binary: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".aetherium-agent-*")
	if err != nil {
		return "", fmt.Errorf("docker backend: copy agent binary: %w", err)
	}
	defer os.Remove(tmp.Name()) // after a successful rename, there is nothing left to remove
	if _, err := io.Copy(tmp, f); err != nil {
		tmp.Close()
		return "", fmt.Errorf("docker backend: copy agent binary: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", fmt.Errorf("docker backend: copy agent binary: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", fmt.Errorf("docker backend: copy agent binary: %w", err)
	}
	// Rename: a concurrent worker on the same DataDir, or a crash halfway, never leaves a partial file at dst.
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", fmt.Errorf("docker backend: copy agent binary: %w", err)
	}
	return dst, nil
}

// Name implements vmm.Orchestrator.
func (b *Backend) Name() string { return "docker" }

// Health checks that the engine answers.
func (b *Backend) Health(ctx context.Context) error {
	if _, err := b.cli.Ping(ctx); err != nil {
		return fmt.Errorf("docker backend: engine ping: %w", err)
	}
	return nil
}

// Close closes the agent clients, the event subscriptions and the engine client. The containers keep running:
// they belong to the store's VMs, not to this process. Closing a closed Backend does nothing.
func (b *Backend) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	agents := b.agents
	b.agents = make(map[string]*agentclient.Client)
	b.closed = true
	b.mu.Unlock()
	close(b.ev.done)
	var errs []error
	for id, c := range agents {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close agent client of vm %s: %w", id, err))
		}
	}
	if err := b.cli.Close(); err != nil {
		errs = append(errs, fmt.Errorf("close engine client: %w", err))
	}
	return errors.Join(errs...)
}

func (b *Backend) vmsDir() string { return filepath.Join(b.cfg.DataDir, "vms") }

func (b *Backend) vmDir(id string) string { return filepath.Join(b.vmsDir(), id) }

func socketPath(dataDir, id string) string {
	return filepath.Join(dataDir, "vms", id) + "/" + socketName
}

func containerName(id string) string { return containerTag + id }
