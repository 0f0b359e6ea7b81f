package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/mount"
	"github.com/docker/docker/pkg/stdcopy"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
)

// ErrImageNotFound is returned (wrapped) by CreateVM when the requested image is not in the engine. The backend
// does not pull: no registry is assumed to be reachable.
var ErrImageNotFound = fmt.Errorf("%w: image not present in the docker engine", vmm.ErrInvalidConfig)

// minMemoryMB is the engine's lower bound for a memory limit (6 MiB).
const minMemoryMB = 6

// logTailLines is how many lines of a failed container's output go into StartVM's error.
const logTailLines = 20

// validID keeps VM ids usable both as container names and as directory names.
var validID = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$`)

func checkID(id string) error {
	if !validID.MatchString(id) {
		return fmt.Errorf("docker backend: invalid vm id %q (want [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 128 chars)", id)
	}
	return nil
}

// CreateVM creates the VM's container and host directory without starting it. Creating a VM that exists returns it.
// VCPUs or MemoryMB of zero leave that resource unlimited; VCPUs above the engine's CPU count are capped to it.
func (b *Backend) CreateVM(ctx context.Context, cfg vmm.VMConfig) (*vmm.Instance, error) {
	if err := checkID(cfg.ID); err != nil {
		return nil, err
	}
	if cfg.Egress.IsSet() {
		// Accepting it would show a policy that nothing enforces.
		return nil, fmt.Errorf("%w: docker backend: vm %s: egress policies are enforced only by the microVM backends "+
			"(qemu, firecracker) with their host network", vmm.ErrInvalidConfig, cfg.ID)
	}
	if sock := socketPath(b.cfg.DataDir, cfg.ID); len(sock) > maxSunPath {
		return nil, fmt.Errorf("docker backend: agent socket path %q is %d bytes, over the %d-byte Unix socket limit: "+
			"use a shorter DataDir or vm id", sock, len(sock), maxSunPath)
	}
	workerID := b.cfg.WorkerID
	if cfg.WorkerID != "" {
		if workerID != "" && cfg.WorkerID != workerID {
			return nil, fmt.Errorf("docker backend: vm %s belongs to worker %q, this backend is worker %q",
				cfg.ID, cfg.WorkerID, workerID)
		}
		workerID = cfg.WorkerID
	}
	if cfg.VCPUs < 0 {
		return nil, fmt.Errorf("docker backend: vm %s: vcpus must not be negative (got %d)", cfg.ID, cfg.VCPUs)
	}
	if cfg.MemoryMB != 0 && cfg.MemoryMB < minMemoryMB {
		return nil, fmt.Errorf("docker backend: vm %s: memory_mb must be at least %d (got %d)", cfg.ID, minMemoryMB, cfg.MemoryMB)
	}

	if inst, err := b.existing(ctx, cfg.ID); err == nil {
		if inst.WorkerID != workerID {
			return nil, fmt.Errorf("docker backend: vm %s already exists for worker %q", cfg.ID, inst.WorkerID)
		}
		return inst, b.ensureVMDir(cfg.ID)
	} else if !errors.Is(err, vmm.ErrNotFound) {
		return nil, err
	}

	img, err := b.resolveImage(ctx, cfg.Image)
	if err != nil {
		return nil, fmt.Errorf("docker backend: create vm %s: %w", cfg.ID, err)
	}
	if err := b.ensureVMDir(cfg.ID); err != nil {
		return nil, err
	}

	resources := container.Resources{PidsLimit: ptr(int64(DefaultPidsLimit))}
	if cfg.VCPUs > 0 {
		cpus := cfg.VCPUs
		if b.maxCPUs > 0 && cpus > b.maxCPUs {
			// A microVM may have more vCPUs than the host has cores; the engine refuses a quota above the host's
			// count, and a quota of every core is the same limit anyway.
			b.log.Warn("vcpus above host cpus; capping", "vm_id", cfg.ID, "vcpus", cfg.VCPUs, "host_cpus", b.maxCPUs)
			cpus = b.maxCPUs
		}
		resources.NanoCPUs = int64(cpus) * 1e9
	}
	if cfg.MemoryMB > 0 {
		resources.Memory = int64(cfg.MemoryMB) << 20
		resources.MemorySwap = resources.Memory // no swap beyond the limit, like a VM with no swap device
	}
	labels := map[string]string{
		LabelManaged:  "true",
		LabelVMID:     cfg.ID,
		LabelVMName:   cfg.Name,
		LabelWorkerID: workerID,
	}
	if b.cfg.InstallationID != "" {
		labels[LabelInstallationID] = b.cfg.InstallationID
	}
	config := &container.Config{
		Hostname: hostname(cfg.Name, cfg.ID),
		// The agent runs as root whatever the image's USER: it creates its socket in a root-owned directory and
		// plays the part of a VM's init.
		User:  "0:0",
		Image: img,
		// With an Entrypoint given, the engine ignores the image's ENTRYPOINT and CMD alike.
		Entrypoint: []string{guestAgentPath, "--listen", guestListen},
		Labels:     labels,
	}
	hostConfig := &container.HostConfig{
		NetworkMode:   container.NetworkMode(b.cfg.NetworkMode),
		RestartPolicy: container.RestartPolicy{Name: container.RestartPolicyDisabled},
		AutoRemove:    false,
		// The agent is PID 1 and reaps orphans itself, as it must in a microVM.
		Init:      ptr(false),
		Resources: resources,
		Mounts: []mount.Mount{
			{Type: mount.TypeBind, Source: b.agentMount, Target: guestAgentPath, ReadOnly: true},
			{Type: mount.TypeBind, Source: b.vmDir(cfg.ID), Target: guestRunDir},
		},
		// Capabilities stay at the engine's defaults for now: commands in the VM expect to be root, and this backend
		// is for tests and development; a hardened profile (CapDrop, no-new-privileges, seccomp) is future work.
	}
	_, err = b.cli.ContainerCreate(ctx, config, hostConfig, nil, nil, containerName(cfg.ID))
	if err != nil {
		if cerrdefs.IsConflict(err) {
			// Another attempt created it between our inspect and create.
			return b.existing(ctx, cfg.ID)
		}
		return nil, fmt.Errorf("docker backend: create container for vm %s: %w", cfg.ID, err)
	}
	b.log.Info("vm created", "vm_id", cfg.ID, "image", img, "vcpus", cfg.VCPUs, "memory_mb", cfg.MemoryMB)
	return b.GetVMStatus(ctx, cfg.ID)
}

// existing returns the instance of an existing container for id, vmm.ErrNotFound if there is none, and an error if
// the name is taken by a container this backend did not make.
func (b *Backend) existing(ctx context.Context, id string) (*vmm.Instance, error) {
	c, err := b.inspect(ctx, id)
	if err != nil {
		return nil, err
	}
	return b.instance(c), nil
}

func (b *Backend) resolveImage(ctx context.Context, img string) (string, error) {
	if img == "" {
		img = b.cfg.DefaultImage
	}
	if img == "" {
		return b.baseImage(ctx)
	}
	if _, err := b.cli.ImageInspect(ctx, img); err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("%w: %q (import or load it into the engine first)", ErrImageNotFound, img)
		}
		return "", fmt.Errorf("inspect image %q: %w", img, err)
	}
	return img, nil
}

func (b *Backend) ensureVMDir(id string) error {
	dir := b.vmDir(id)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("docker backend: create directory of vm %s: %w", id, err)
	}
	// MkdirAll leaves an existing directory's mode alone (and the umask may have narrowed a new one).
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("docker backend: chmod directory of vm %s: %w", id, err)
	}
	return nil
}

// StartVM starts the container and returns once the agent answers. If the container exits first, the error carries
// its exit code and the tail of its output; if the agent does not answer within ReadyTimeout, the container is
// stopped again so that a retry starts from a clean state.
func (b *Backend) StartVM(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	c, err := b.inspect(ctx, id)
	if err != nil {
		return err
	}
	if c.State != nil && c.State.Running {
		// Already started (a retried task): make sure the agent answers.
		readyCtx, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
		defer cancel()
		if _, err := b.agentFor(id).WaitReady(readyCtx); err != nil {
			return fmt.Errorf("docker backend: start vm %s: running, but its agent does not answer: %w", id, err)
		}
		return nil
	}
	if err := b.ensureVMDir(id); err != nil {
		return err
	}
	// A socket left by a previous run would accept nothing; remove it so that readiness means this run's agent.
	if err := os.Remove(socketPath(b.cfg.DataDir, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("docker backend: start vm %s: remove stale agent socket: %w", id, err)
	}

	// Register for the container's exit before starting it, so that an agent that dies at once cannot be missed.
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	waitC, waitErrC := b.cli.ContainerWait(watchCtx, c.ID, container.WaitConditionNextExit)
	readyCtx, cancelReady := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
	defer cancelReady()
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		// Both channels are drained until one fires: the client's goroutine blocks on an unread result otherwise.
		select {
		case <-waitC:
			cancelReady() // the agent will never answer: stop waiting for it now
		case <-waitErrC:
		}
	}()
	defer func() {
		stopWatch()
		<-watchDone
	}()

	start := time.Now()
	b.unexpectDie(id) // a stop before this start is over: the next die is news
	if err := b.cli.ContainerStart(ctx, c.ID, container.StartOptions{}); err != nil {
		if cerrdefs.IsNotFound(err) {
			return fmt.Errorf("docker backend: start vm %s: %w", id, vmm.ErrNotFound)
		}
		return fmt.Errorf("docker backend: start container of vm %s: %w", id, err)
	}
	// The cached client redials by itself: a connection to a previous run broke when that run's agent died.
	info, err := b.agentFor(id).WaitReady(readyCtx)
	if err == nil {
		b.log.Info("vm started", "vm_id", id, "agent_version", info.Version,
			"ready_in", time.Since(start).Round(time.Millisecond))
		return nil
	}
	return b.startFailure(ctx, id, c.ID, err)
}

// startFailure explains why the agent did not become ready, and stops a container that is still running.
func (b *Backend) startFailure(ctx context.Context, id, containerID string, waitErr error) error {
	// ctx may be what expired; the diagnosis and clean-up still deserve a few seconds.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	logs := b.logTail(dctx, containerID)
	c, err := b.cli.ContainerInspect(dctx, containerID)
	if err == nil && c.State != nil && !c.State.Running {
		b.closeAgent(id)
		return fmt.Errorf("docker backend: start vm %s: container exited before its agent was ready (%s); last output:\n%s",
			id, exitDetail(c.State), logs)
	}
	timeout := b.cfg.ReadyTimeout
	b.expectDie(id)
	if err := b.cli.ContainerStop(dctx, containerID, container.StopOptions{Timeout: ptr(0)}); err != nil {
		b.log.Warn("stop container after failed start", "vm_id", id, "err", err)
	}
	b.closeAgent(id)
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("docker backend: start vm %s: agent not ready before the caller's deadline: %w; last output:\n%s",
			id, waitErr, logs)
	case errors.Is(waitErr, context.DeadlineExceeded):
		return fmt.Errorf("docker backend: start vm %s: agent not ready within %s: %w; last output:\n%s",
			id, timeout, waitErr, logs)
	default:
		// The agent answered wrongly (a protocol version mismatch, say): waiting longer would not help.
		return fmt.Errorf("docker backend: start vm %s: agent failed: %w; last output:\n%s", id, waitErr, logs)
	}
}

// logTail returns the last lines the container wrote (stdout and stderr interleaved), or a note saying why not.
func (b *Backend) logTail(ctx context.Context, containerID string) string {
	rc, err := b.cli.ContainerLogs(ctx, containerID, container.LogsOptions{
		ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(logTailLines),
	})
	if err != nil {
		return fmt.Sprintf("(logs unavailable: %v)", err)
	}
	defer rc.Close()
	var out bytes.Buffer
	// Containers without a TTY have multiplexed logs; one buffer for both streams keeps their order.
	if _, err := stdcopy.StdCopy(&out, &out, rc); err != nil {
		fmt.Fprintf(&out, "(reading logs: %v)", err)
	}
	s := strings.TrimRight(out.String(), "\n")
	if s == "" {
		return "(no output)"
	}
	return s
}

// StopVM stops the container, giving the agent StopTimeout to exit on SIGTERM. Stopping a stopped VM succeeds.
func (b *Backend) StopVM(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	c, err := b.inspect(ctx, id)
	if err != nil {
		return err
	}
	b.closeAgent(id)
	timeout := int(b.cfg.StopTimeout.Round(time.Second) / time.Second)
	if c.State != nil && c.State.Running {
		b.expectDie(id)
	}
	if err := b.cli.ContainerStop(ctx, c.ID, container.StopOptions{Timeout: &timeout}); err != nil {
		if cerrdefs.IsNotFound(err) {
			return fmt.Errorf("docker backend: stop vm %s: %w", id, vmm.ErrNotFound)
		}
		return fmt.Errorf("docker backend: stop vm %s: %w", id, err)
	}
	b.log.Info("vm stopped", "vm_id", id)
	return nil
}

// DeleteVM removes the container (killing it if needed, with its anonymous volumes) and the VM's host directory.
// Deleting a missing VM succeeds.
func (b *Backend) DeleteVM(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	b.closeAgent(id)
	c, err := b.inspect(ctx, id)
	switch {
	case errors.Is(err, vmm.ErrNotFound):
	case err != nil:
		return err
	default:
		if c.State != nil && c.State.Running {
			b.expectDie(id)
		}
		err := b.cli.ContainerRemove(ctx, c.ID, container.RemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !cerrdefs.IsNotFound(err) {
			return fmt.Errorf("docker backend: remove container of vm %s: %w", id, err)
		}
	}
	if err := os.RemoveAll(b.vmDir(id)); err != nil {
		return fmt.Errorf("docker backend: remove directory of vm %s: %w", id, err)
	}
	b.log.Info("vm deleted", "vm_id", id)
	return nil
}

// GetVMStatus reports the container's state.
func (b *Backend) GetVMStatus(ctx context.Context, id string) (*vmm.Instance, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	c, err := b.inspect(ctx, id)
	if err != nil {
		return nil, err
	}
	return b.instance(c), nil
}

// ListVMs lists this worker's containers of this installation (see Config.InstallationID) in every state. It is
// what a worker's reconciliation reaps orphans from, so it must never return another installation's.
func (b *Backend) ListVMs(ctx context.Context) ([]*vmm.Instance, error) {
	f := filters.NewArgs(
		filters.Arg("label", LabelManaged+"=true"),
		filters.Arg("label", LabelWorkerID+"="+b.cfg.WorkerID),
	)
	list, err := b.cli.ContainerList(ctx, container.ListOptions{All: true, Filters: f})
	if err != nil {
		return nil, fmt.Errorf("docker backend: list containers: %w", err)
	}
	out := make([]*vmm.Instance, 0, len(list))
	for _, s := range list {
		id := s.Labels[LabelVMID]
		if id == "" || checkID(id) != nil || !b.owns(id, s.Labels, s.Mounts) {
			continue
		}
		inst := &vmm.Instance{
			ID:         id,
			Name:       s.Labels[LabelVMName],
			State:      stateOf(s.State),
			WorkerID:   s.Labels[LabelWorkerID],
			Image:      s.Image,
			SocketPath: socketPath(b.cfg.DataDir, id),
		}
		if s.State != container.StateRunning {
			inst.Detail = s.Status
		}
		out = append(out, inst)
	}
	return out, nil
}

// owns reports whether the container of VM id with these labels and mounts belongs to this installation: it
// carries this installation's id, or, made before installation ids, carries none and mounts this DataDir's
// directory of the VM at /run/aetherium (a container of another data directory never does).
func (b *Backend) owns(id string, labels map[string]string, mounts []container.MountPoint) bool {
	if inst := labels[LabelInstallationID]; inst != "" {
		return inst == b.cfg.InstallationID
	}
	want := b.vmDir(id)
	resolved, err := filepath.EvalSymlinks(want)
	if err != nil {
		resolved = want
	}
	for _, m := range mounts {
		if m.Destination == guestRunDir && (m.Source == want || m.Source == resolved) {
			return true
		}
	}
	return false
}

// ExecuteCommand runs one command through the VM's agent. A non-zero exit code is a result; an error means the
// command's fate is unknown or it never ran: vmm.ErrNotFound or vmm.ErrNotRunning when the VM is missing or
// stopped, and otherwise a wrapped agent client error: agentclient.ErrUnavailable for transport failures (the
// command may or may not have run), *agentclient.Error for a request the agent refused.
func (b *Backend) ExecuteCommand(ctx context.Context, id string, req agent.ExecRequest) (*agent.ExecResult, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	res, err := b.agentFor(id).Exec(ctx, req)
	if errors.Is(err, agentclient.ErrClosed) && ctx.Err() == nil {
		// A concurrent StopVM or failed start closed the cached client under us; a fresh one tells us the truth.
		res, err = b.agentFor(id).Exec(ctx, req)
	}
	if err == nil {
		return res, nil
	}
	return nil, b.execError(ctx, id, err)
}

// ExecuteStream runs one command through the VM's agent and copies its output to the writers as it comes. Its
// errors are those of ExecuteCommand.
func (b *Backend) ExecuteStream(ctx context.Context, id string, req agent.ExecRequest, stdout, stderr io.Writer) (*agent.ExecResult, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	out, errOut := &countingWriter{w: stdout}, &countingWriter{w: stderr}
	res, err := b.agentFor(id).ExecStream(ctx, req, out, errOut)
	if errors.Is(err, agentclient.ErrClosed) && ctx.Err() == nil && out.n == 0 && errOut.n == 0 {
		// As in ExecuteCommand; only while nothing was written, so the writers never see output twice.
		res, err = b.agentFor(id).ExecStream(ctx, req, out, errOut)
	}
	if err == nil {
		return res, nil
	}
	return nil, b.execError(ctx, id, err)
}

// Agent returns the VM's cached agent client once the container is known to be running.
func (b *Backend) Agent(ctx context.Context, id string) (*agentclient.Client, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	inst, err := b.GetVMStatus(ctx, id)
	if err != nil {
		return nil, err
	}
	if inst.State != vmm.StateRunning {
		return nil, fmt.Errorf("%w: vm %s is %s", vmm.ErrNotRunning, id, inst.State)
	}
	return b.agentFor(id), nil
}

// countingWriter counts the bytes passed to w (nil: discarded).
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if c.w == nil {
		return len(p), nil
	}
	return c.w.Write(p)
}

// execError explains a failed exec. The fast path skips the engine; only when the agent cannot be reached does it
// find out whether the VM is there and running at all.
func (b *Backend) execError(ctx context.Context, id string, err error) error {
	if (errors.Is(err, agentclient.ErrUnavailable) || errors.Is(err, agentclient.ErrClosed)) && ctx.Err() == nil {
		c, ierr := b.inspect(ctx, id)
		if ierr != nil {
			if errors.Is(ierr, vmm.ErrNotFound) {
				b.closeAgent(id)
			}
			return fmt.Errorf("docker backend: exec in vm %s: %w (agent: %v)", id, ierr, err)
		}
		if c.State == nil || !c.State.Running {
			b.closeAgent(id)
			return fmt.Errorf("docker backend: exec in vm %s: %w (%s)", id, vmm.ErrNotRunning, exitDetail(c.State))
		}
	}
	return fmt.Errorf("docker backend: exec in vm %s: %w", id, err)
}

// inspect returns the container of VM id, vmm.ErrNotFound (wrapped) if there is none or it belongs to another
// installation on this engine (see Config.InstallationID: nothing here may touch it), and an error if the name is
// taken by a container this backend did not make.
func (b *Backend) inspect(ctx context.Context, id string) (container.InspectResponse, error) {
	c, err := b.cli.ContainerInspect(ctx, containerName(id))
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return c, fmt.Errorf("docker backend: vm %s: %w", id, vmm.ErrNotFound)
		}
		return c, fmt.Errorf("docker backend: inspect vm %s: %w", id, err)
	}
	if c.Config == nil || c.Config.Labels[LabelVMID] != id || c.Config.Labels[LabelManaged] != "true" {
		return c, fmt.Errorf("docker backend: container %s exists but was not made by aetherium for vm %s",
			containerName(id), id)
	}
	if !b.owns(id, c.Config.Labels, c.Mounts) {
		return c, fmt.Errorf("docker backend: vm %s: %w in this installation (container %s belongs to installation %q of this engine)",
			id, vmm.ErrNotFound, containerName(id), c.Config.Labels[LabelInstallationID])
	}
	return c, nil
}

func (b *Backend) instance(c container.InspectResponse) *vmm.Instance {
	id := c.Config.Labels[LabelVMID]
	inst := &vmm.Instance{
		ID:         id,
		Name:       c.Config.Labels[LabelVMName],
		WorkerID:   c.Config.Labels[LabelWorkerID],
		Image:      c.Config.Image,
		SocketPath: socketPath(b.cfg.DataDir, id),
		State:      vmm.StateStopped,
	}
	if c.State != nil {
		inst.State = stateOf(c.State.Status)
		switch c.State.Status {
		case container.StateRunning:
		case container.StateCreated:
		case container.StatePaused, container.StateRestarting, container.StateRemoving:
			inst.Detail = c.State.Status
		default:
			inst.Detail = exitDetail(c.State)
		}
	}
	return inst
}

func stateOf(s container.ContainerState) vmm.State {
	switch s {
	case container.StateCreated:
		return vmm.StateCreated
	case container.StateRunning, container.StatePaused, container.StateRestarting:
		return vmm.StateRunning
	default:
		return vmm.StateStopped
	}
}

func exitDetail(s *container.State) string {
	if s == nil {
		return "state unknown"
	}
	if s.Status == container.StateCreated {
		return "never started"
	}
	d := s.Status
	if !s.Running {
		d = fmt.Sprintf("%s, exit code %d", s.Status, s.ExitCode)
	}
	if s.OOMKilled {
		d += ", OOM killed"
	}
	if s.Error != "" {
		d += ", error: " + s.Error
	}
	return d
}

// agentFor returns the cached agent client of VM id, making one if needed (after a worker restart, say).
func (b *Backend) agentFor(id string) *agentclient.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.agents[id]; ok {
		return c
	}
	c := agentclient.New(b.agentDialer(id))
	if b.closed {
		// A closed backend hands out closed clients: calls fail with agentclient.ErrClosed, nothing leaks.
		_ = c.Close()
		return c
	}
	b.agents[id] = c
	return c
}

// agentDialer reaches VM id's agent in a way the guest cannot redirect. The guest can write its /run/aetherium
// (the host directory vms/<id>) and so can put anything at agent.sock: a symbolic link to another VM's socket or
// to the engine's, a socket of its own, a fifo. So every dial
//   - asks the engine for the container's init pid (the agent is PID 1 of the container);
//   - opens agent.sock without following links and connects to that very inode (dialNoFollow);
//   - checks with SO_PEERCRED that the listening socket is the init's, before a byte is sent to it.
//
// Anything else fails closed with errHostileSocket, which the client reports as the agent being unavailable. The
// worker must see the engine's pids (run on the host, or in a container with the host's pid namespace).
func (b *Backend) agentDialer(id string) agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		c, err := b.inspect(ctx, id)
		if err != nil {
			return nil, err
		}
		if c.State == nil || !c.State.Running || c.State.Pid <= 0 {
			return nil, fmt.Errorf("docker backend: vm %s: %w (%s)", id, vmm.ErrNotRunning, exitDetail(c.State))
		}
		nc, err := dialNoFollow(ctx, b.vmsDir(), id, socketName)
		if err != nil {
			return nil, fmt.Errorf("docker backend: vm %s: %w", id, err)
		}
		pid, err := peerPID(nc)
		switch {
		case err != nil:
			err = fmt.Errorf("%w: cannot tell who listens on it: %w", errHostileSocket, err)
		case pid == 0:
			err = fmt.Errorf("%w: its listener is in a pid namespace this worker cannot see (run the worker in the "+
				"Docker engine's pid namespace)", errHostileSocket)
		case pid != c.State.Pid:
			err = fmt.Errorf("%w: its listener is pid %d, not the vm's agent (pid %d, the container's init): "+
				"something in the guest replaced %s/%s", errHostileSocket, pid, c.State.Pid, guestRunDir, socketName)
		}
		if err != nil {
			_ = nc.Close()
			b.log.Warn("agent socket refused", "vm_id", id, "err", err)
			return nil, fmt.Errorf("docker backend: vm %s: %w", id, err)
		}
		return nc, nil
	}
}

func (b *Backend) closeAgent(id string) {
	b.mu.Lock()
	c := b.agents[id]
	delete(b.agents, id)
	b.mu.Unlock()
	if c != nil {
		if err := c.Close(); err != nil {
			b.log.Debug("close agent client", "vm_id", id, "err", err)
		}
	}
}

// hostname turns a VM name into a valid host name (RFC 1123 label), falling back to one made from the id.
func hostname(name, id string) string {
	var sb strings.Builder
	for _, r := range strings.ToLower(name) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			sb.WriteRune(r)
		case sb.Len() > 0 && !strings.HasSuffix(sb.String(), "-"):
			sb.WriteByte('-')
		}
	}
	h := strings.Trim(sb.String(), "-")
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-")
	}
	if h == "" {
		h = "vm-" + strings.ToLower(strings.Trim(validHostChars(id), "-"))
		if len(h) > 11 {
			h = h[:11]
		}
		h = strings.TrimRight(h, "-")
	}
	return h
}

func validHostChars(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		default:
			return '-'
		}
	}, s)
}

func ptr[T any](v T) *T { return &v }
