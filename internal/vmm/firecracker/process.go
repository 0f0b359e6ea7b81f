//go:build linux

package firecracker

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"

	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// launch starts firecracker (through the jailer when configured) for st, with its serial console on console (a
// file: firecracker's output must not depend on the worker being alive). It runs detached in its own session (a
// signal to the worker's group does not reach it, DeleteVM kills the whole group, and it outlives the worker,
// whose successor adopts it), labelled with the installation id in its environment.
func (b *Backend) launch(st *vmState, console *os.File) (*vmproc.Process, error) {
	var cmd *exec.Cmd
	if b.cfg.JailerBin == "" {
		cmd = exec.Command(b.cfg.FirecrackerBin, "--api-sock", st.APISock, "--id", st.ID)
	} else {
		cmd = exec.Command(b.cfg.JailerBin, b.jailerArgs(st)...)
	}
	cmd.Stdout = console
	cmd.Stderr = console
	cmd.Env = append(os.Environ(), "AETHERIUM_INSTALLATION_ID="+st.InstallationID)
	return vmproc.Start(cmd, vmproc.StartOptions{DieWithParent: b.cfg.DieWithWorker})
}

// isOurs reports whether pid is still the firecracker process of VM st: same start time and a command line that
// names the VM (firecracker and the jailer both get --id <id>) and, unjailed, its API socket (which lies in this
// installation's data directory), so a reused pid or another installation's VM of the same id is never taken for
// it.
func isOurs(st *vmState) bool {
	return vmproc.Owned(st.PID, st.PIDStart, func(args []string) bool {
		// The jailer execs firecracker with "--id <id>" (src/jailer env.rs); its docs write --id=<id>.
		hasID := vmproc.HasArgPair(args, "--id", func(v string) bool { return v == st.ID }) ||
			slices.Contains(args, "--id="+st.ID)
		return hasID && (st.ChrootDir != "" ||
			vmproc.HasArgPair(args, "--api-sock", func(v string) bool { return v == st.APISock }))
	})
}

// adopt takes over the firecracker processes that still run for this worker's VMs (started by a previous worker
// process: they run detached). A process is the VM's only if pid, start time and arguments match (isOurs) and
// its API socket answers; a VM whose process is gone gets the reason in its state (the worker's reconciliation
// then marks it failed).
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
		if isOurs(st) {
			api := newAPIClient(st.APISock)
			actx, cancel := context.WithTimeout(ctx, apiReadyTimeout)
			if err := api.ready(actx); err != nil {
				b.log.Warn("adopted firecracker does not answer on its API socket", "vm_id", st.ID, "pid", st.PID, "err", err)
			}
			cancel()
			api.http.CloseIdleConnections()
			b.watch(st)
			b.log.Info("adopted running vm", "vm_id", st.ID, "pid", st.PID)
		} else {
			st.Detail = fmt.Sprintf("firecracker process %d is gone: it crashed or was killed while no worker "+
				"watched it, or the host restarted", st.PID)
			st.PID, st.PIDStart = 0, 0
			if err := b.saveState(st); err != nil {
				b.log.Warn("record lost firecracker", "vm_id", st.ID, "err", err)
			}
			b.log.Warn("vm's firecracker is gone", "vm_id", st.ID, "detail", st.Detail)
		}
		unlock()
	}
	return nil
}

// alive reports whether VM st's firecracker process runs.
func (b *Backend) alive(st *vmState) bool {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID == st.PID {
		// Our own child: its pid cannot be reused before we reap it, and its command line may not be readable yet
		// just after exec (the kernel ends the close-on-exec wait of os/exec before it sets up the arguments).
		return !p.Exited()
	}
	return isOurs(st)
}

// watch has the exit watcher report VM st's firecracker when it exits on its own: through its Wait when this
// backend started it, through a pidfd when it was adopted.
func (b *Backend) watch(st *vmState) {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID != st.PID {
		p = nil
	}
	b.exits.Watch(st.ID, st.PID, st.PIDStart, p)
}

// exitWatch returns a channel closed when VM st's process ends: the child's own when this backend started it,
// otherwise one fed by polling /proc (a process adopted after a worker restart is not our child).
func (b *Backend) exitWatch(ctx context.Context, st *vmState) <-chan struct{} {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID == st.PID {
		return p.Done()
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		_ = vmproc.WaitGone(ctx, func() bool { return isOurs(st) })
	}()
	return ch
}

// waitExit waits until VM st's process has ended, or ctx ends.
func (b *Backend) waitExit(ctx context.Context, st *vmState) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	select {
	case <-b.exitWatch(wctx, st):
		if ctx.Err() != nil && b.alive(st) {
			return ctx.Err()
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// kill sends SIGKILL to VM st's process group (the jailer's and firecracker's processes alike) and waits until
// the process is gone.
func (b *Backend) kill(ctx context.Context, st *vmState) error {
	if !b.alive(st) {
		return nil
	}
	if err := vmproc.KillGroup(st.PID); err != nil {
		return fmt.Errorf("kill firecracker: %w", err)
	}
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := b.waitExit(wctx, st); err != nil {
		return fmt.Errorf("firecracker process %d still there after SIGKILL: %w", st.PID, err)
	}
	return nil
}
