//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/transport"
	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/tracing"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// vmState is a VM's state file: what a restarted worker needs to find the VM and its process again.
type vmState struct {
	ID       string `json:"id"`
	Name     string `json:"name,omitempty"`
	WorkerID string `json:"worker_id"`
	// InstallationID is the installation that made the VM (Config.InstallationID); its QEMU carries it in -name.
	InstallationID string `json:"installation_id,omitempty"`
	Image          string `json:"image"` // the template the disk was made from
	VCPUs          int    `json:"vcpus"`
	MemoryMB       int    `json:"memory_mb"`

	// Egress is the VM's policy and Net its attachment (TAP, MAC, address), when the backend has a network.
	Egress *network.Policy     `json:"egress,omitempty"`
	Net    *network.Attachment `json:"net,omitempty"`

	Disk       string `json:"disk"`
	DiskFormat string `json:"disk_format"` // raw (a reflink clone) or qcow2 (an overlay on the template)
	AgentSock  string `json:"agent_sock"`
	QMPSock    string `json:"qmp_sock"`

	// PID and PIDStart identify the QEMU process (start time in clock ticks since boot), so that a reused pid is
	// never taken for it.
	PID      int    `json:"pid,omitempty"`
	PIDStart uint64 `json:"pid_start,omitempty"`
	Accel    string `json:"accel,omitempty"`
	Started  bool   `json:"started"`

	CreatedAt time.Time `json:"created_at"`
	Detail    string    `json:"detail,omitempty"` // why the VM last stopped, when known
}

func (b *Backend) statePath(id string) string { return filepath.Join(b.vmDir(id), stateFile) }

// loadState reads VM id's state file; vmm.ErrNotFound (wrapped) when there is none.
func (b *Backend) loadState(id string) (*vmState, error) {
	var st vmState
	err := vmproc.ReadJSON(b.statePath(id), &st)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("qemu backend: vm %s: %w", id, vmm.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("qemu backend: state of vm %s: %w", id, err)
	}
	if st.ID != id {
		return nil, fmt.Errorf("qemu backend: state file of vm %s names vm %q", id, st.ID)
	}
	return &st, nil
}

func (b *Backend) saveState(st *vmState) error {
	if err := vmproc.WriteJSON(b.statePath(st.ID), st); err != nil {
		return fmt.Errorf("qemu backend: save state of vm %s: %w", st.ID, err)
	}
	return nil
}

// allStates reads every state file under DataDir/qemu; unreadable ones are skipped with a warning.
func (b *Backend) allStates() ([]*vmState, error) {
	entries, err := os.ReadDir(b.vmsDir())
	if err != nil {
		return nil, fmt.Errorf("qemu backend: list vms: %w", err)
	}
	var out []*vmState
	for _, e := range entries {
		if !e.IsDir() || checkID(e.Name()) != nil {
			continue
		}
		st, err := b.loadState(e.Name())
		if errors.Is(err, vmm.ErrNotFound) {
			continue // a directory being created or deleted
		}
		if err != nil {
			b.log.Warn("skipping vm with unreadable state", "vm_id", e.Name(), "err", err)
			continue
		}
		out = append(out, st)
	}
	return out, nil
}

// CreateVM makes the VM's copy-on-write disk from its template and records the VM, without starting anything.
// Creating a VM that exists returns it.
func (b *Backend) CreateVM(ctx context.Context, cfg vmm.VMConfig) (*vmm.Instance, error) {
	if err := checkID(cfg.ID); err != nil {
		return nil, err
	}
	workerID := b.cfg.WorkerID
	if cfg.WorkerID != "" {
		if workerID != "" && cfg.WorkerID != workerID {
			return nil, fmt.Errorf("qemu backend: vm %s belongs to worker %q, this backend is worker %q",
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
	if vcpus < 1 || vcpus > maxVCPUs {
		return nil, fmt.Errorf("%w: qemu vm %s: vcpus must be between 1 and %d (got %d)",
			vmm.ErrInvalidConfig, cfg.ID, maxVCPUs, cfg.VCPUs)
	}
	if mem < minMemoryMB {
		return nil, fmt.Errorf("%w: qemu vm %s: memory_mb must be at least %d (got %d)",
			vmm.ErrInvalidConfig, cfg.ID, minMemoryMB, cfg.MemoryMB)
	}
	if cfg.Egress.IsSet() && b.cfg.Network == nil {
		return nil, fmt.Errorf("%w: qemu vm %s: an egress policy was given, but this worker runs vms without a "+
			"network (network: off, or not root)", vmm.ErrInvalidConfig, cfg.ID)
	}
	unlock := b.lockVM(cfg.ID)
	defer unlock()

	if st, err := b.loadState(cfg.ID); err == nil {
		if st.WorkerID != workerID {
			return nil, fmt.Errorf("qemu backend: vm %s already exists for worker %q", cfg.ID, st.WorkerID)
		}
		return b.instance(st), nil
	} else if !errors.Is(err, vmm.ErrNotFound) {
		return nil, err
	}

	template, err := b.resolveImage(cfg.Image)
	if err != nil {
		return nil, fmt.Errorf("qemu backend: create vm %s: %w", cfg.ID, err)
	}
	dir := b.vmDir(cfg.ID)
	// A directory without a state file is what an attempt that died half way left: start over.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("qemu backend: create vm %s: clear leftovers: %w", cfg.ID, err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("qemu backend: create directory of vm %s: %w", cfg.ID, err)
	}
	st := &vmState{
		ID: cfg.ID, Name: cfg.Name, WorkerID: workerID, InstallationID: b.cfg.InstallationID, Image: template,
		VCPUs: vcpus, MemoryMB: mem, AgentSock: filepath.Join(dir, agentSock), QMPSock: filepath.Join(dir, qmpSock),
		CreatedAt: time.Now().UTC(),
	}
	policy, err := egressPolicy(cfg.Egress)
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, fmt.Errorf("qemu backend: create vm %s: %w", cfg.ID, err)
	}
	fail := func(err error) (*vmm.Instance, error) {
		_ = os.RemoveAll(dir)
		if b.cfg.Network != nil {
			if derr := b.cfg.Network.Detach(context.WithoutCancel(ctx), cfg.ID); derr != nil {
				b.log.Warn("detach network after failed create", "vm_id", cfg.ID, "err", derr)
			}
		}
		return nil, fmt.Errorf("qemu backend: create vm %s: %w", cfg.ID, err)
	}
	dctx, span := tracing.Start(ctx, "qemu.disk")
	err = b.makeDisk(dctx, st, template)
	span.SetAttributes(attribute.String("aetherium.disk_format", st.DiskFormat))
	tracing.End(span, err)
	if err != nil {
		return fail(err)
	}
	if b.cfg.Network != nil {
		nctx, span := tracing.Start(ctx, "network.attach")
		att, err := b.cfg.Network.Attach(nctx, cfg.ID, policy)
		tracing.End(span, err)
		if err != nil {
			if errors.Is(err, network.ErrInvalid) {
				err = fmt.Errorf("%w: %w", vmm.ErrInvalidConfig, err)
			}
			return fail(fmt.Errorf("network: %w", err))
		}
		st.Egress, st.Net = &policy, &att
	}
	// The state file is written last: it is what makes the VM exist.
	if err := b.saveState(st); err != nil {
		return fail(err)
	}
	b.log.Info("vm created", "vm_id", cfg.ID, "template", template, "disk", st.DiskFormat,
		"vcpus", vcpus, "memory_mb", mem, "ip", netIP(st))
	return b.instance(st), nil
}

func netIP(st *vmState) string {
	if st.Net == nil {
		return ""
	}
	return st.Net.IP.String()
}

// egressPolicy converts the API's policy (validated there) to the network manager's.
func egressPolicy(e *vmm.EgressPolicy) (network.Policy, error) {
	if e == nil {
		return network.Policy{}, nil
	}
	p, err := network.ParsePolicy(e.AllowCIDRs, e.DenyCIDRs, e.AllowDomains, e.DenyDomains)
	if err != nil {
		return p, fmt.Errorf("%w: %w", vmm.ErrInvalidConfig, err)
	}
	return p, nil
}

// restoreNetwork re-attaches the VMs of this data directory after a restart (the manager keeps policies in
// memory; attaching again is idempotent and repairs a missing TAP or rule) and removes the network leftovers of
// VMs that are gone.
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
		return fmt.Errorf("qemu backend: %w", err)
	}
	return nil
}

// makeDisk gives the VM a private copy-on-write disk of at least DiskMB: a reflink clone of the template where the
// filesystem shares blocks, otherwise a qcow2 overlay whose backing file is the (read-only, never modified)
// template. Either way creation is instant and takes no space until the guest writes; the agent grows the
// filesystem to the disk at boot.
func (b *Backend) makeDisk(ctx context.Context, st *vmState, template string) error {
	size := b.cfg.DiskMB << 20
	if fi, err := os.Stat(template); err == nil && fi.Size() > size {
		size = fi.Size()
	}
	raw := filepath.Join(b.vmDir(st.ID), rawDiskName)
	if err := vmproc.Reflink(template, raw); err == nil {
		if err := os.Truncate(raw, size); err != nil {
			_ = os.Remove(raw)
			return fmt.Errorf("grow disk: %w", err)
		}
		st.Disk, st.DiskFormat = raw, "raw"
		return nil
	}
	qcow := filepath.Join(b.vmDir(st.ID), qcowDiskName)
	out, err := exec.CommandContext(ctx, b.cfg.ImgBinary, "create", "-q", "-f", "qcow2", "-F", "raw",
		"-b", template, qcow, strconv.FormatInt(size, 10)).CombinedOutput()
	if err != nil {
		_ = os.Remove(qcow)
		return fmt.Errorf("make qcow2 overlay of %s: %w: %s", template, err, strings.TrimSpace(string(out)))
	}
	st.Disk, st.DiskFormat = qcow, "qcow2"
	return nil
}

// resolveImage returns the template file for a VMConfig.Image: empty means RootfsPath, an absolute path names a
// file, anything else is a template name for the resolver.
func (b *Backend) resolveImage(img string) (string, error) {
	if img == "" {
		img = b.cfg.RootfsPath
		if img == "" {
			return "", fmt.Errorf("%w: no image given and no default template configured (build one with "+
				"`aetherium image build`)", vmm.ErrInvalidConfig)
		}
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
	if strings.ContainsRune(img, ',') {
		return "", fmt.Errorf("%w: image path %q holds a comma, which QEMU's option syntax cannot take", vmm.ErrInvalidConfig, img)
	}
	return img, nil
}

// kernelArgs is the guest's command line. reboot=t with QEMU's -no-reboot makes the guest's reboot (what the
// agent's power-off ends in, and panic=-1 turns a panic into) exit QEMU at once; microvm has no i8042 for reboot=k.
func (b *Backend) kernelArgs(st *vmState) string {
	args := []string{"console=ttyS0", "reboot=t", "panic=-1", "pci=off", "quiet", "cryptomgr.notests",
		"mitigations=off", "root=/dev/vda", "rw", "rootfstype=ext4", "init=" + DefaultGuestInit,
		"aetherium.listen=virtio-serial:" + agentPortName,
		"aetherium.hostname=" + vmproc.Hostname(st.Name, st.ID)}
	if b.accel == AccelTCG {
		args = append(args, "tsc_early_khz="+strconv.Itoa(b.cfg.TSCKHz), "tsc=reliable")
	}
	if st.Net != nil {
		args = append(args, network.KernelArgs(*st.Net))
	}
	if b.cfg.ExtraKernelArgs != "" {
		args = append(args, b.cfg.ExtraKernelArgs)
	}
	return strings.Join(args, " ") + " -- --init"
}

// procName is QEMU's -name for VM id of installation inst: how its process is recognised (with the data directory
// in its socket paths), and what tells one installation's QEMUs from another's (`ps` shows it too). Installation
// ids have no dash, so the VM id is what follows the installation's prefix.
func procName(inst, id string) string {
	if inst == "" {
		return "aetherium-" + id
	}
	return "aetherium-" + inst + "-" + id
}

// command is the QEMU invocation for VM st.
func (b *Backend) command(st *vmState) *exec.Cmd {
	// TCG: "max" is every feature TCG emulates (SSE4.2, POPCNT... which Bun and Claude Code's native binaries need;
	// qemu64 has none of them) and includes ARAT, whose absence keeps an idle guest ticking.
	accel, cpu := "tcg,tb-size=64", "max"
	if b.accel == AccelKVM {
		accel, cpu = "kvm", "host"
	}
	args := []string{
		"-name", procName(st.InstallationID, st.ID),
		"-M", "microvm,x-option-roms=off",
		"-accel", accel, "-cpu", cpu,
		"-m", strconv.Itoa(st.MemoryMB), "-smp", strconv.Itoa(st.VCPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "file,id=console,append=on,path=" + filepath.Join(b.vmDir(st.ID), consoleFile),
		"-serial", "chardev:console",
		"-qmp", "unix:" + st.QMPSock + ",server=on,wait=off",
		"-kernel", b.cfg.KernelPath,
		"-append", b.kernelArgs(st),
		"-drive", "id=root,if=none,format=" + st.DiskFormat + ",file=" + st.Disk + ",discard=unmap",
		"-device", "virtio-blk-device,drive=root",
		"-device", "virtio-rng-device",
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,server=on,wait=off,path=" + st.AgentSock,
		"-device", "virtserialport,chardev=agent,name=" + agentPortName,
	}
	if st.Net != nil {
		args = append(args, st.Net.QEMUArgs()...)
	}
	return exec.Command(b.cfg.Binary, args...)
}

// ours reports whether pid/start is VM st's QEMU.
func (b *Backend) ours(st *vmState) bool {
	return vmproc.Owned(st.PID, st.PIDStart, func(args []string) bool {
		return vmproc.HasArgPair(args, "-name", func(v string) bool { return v == procName(st.InstallationID, st.ID) })
	})
}

// alive reports whether VM st's QEMU runs.
func (b *Backend) alive(st *vmState) bool {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID == st.PID {
		// Our own child: its pid cannot be reused before we reap it, and its command line may not be readable yet
		// just after exec (the kernel ends the close-on-exec wait of os/exec before it sets up the arguments).
		return !p.Exited()
	}
	return b.ours(st)
}

// watch has the exit watcher report VM st's QEMU when it exits on its own: through its Wait when this backend
// started it, through a pidfd when it was adopted.
func (b *Backend) watch(st *vmState) {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID != st.PID {
		p = nil
	}
	b.exits.Watch(st.ID, st.PID, st.PIDStart, p)
}

// waitExit waits until VM st's QEMU has ended, or ctx ends.
func (b *Backend) waitExit(ctx context.Context, st *vmState) error {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID == st.PID {
		select {
		case <-p.Done():
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return vmproc.WaitGone(ctx, func() bool { return b.ours(st) })
}

// kill ends VM st's QEMU with SIGKILL and waits until it is gone.
func (b *Backend) kill(ctx context.Context, st *vmState) error {
	if !b.alive(st) {
		return nil
	}
	if err := vmproc.KillGroup(st.PID); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := b.waitExit(wctx, st); err != nil {
		return fmt.Errorf("qemu process %d still there after SIGKILL: %w", st.PID, err)
	}
	return nil
}

// StartVM boots the VM and returns once its agent answers. A guest that does not become ready within ReadyTimeout
// (or whose QEMU exits) fails with the tail of its console log, and its process is killed. A DeleteVM of the VM
// cancels the start: it fails with vmproc.ErrDeleting and leaves no process behind.
func (b *Backend) StartVM(parent context.Context, id string) error {
	if err := checkID(id); err != nil {
		return err
	}
	unlock := b.lockVM(id)
	defer unlock()
	ctx, endBoot, err := b.boots.Begin(parent, id)
	if err != nil {
		return fmt.Errorf("qemu backend: start vm %s: %w", id, err)
	}
	defer endBoot()
	st, err := b.loadState(id)
	if err != nil {
		return err
	}
	if b.alive(st) {
		// Already started (a retried task): make sure the agent answers.
		readyCtx, cancel := context.WithTimeout(ctx, b.cfg.ReadyTimeout)
		defer cancel()
		if _, err := b.agentFor(st).client.WaitReady(readyCtx); err != nil {
			if vmproc.Deleting(ctx) {
				err = vmproc.ErrDeleting
			}
			return fmt.Errorf("qemu backend: start vm %s: running, but its agent does not answer: %w", id, err)
		}
		b.watch(st)
		return nil
	}
	st.InstallationID = b.cfg.InstallationID // a VM made before installations had ids gets this one's
	b.closeAgent(id)
	if err := vmproc.RemoveFiles(st.AgentSock, st.QMPSock); err != nil {
		return fmt.Errorf("qemu backend: start vm %s: remove stale sockets: %w", id, err)
	}
	consolePath := filepath.Join(b.vmDir(id), consoleFile)
	console, err := os.OpenFile(consolePath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("qemu backend: start vm %s: open console log: %w", id, err)
	}
	fmt.Fprintf(console, "\n%s start (%s) at %s ---\n", consoleMarker, b.accel, time.Now().UTC().Format(time.RFC3339Nano))
	start := time.Now()
	cmd := b.command(st)
	cmd.Stdout, cmd.Stderr = console, console // QEMU's own complaints land beside the guest's console
	_, span := tracing.Start(ctx, "qemu.launch", trace.WithAttributes(attribute.String("aetherium.accel", b.accel)))
	p, err := vmproc.Start(cmd, vmproc.StartOptions{DieWithParent: b.cfg.DieWithWorker})
	tracing.End(span, err)
	_ = console.Close() // the child has its own descriptor
	if err != nil {
		return fmt.Errorf("qemu backend: start vm %s: %w", id, err)
	}
	b.mu.Lock()
	b.procs[id] = p
	b.mu.Unlock()
	st.PID, st.Started, st.Accel, st.Detail = p.PID, true, b.accel, ""
	if st.PIDStart, _, err = vmproc.StartTime(p.PID); err != nil && !p.Exited() {
		b.log.Warn("read start time of qemu", "vm_id", id, "pid", p.PID, "err", err)
	}
	if err := b.saveState(st); err != nil {
		return b.bootFailure(ctx, st, err)
	}

	// Waiting stops early if QEMU exits.
	bootCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case <-p.Done():
			cancel(errors.New(p.ExitDetail("qemu")))
		case <-bootCtx.Done():
		}
	}()
	readyCtx, cancelReady := context.WithTimeout(bootCtx, b.cfg.ReadyTimeout)
	defer cancelReady()
	readyCtx, span = tracing.Start(readyCtx, "agent ready") // the guest's boot, until its agent answers
	info, err := b.agentFor(st).client.WaitReady(readyCtx)
	tracing.End(span, err)
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
		return b.bootFailure(ctx, st, err)
	}
	b.watch(st)
	b.log.Info("vm started", "vm_id", id, "accel", b.accel, "agent_version", info.Version,
		"ready_in", time.Since(start).Round(time.Millisecond))
	return nil
}

// bootFailure kills what StartVM started and explains, with the console's last output.
func (b *Backend) bootFailure(ctx context.Context, st *vmState, cause error) error {
	b.exits.Forget(st.ID)
	b.closeAgent(st.ID)
	if err := b.kill(ctx, st); err != nil {
		b.log.Warn("kill qemu after failed start", "vm_id", st.ID, "err", err)
	}
	if err := vmproc.RemoveFiles(st.AgentSock, st.QMPSock); err != nil {
		b.log.Warn("remove sockets after failed start", "vm_id", st.ID, "err", err)
	}
	st.PID, st.PIDStart, st.Detail = 0, 0, "start failed: "+cause.Error()
	if err := b.saveState(st); err != nil {
		b.log.Warn("save state after failed start", "vm_id", st.ID, "err", err)
	}
	return fmt.Errorf("qemu backend: start vm %s: %w; console:\n%s", st.ID, cause,
		vmproc.ConsoleTail(filepath.Join(b.vmDir(st.ID), consoleFile), consoleTailBytes))
}

// StopVM stops the guest: the agent powers it off (the guest reboots, and QEMU exits); if QEMU is still there
// after StopTimeout, QMP quit; then SIGKILL. Stopping a stopped VM succeeds.
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
	defer b.closeAgent(id)
	b.exits.Forget(id) // a deliberate stop: its end is no event
	how := "already stopped"
	if b.alive(st) {
		how = b.shutdown(ctx, st)
	}
	if err := vmproc.RemoveFiles(st.AgentSock, st.QMPSock); err != nil {
		return fmt.Errorf("qemu backend: stop vm %s: %w", id, err)
	}
	if st.PID != 0 {
		st.PID, st.PIDStart, st.Detail = 0, 0, "stopped ("+how+")"
		if err := b.saveState(st); err != nil {
			return err
		}
	}
	b.log.Info("vm stopped", "vm_id", id, "how", how)
	return nil
}

// shutdown tries each way of stopping the guest in turn, and says which one worked.
func (b *Backend) shutdown(ctx context.Context, st *vmState) string {
	step := func(name string, fn func(context.Context) error) bool {
		sctx, cancel := context.WithTimeout(ctx, b.cfg.StopTimeout)
		defer cancel()
		if err := fn(sctx); err != nil {
			b.log.Debug("stop step failed", "vm_id", st.ID, "step", name, "err", err)
			return false
		}
		return b.waitExit(sctx, st) == nil
	}
	if step("agent power-off", func(ctx context.Context) error { return b.agentFor(st).client.PowerOff(ctx) }) {
		return "agent power-off"
	}
	if step("qmp quit", func(ctx context.Context) error { return qmpCommand(ctx, st.QMPSock, "quit") }) {
		return "qmp quit"
	}
	if err := b.kill(ctx, st); err != nil {
		b.log.Warn("kill qemu", "vm_id", st.ID, "err", err)
	}
	return "killed"
}

// DeleteVM kills the VM's QEMU (one a previous worker process started too, found by the pid in the state file) and
// removes its directory (disk, sockets, console log) and its network (TAP, lease). A start in progress is cancelled
// rather than waited for. Deleting a missing VM succeeds.
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
			return fmt.Errorf("qemu backend: delete vm %s: %w", id, err)
		}
	}
	if b.cfg.Network != nil {
		if err := b.cfg.Network.Detach(ctx, id); err != nil {
			return fmt.Errorf("qemu backend: delete vm %s: network: %w", id, err)
		}
	}
	if err := os.RemoveAll(b.vmDir(id)); err != nil {
		return fmt.Errorf("qemu backend: remove directory of vm %s: %w", id, err)
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
	inst := &vmm.Instance{ID: st.ID, Name: st.Name, WorkerID: st.WorkerID, Image: st.Image, SocketPath: st.AgentSock}
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
			inst.Detail = p.ExitDetail("qemu")
		case st.PID != 0:
			inst.Detail = fmt.Sprintf("qemu process %d is gone (it crashed or was killed)", st.PID)
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
	return vmproc.AgentRunner{Backend: "qemu", Client: b.cachedAgent, Forget: b.closeAgent,
		Running: func(id string) (bool, string, error) {
			st, err := b.loadState(id)
			if err != nil {
				return false, "", err
			}
			return b.alive(st), string(b.instance(st).State), nil
		}}
}

// Agent returns the VM's agent client once its QEMU is known to run.
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
	return b.agentFor(st).client, nil
}

// cachedAgent returns the cached client, reading the state file only when there is none yet.
func (b *Backend) cachedAgent(id string) (*agentclient.Client, error) {
	if err := checkID(id); err != nil {
		return nil, err
	}
	b.mu.Lock()
	a, ok := b.agents[id]
	b.mu.Unlock()
	if ok {
		return a.client, nil
	}
	st, err := b.loadState(id)
	if err != nil {
		return nil, err
	}
	return b.agentFor(st).client, nil
}

// agentFor returns the VM's agent connection, making one if needed: a yamux session over the virtio-serial
// port's host socket, made again when the stream breaks.
func (b *Backend) agentFor(st *vmState) *agentConn {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.agents[st.ID]; ok {
		return a
	}
	sock := st.AgentSock
	dial, session := transport.MultiplexedWithLogger(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}, b.log.With("vm_id", st.ID))
	a := &agentConn{client: agentclient.New(dial), session: session}
	if b.closed {
		_ = a.close()
		return a
	}
	b.agents[st.ID] = a
	return a
}

func (b *Backend) closeAgent(id string) {
	b.mu.Lock()
	a := b.agents[id]
	delete(b.agents, id)
	b.mu.Unlock()
	if a != nil {
		_ = a.close()
	}
}

// adopt takes over the QEMUs that still run for this worker's VMs: a previous worker process started them, and
// they run detached, so a worker restart, crash or upgrade leaves the guests and their work alone. A process is
// this VM's only if its pid, start time and -name (VM and installation id) all match the state file, so a reused
// pid is never taken for it; the QMP socket must answer. A VM whose QEMU is gone gets the reason in its state
// (the worker's reconciliation then marks it failed).
func (b *Backend) adopt(ctx context.Context) error {
	states, err := b.allStates()
	if err != nil {
		return err
	}
	for _, st := range states {
		if st.WorkerID != b.cfg.WorkerID || st.PID == 0 {
			continue
		}
		unlock := b.lockVM(st.ID)
		if b.ours(st) {
			qctx, cancel := context.WithTimeout(ctx, b.cfg.StopTimeout)
			if err := qmpCommand(qctx, st.QMPSock, "query-status"); err != nil {
				b.log.Warn("adopted qemu does not answer on its QMP socket", "vm_id", st.ID, "pid", st.PID, "err", err)
			}
			cancel()
			b.watch(st)
			b.log.Info("adopted running vm", "vm_id", st.ID, "pid", st.PID)
		} else {
			st.Detail = fmt.Sprintf("qemu process %d is gone: it crashed or was killed while no worker watched it, "+
				"or the host restarted", st.PID)
			st.PID, st.PIDStart = 0, 0
			if err := b.saveState(st); err != nil {
				b.log.Warn("record lost qemu", "vm_id", st.ID, "err", err)
			}
			b.log.Warn("vm's qemu is gone", "vm_id", st.ID, "detail", st.Detail)
		}
		unlock()
	}
	return nil
}

// reapOrphans kills QEMU processes of this installation and DataDir that no VM's state file accounts for: what a
// worker that crashed between starting QEMU and recording it leaves. A QEMU is a candidate only if its sockets lie
// in a VM directory of this DataDir and its -name carries this installation's id and that VM's id, so a QEMU of
// another installation (another data directory, or another installation id) is never touched.
func (b *Backend) reapOrphans(ctx context.Context) error {
	dirArg := "path=" + b.vmsDir() + "/"
	// vmOf returns the VM id of a QEMU's arguments, or "" when it is not one of this installation's.
	vmOf := func(args []string) string {
		var id string
		vmproc.HasArgPair(args, "-chardev", func(v string) bool {
			_, rest, ok := strings.Cut(v, dirArg)
			if ok {
				id, _, _ = strings.Cut(rest, "/")
			}
			return ok
		})
		if id == "" || checkID(id) != nil ||
			!vmproc.HasArgPair(args, "-name", func(v string) bool { return v == procName(b.cfg.InstallationID, id) }) {
			return ""
		}
		return id
	}
	found, err := vmproc.Scan(func(args []string) bool { return vmOf(args) != "" })
	if err != nil {
		return err
	}
	for _, f := range found {
		id := vmOf(f.Args)
		if st, err := b.loadState(id); err == nil && st.PID == f.PID && st.PIDStart == f.Start {
			continue // a VM's own QEMU, still running: adopted
		}
		b.log.Warn("reaping orphaned qemu process", "pid", f.PID, "vm_id", id)
		if err := vmproc.KillGroup(f.PID); err != nil {
			b.log.Warn("kill orphaned qemu", "pid", f.PID, "err", err)
			continue
		}
		pid, start := f.PID, f.Start
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := vmproc.WaitGone(wctx, func() bool {
			s, gone, err := vmproc.StartTime(pid)
			return err == nil && !gone && s == start
		})
		cancel()
		if err != nil {
			b.log.Warn("orphaned qemu survives SIGKILL", "pid", pid, "err", err)
		}
	}
	return nil
}
