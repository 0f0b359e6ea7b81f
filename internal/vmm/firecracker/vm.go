//go:build linux

package firecracker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/transport"
	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// Limits of Firecracker's machine configuration (vcpu_count 1..32, 1 or even) and the defaults used for zero.
const (
	maxVCPUs        = 32
	defaultVCPUs    = 1
	defaultMemoryMB = 512
	minMemoryMB     = 32
)

// consoleTailBytes is how much of the console log goes into StartVM's error.
const consoleTailBytes = 4 << 10

// apiReadyTimeout bounds how long a new firecracker process may take to answer on its API socket.
const apiReadyTimeout = 5 * time.Second

// CreateVM clones the root filesystem template into the VM's disk and records the VM with a fresh guest CID,
// without starting anything. Creating a VM that exists returns it.
func (b *Backend) CreateVM(ctx context.Context, cfg vmm.VMConfig) (*vmm.Instance, error) {
	if err := checkID(cfg.ID); err != nil {
		return nil, err
	}
	workerID := b.cfg.WorkerID
	if cfg.WorkerID != "" {
		if workerID != "" && cfg.WorkerID != workerID {
			return nil, fmt.Errorf("firecracker backend: vm %s belongs to worker %q, this backend is worker %q",
				cfg.ID, cfg.WorkerID, workerID)
		}
		workerID = cfg.WorkerID
	}
	vcpus, mem := cfg.VCPUs, cfg.MemoryMB
	if vcpus == 0 {
		vcpus = defaultVCPUs
	}
	if mem == 0 {
		mem = defaultMemoryMB
	}
	if vcpus < 1 || vcpus > maxVCPUs || (vcpus > 1 && vcpus%2 != 0) {
		return nil, fmt.Errorf("%w: firecracker vm %s: vcpus must be 1 or an even number up to %d (got %d)",
			vmm.ErrInvalidConfig, cfg.ID, maxVCPUs, cfg.VCPUs)
	}
	if mem < minMemoryMB {
		return nil, fmt.Errorf("%w: firecracker vm %s: memory_mb must be at least %d (got %d)",
			vmm.ErrInvalidConfig, cfg.ID, minMemoryMB, cfg.MemoryMB)
	}
	if cfg.Egress.IsSet() && b.cfg.Network == nil {
		return nil, fmt.Errorf("%w: firecracker vm %s: an egress policy was given, but this worker runs vms without a "+
			"network (network: off, or not root)", vmm.ErrInvalidConfig, cfg.ID)
	}
	unlock := b.lockVM(cfg.ID)
	defer unlock()

	if st, err := b.loadState(cfg.ID); err == nil {
		if st.WorkerID != workerID {
			return nil, fmt.Errorf("firecracker backend: vm %s already exists for worker %q", cfg.ID, st.WorkerID)
		}
		return b.instance(st), nil
	} else if !errors.Is(err, vmm.ErrNotFound) {
		return nil, err
	}

	template, err := b.resolveImage(cfg.Image)
	if err != nil {
		return nil, fmt.Errorf("firecracker backend: create vm %s: %w", cfg.ID, err)
	}
	st := &vmState{
		ID: cfg.ID, Name: cfg.Name, WorkerID: workerID, InstallationID: b.cfg.InstallationID, Image: template,
		VCPUs: vcpus, MemoryMB: mem, CreatedAt: time.Now().UTC(),
	}
	dir := b.vmDir(cfg.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("firecracker backend: create directory of vm %s: %w", cfg.ID, err)
	}
	fail := func(err error) (*vmm.Instance, error) {
		_ = os.RemoveAll(dir)
		if st.ChrootDir != "" {
			_ = os.RemoveAll(st.ChrootDir)
		}
		if b.cfg.Network != nil {
			if derr := b.cfg.Network.Detach(context.WithoutCancel(ctx), cfg.ID); derr != nil {
				b.log.Warn("detach network after failed create", "vm_id", cfg.ID, "err", derr)
			}
		}
		return nil, fmt.Errorf("firecracker backend: create vm %s: %w", cfg.ID, err)
	}
	st.Disk = filepath.Join(dir, diskName)
	if b.cfg.JailerBin != "" {
		b.setJailPaths(st) // the jail itself is made at each start
	} else {
		st.APISock = filepath.Join(dir, apiSockName)
		st.VsockUDS = filepath.Join(dir, vsockName)
	}
	if len(st.VsockUDS) > maxSunPath || len(st.APISock) > maxSunPath {
		return fail(fmt.Errorf("socket path %q is over the %d-byte Unix socket limit: use a shorter DataDir or "+
			"chroot base", st.VsockUDS, maxSunPath))
	}
	// A disk left by an attempt that died before writing the state file is not trusted: clone again.
	if err := os.Remove(st.Disk); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fail(err)
	}
	method, err := vmproc.CloneDisk(template, st.Disk)
	if err != nil {
		return fail(err)
	}
	if fi, err := os.Stat(st.Disk); err == nil && fi.Size() < b.cfg.DiskMB<<20 {
		if err := os.Truncate(st.Disk, b.cfg.DiskMB<<20); err != nil {
			return fail(fmt.Errorf("grow disk: %w", err))
		}
	}
	if b.cfg.Network != nil {
		policy := network.Policy{}
		if e := cfg.Egress; e != nil {
			if policy, err = network.ParsePolicy(e.AllowCIDRs, e.DenyCIDRs, e.AllowDomains, e.DenyDomains); err != nil {
				return fail(fmt.Errorf("%w: %w", vmm.ErrInvalidConfig, err))
			}
		}
		att, err := b.cfg.Network.Attach(ctx, cfg.ID, policy)
		if err != nil {
			if errors.Is(err, network.ErrInvalid) {
				err = fmt.Errorf("%w: %w", vmm.ErrInvalidConfig, err)
			}
			return fail(fmt.Errorf("network: %w", err))
		}
		st.Egress, st.Net = &policy, &att
	}
	// The state file is written last (with the CID): it is what makes the VM exist.
	if err := b.allocateCID(st); err != nil {
		return fail(err)
	}
	b.log.Info("vm created", "vm_id", cfg.ID, "template", template, "clone", method, "cid", st.CID,
		"vcpus", vcpus, "memory_mb", mem)
	return b.instance(st), nil
}

// resolveImage returns the template for a VMConfig.Image: empty means RootfsPath; an absolute path names a file;
// anything else is a template name for the Images resolver.
func (b *Backend) resolveImage(img string) (string, error) {
	if img == "" {
		img = b.cfg.RootfsPath
	}
	if img == "" {
		return "", fmt.Errorf("%w: no image given and no default RootfsPath configured", vmm.ErrInvalidConfig)
	}
	if !filepath.IsAbs(img) {
		if b.cfg.Images == nil {
			return "", fmt.Errorf("%w: image %q: want the absolute path of a root filesystem template", vmm.ErrInvalidConfig, img)
		}
		p, err := b.cfg.Images(img)
		if err != nil {
			return "", fmt.Errorf("%w: image %q: %w", vmm.ErrInvalidConfig, img, err)
		}
		img = p
	}
	st, err := os.Stat(img)
	if err != nil {
		return "", fmt.Errorf("%w: image %q: %w", vmm.ErrInvalidConfig, img, err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("%w: image %q is not a regular file", vmm.ErrInvalidConfig, img)
	}
	return img, nil
}

// setLogger configures Firecracker's own log (PUT /logger) into firecracker.log in the VM's directory, when a
// log level is set. Firecracker opens the file for appending: it must exist. Also sent before a snapshot load,
// which a fresh process accepts after the logger (and metrics) only.
func (b *Backend) setLogger(ctx context.Context, st *vmState, api *apiClient) error {
	if b.cfg.FirecrackerLogLevel == "" {
		return nil
	}
	logPath := b.fcLogPath(st)
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("create firecracker log: %w", err)
	}
	_ = f.Close()
	fp := logPath
	if st.ChrootDir != "" {
		fp = jailLog // prepareJail linked it in
	}
	return api.call(ctx, http.MethodPut, "/logger", logger{LogPath: fp, Level: b.cfg.FirecrackerLogLevel, ShowLevel: true})
}

// kernelArgs returns the guest's command line, with its hostname option before init's arguments.
func (b *Backend) kernelArgs(st *vmState) string {
	opt := "aetherium.hostname=" + vmproc.Hostname(st.Name, st.ID)
	if st.Net != nil {
		opt += " " + network.KernelArgs(*st.Net)
	}
	args := b.cfg.KernelArgs
	if i := strings.Index(args, " -- "); i >= 0 {
		return args[:i] + " " + opt + args[i:]
	}
	if strings.HasSuffix(args, " --") {
		return strings.TrimSuffix(args, " --") + " " + opt + " --"
	}
	return args + " " + opt
}

// StartVM boots the VM and returns once its agent answers. A guest that does not become ready within
// ReadyTimeout (or whose firecracker exits) fails with the tail of its console log, and its process is killed.
func (b *Backend) StartVM(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	return b.boot(ctx, id, "start", bootSteps{setup: b.configure})
}

// bootSteps is what differs between a fresh boot and a snapshot restore.
type bootSteps struct {
	// restore: a VM whose firecracker runs is an error, not a success (only a fresh process loads a snapshot).
	restore bool
	// prepare runs before the jail is made and firecracker starts (a restore puts the snapshot's disk back);
	// done, when prepare has run, gets boot's result (a failed restore puts the VM's own disk back).
	prepare func(*vmState) error
	done    func(*vmState, error)
	// setup drives the new process's API up to a running guest.
	setup func(context.Context, *vmState, *apiClient) error
}

// configure sends the pre-boot configuration and InstanceStart.
func (b *Backend) configure(ctx context.Context, st *vmState, api *apiClient) error {
	kernel, disk, vsock := b.cfg.KernelPath, st.Disk, st.VsockUDS
	if st.ChrootDir != "" {
		kernel, disk, vsock = jailKernel, jailDisk, jailVsock
	}
	if err := b.setLogger(ctx, st, api); err != nil {
		return err
	}
	steps := []struct {
		path string
		body any
	}{
		{"/machine-config", machineConfig{VCPUCount: st.VCPUs, MemSizeMib: st.MemoryMB,
			TrackDirtyPages: b.cfg.TrackDirtyPages}},
		{"/boot-source", bootSource{KernelImagePath: kernel, BootArgs: b.kernelArgs(st)}},
		{"/drives/rootfs", drive{DriveID: "rootfs", PathOnHost: disk, IsRootDevice: true}},
		{"/vsock", vsockDevice{GuestCID: st.CID, UDSPath: vsock}},
	}
	if st.Net != nil {
		steps = append(steps, struct {
			path string
			body any
		}{"/network-interfaces/eth0", networkInterface{IfaceID: "eth0", HostDevName: st.Net.TAP, GuestMAC: st.Net.MAC}})
	}
	steps = append(steps, struct {
		path string
		body any
	}{"/actions", instanceAction{ActionType: "InstanceStart"}})
	for _, s := range steps {
		if err := api.call(ctx, http.MethodPut, s.path, s.body); err != nil {
			return err
		}
	}
	return b.setLineage(st.ID, snapshotRef{}) // a fresh boot: no snapshot before the next one
}

// boot launches firecracker for VM id, runs setup over its API (a fresh boot, or a snapshot load) and waits
// for the agent. On any failure the process is killed and its sockets removed.
// A DeleteVM of the VM cancels it: it fails with vmproc.ErrDeleting and leaves no process behind.
func (b *Backend) boot(parent context.Context, id, what string, steps bootSteps) (err error) {
	unlock := b.lockVM(id)
	defer unlock()
	ctx, endBoot, err := b.boots.Begin(parent, id)
	if err != nil {
		return fmt.Errorf("firecracker backend: %s vm %s: %w", what, id, err)
	}
	defer endBoot()
	st, err := b.loadState(id)
	if err != nil {
		return err
	}
	if b.alive(st) && steps.restore {
		return fmt.Errorf("firecracker backend: %s vm %s: %w: it runs; stop it first (only a fresh firecracker can "+
			"load a snapshot)", what, id, vmm.ErrInvalidConfig)
	}
	if b.alive(st) {
		// Already started (a retried task): make sure the agent answers.
		readyCtx, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
		defer cancel()
		if _, err := b.agentFor(st).WaitReady(readyCtx); err != nil {
			if vmproc.Deleting(ctx) {
				err = vmproc.ErrDeleting
			}
			return fmt.Errorf("firecracker backend: %s vm %s: running, but its agent does not answer: %w", what, id, err)
		}
		b.watch(st)
		return nil
	}
	b.closeAgent(id)
	st.InstallationID = b.cfg.InstallationID // a VM made before installations had ids gets this one's
	if err := removeSockets(st); err != nil {
		return fmt.Errorf("firecracker backend: %s vm %s: %w", what, id, err)
	}
	if steps.prepare != nil {
		if err := steps.prepare(st); err != nil {
			return fmt.Errorf("firecracker backend: %s vm %s: %w", what, id, err)
		}
		if steps.done != nil {
			defer func() { steps.done(st, err) }()
		}
	}
	if b.cfg.JailerBin != "" {
		if err := b.prepareJail(st); err != nil {
			return fmt.Errorf("firecracker backend: %s vm %s: %w", what, id, err)
		}
	}
	consolePath := filepath.Join(b.vmDir(id), consoleFile)
	console, err := os.OpenFile(consolePath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("firecracker backend: %s vm %s: open console log: %w", what, id, err)
	}
	fmt.Fprintf(console, "\n%s %s at %s ---\n", consoleMarker, what, time.Now().UTC().Format(time.RFC3339Nano))
	start := time.Now()
	p, err := b.launch(st, console)
	_ = console.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("firecracker backend: %s vm %s: %w", what, id, err)
	}
	b.mu.Lock()
	b.procs[id] = p
	b.mu.Unlock()
	st.PID, st.Started, st.Detail = p.PID, true, ""
	if st.PIDStart, _, err = vmproc.StartTime(p.PID); err != nil && !p.Exited() {
		b.log.Warn("read start time of firecracker", "vm_id", id, "pid", p.PID, "err", err)
	}
	if err := b.saveState(st); err != nil {
		return b.bootFailure(ctx, st, what, err)
	}

	// Everything below stops early if firecracker exits.
	bootCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-p.Done():
			cancel(errors.New(p.ExitDetail("firecracker")))
		case <-bootCtx.Done():
		}
	}()
	api := newAPIClient(st.APISock)
	defer api.http.CloseIdleConnections()
	if err := waitAPI(bootCtx, api); err != nil {
		return b.bootFailure(ctx, st, what, fmt.Errorf("API socket: %w", causeOr(bootCtx, err)))
	}
	if err := steps.setup(bootCtx, st, api); err != nil {
		return b.bootFailure(ctx, st, what, causeOr(bootCtx, err))
	}
	readyCtx, cancelReady := context.WithTimeout(bootCtx, b.cfg.ReadyTimeout)
	defer cancelReady()
	info, err := b.agentFor(st).WaitReady(readyCtx)
	if err != nil {
		if vmproc.Deleting(ctx) {
			err = fmt.Errorf("%w (agent: %w)", vmproc.ErrDeleting, err)
		} else if c := context.Cause(bootCtx); c != nil && ctx.Err() == nil {
			err = fmt.Errorf("%w (agent: %w)", c, err)
		} else if ctx.Err() == nil {
			err = fmt.Errorf("agent not ready within %s: %w", b.cfg.ReadyTimeout, err)
		} else {
			err = fmt.Errorf("agent not ready before the caller's deadline: %w", err)
		}
		return b.bootFailure(ctx, st, what, err)
	}
	b.watch(st)
	b.log.Info("vm started", "vm_id", id, "how", what, "agent_version", info.Version,
		"ready_in", time.Since(start).Round(time.Millisecond))
	return nil
}

// causeOr prefers the reason bootCtx was cancelled (firecracker exited) over the error it caused.
func causeOr(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) && !errors.Is(c, context.DeadlineExceeded) {
		return fmt.Errorf("%w (%w)", c, err)
	}
	return err
}

// bootFailure kills what boot started and explains, with the console's last output.
func (b *Backend) bootFailure(ctx context.Context, st *vmState, what string, cause error) error {
	b.exits.Forget(st.ID)
	b.closeAgent(st.ID)
	if err := b.kill(ctx, st); err != nil {
		b.log.Warn("kill firecracker after failed start", "vm_id", st.ID, "err", err)
	}
	if err := removeSockets(st); err != nil {
		b.log.Warn("remove sockets after failed start", "vm_id", st.ID, "err", err)
	}
	st.PID, st.PIDStart, st.Detail = 0, 0, what+" failed: "+cause.Error()
	if err := b.saveState(st); err != nil {
		b.log.Warn("save state after failed start", "vm_id", st.ID, "err", err)
	}
	return fmt.Errorf("firecracker backend: %s vm %s: %w; console:\n%s", what, st.ID, cause,
		vmproc.ConsoleTail(filepath.Join(b.vmDir(st.ID), consoleFile), consoleTailBytes))
}

// waitAPI polls the API socket until firecracker answers.
func waitAPI(ctx context.Context, api *apiClient) error {
	ctx, cancel := context.WithTimeout(ctx, apiReadyTimeout)
	defer cancel()
	var last error
	for delay := 2 * time.Millisecond; ; delay = min(delay*2, 100*time.Millisecond) {
		if last = api.ready(ctx); last == nil {
			return nil
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("no answer on %s: %w (last: %w)", api.sock, ctx.Err(), last)
		case <-t.C:
		}
	}
}

func removeSockets(st *vmState) error {
	for _, p := range []string{st.APISock, st.VsockUDS} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
	}
	return nil
}

// StopVM stops the guest: the agent powers it off; if firecracker is still there after StopTimeout, SIGKILL (see
// shutdown). Stopping a stopped VM succeeds.
func (b *Backend) StopVM(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := b.lockVM(id)
	defer unlock()
	st, err := b.loadState(id)
	if err != nil {
		return err
	}
	how, err := b.stop(ctx, st)
	if err != nil {
		return fmt.Errorf("firecracker backend: stop vm %s: %w", id, err)
	}
	b.log.Info("vm stopped", "vm_id", id, "how", how)
	return nil
}

func (b *Backend) stop(ctx context.Context, st *vmState) (string, error) {
	defer b.closeAgent(st.ID)
	b.exits.Forget(st.ID) // a deliberate stop: its end is no event
	how := "already stopped"
	if b.alive(st) {
		how = b.shutdown(ctx, st)
	}
	if err := removeSockets(st); err != nil {
		return how, err
	}
	if st.PID != 0 {
		st.PID, st.PIDStart, st.Detail = 0, 0, "stopped ("+how+")"
		if err := b.saveState(st); err != nil {
			return how, err
		}
	}
	return how, nil
}

// shutdown asks the agent (the guest's PID 1) to power off and waits StopTimeout for firecracker to exit (reboot=k
// makes the guest's reboot end the process); then it kills the process group. There is no Ctrl-Alt-Del step:
// Firecracker delivers it through an emulated i8042 keyboard, which the guest kernel only hears with CONFIG_SERIO
// and CONFIG_INPUT_KEYBOARD, both off in this project's guest config; it would only add StopTimeout to every stop
// of a guest whose agent does not answer. SIGTERM would not help either: firecracker does not flush anything of
// the guest's on it, so it ends the VM no more gently than SIGKILL.
func (b *Backend) shutdown(ctx context.Context, st *vmState) string {
	sctx, cancel := context.WithTimeout(ctx, b.cfg.StopTimeout)
	err := b.agentFor(st).PowerOff(sctx)
	if err == nil {
		err = b.waitExit(sctx, st)
	}
	cancel()
	if err == nil {
		return "agent power-off"
	}
	b.log.Debug("agent power-off failed", "vm_id", st.ID, "err", err)
	if err := b.kill(ctx, st); err != nil {
		b.log.Warn("kill firecracker", "vm_id", st.ID, "err", err)
	}
	return "killed"
}

// DeleteVM kills the VM's firecracker (one a previous worker process started too, found by the pid in the state
// file) and removes its directory, disk, sockets, jail and network. A start in progress is cancelled rather than
// waited for. Deleting a missing VM succeeds.
func (b *Backend) DeleteVM(ctx context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	deleted := b.boots.Cancel(id)
	defer deleted()
	unlock := b.lockVM(id)
	defer unlock()
	b.exits.Forget(id)
	b.closeAgent(id)
	st, err := b.loadState(id)
	switch {
	case errors.Is(err, vmm.ErrNotFound):
	case err != nil:
		return err
	default:
		if err := b.kill(ctx, st); err != nil {
			return fmt.Errorf("firecracker backend: delete vm %s: %w", id, err)
		}
		if st.ChrootDir != "" {
			if err := os.RemoveAll(st.ChrootDir); err != nil {
				return fmt.Errorf("firecracker backend: remove jail of vm %s: %w", id, err)
			}
		}
	}
	if b.cfg.Network != nil {
		if err := b.cfg.Network.Detach(ctx, id); err != nil {
			return fmt.Errorf("firecracker backend: delete vm %s: network: %w", id, err)
		}
	}
	if err := os.RemoveAll(b.vmDir(id)); err != nil {
		return fmt.Errorf("firecracker backend: remove directory of vm %s: %w", id, err)
	}
	b.mu.Lock()
	delete(b.procs, id)
	b.mu.Unlock()
	b.log.Info("vm deleted", "vm_id", id)
	return nil
}

// GetVMStatus reports the VM's state from its state file and its process.
func (b *Backend) GetVMStatus(_ context.Context, id string) (*vmm.Instance, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	st, err := b.loadState(id)
	if err != nil {
		return nil, err
	}
	return b.instance(st), nil
}

// ListVMs lists this worker's VMs, from their state files.
func (b *Backend) ListVMs(context.Context) ([]*vmm.Instance, error) {
	states, err := b.allStates()
	if err != nil {
		return nil, err
	}
	out := make([]*vmm.Instance, 0, len(states))
	for _, st := range states {
		if st.WorkerID == b.cfg.WorkerID {
			out = append(out, b.instance(st))
		}
	}
	return out, nil
}

func (b *Backend) instance(st *vmState) *vmm.Instance {
	inst := &vmm.Instance{
		ID: st.ID, Name: st.Name, WorkerID: st.WorkerID, Image: st.Image, SocketPath: st.VsockUDS,
	}
	if st.Net != nil {
		inst.Network = &vmm.NetworkInfo{IP: st.Net.IP.String(), MAC: st.Net.MAC, Gateway: st.Net.Gateway.String()}
	}
	switch {
	case b.alive(st):
		inst.State = vmm.StateRunning
	case !st.Started:
		inst.State = vmm.StateCreated
	default:
		inst.State = vmm.StateStopped
		inst.Detail = st.Detail
		b.mu.Lock()
		p := b.procs[st.ID]
		b.mu.Unlock()
		watched, ok := b.exits.Detail(st.ID, st.PID, st.PIDStart)
		switch {
		case ok:
			inst.Detail = watched // how it ended, with the console's last line
		case p != nil && p.PID == st.PID && p.Exited():
			inst.Detail = p.ExitDetail("firecracker")
		case st.PID != 0:
			inst.Detail = fmt.Sprintf("firecracker process %d is gone (it crashed or was killed)", st.PID)
		}
	}
	return inst
}

// ExecuteCommand runs one command through the VM's agent: vmm.ErrNotFound or vmm.ErrNotRunning when the VM is
// missing or stopped, otherwise a wrapped agent client error.
func (b *Backend) ExecuteCommand(ctx context.Context, id string, req agent.ExecRequest) (*agent.ExecResult, error) {
	return b.runner().Exec(ctx, id, req)
}

// ExecuteStream is ExecuteCommand with output copied to the writers as it comes.
func (b *Backend) ExecuteStream(ctx context.Context, id string, req agent.ExecRequest, stdout, stderr io.Writer) (*agent.ExecResult, error) {
	return b.runner().ExecStream(ctx, id, req, stdout, stderr)
}

func (b *Backend) runner() vmproc.AgentRunner {
	return vmproc.AgentRunner{Backend: "firecracker", Client: b.cachedAgent, Forget: b.closeAgent,
		Running: func(id string) (bool, string, error) {
			st, err := b.loadState(id)
			if err != nil {
				return false, "", err
			}
			return b.alive(st), string(b.instance(st).State), nil
		}}
}

// Agent returns the VM's cached agent client once its firecracker is known to run.
func (b *Backend) Agent(_ context.Context, id string) (*agentclient.Client, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	st, err := b.loadState(id)
	if err != nil {
		return nil, err
	}
	if !b.alive(st) {
		return nil, fmt.Errorf("%w: vm %s is %s", vmm.ErrNotRunning, id, b.instance(st).State)
	}
	return b.agentFor(st), nil
}

// cachedAgent returns the cached client, reading the state file only when there is none yet.
func (b *Backend) cachedAgent(id string) (*agentclient.Client, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	b.mu.Lock()
	c, ok := b.agents[id]
	b.mu.Unlock()
	if ok {
		return c, nil
	}
	st, err := b.loadState(id)
	if err != nil {
		return nil, err
	}
	return b.agentFor(st), nil
}

// agentFor returns the cached agent client of VM st, making one if needed.
func (b *Backend) agentFor(st *vmState) *agentclient.Client {
	b.mu.Lock()
	defer b.mu.Unlock()
	if c, ok := b.agents[st.ID]; ok {
		return c
	}
	c := agentclient.New(transport.FirecrackerVsock(st.VsockUDS, b.cfg.AgentPort))
	if b.closed {
		_ = c.Close()
		return c
	}
	b.agents[st.ID] = c
	return c
}

func (b *Backend) closeAgent(id string) {
	b.mu.Lock()
	c := b.agents[id]
	delete(b.agents, id)
	b.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}
