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

// launch starts firecracker (through the jailer when configured) for st, with its serial console on console.
// It runs in its own process group (a signal to the worker's group does not reach it, and DeleteVM kills the
// whole group) and gets SIGKILL when the worker dies (Pdeathsig), so no VM outlives its worker unnoticed.
// Pdeathsig fires when the thread that forked exits; Go only ends threads whose goroutine locked them and exited
// locked, which never happens on this path.
func (b *Backend) launch(st *vmState, console *os.File) (*vmproc.Process, error) {
	var cmd *exec.Cmd
	if b.cfg.JailerBin == "" {
		cmd = exec.Command(b.cfg.FirecrackerBin, "--api-sock", st.APISock, "--id", st.ID)
	} else {
		cmd = exec.Command(b.cfg.JailerBin, b.jailerArgs(st)...)
	}
	cmd.Stdout = console
	cmd.Stderr = console
	return vmproc.Start(cmd)
}

// isOurs reports whether pid is still the firecracker process of VM st: same start time and a command line that
// names the VM (firecracker and the jailer both get --id <id>), so a reused pid is never taken for it.
func isOurs(st *vmState) bool {
	return vmproc.Owned(st.PID, st.PIDStart, func(args []string) bool {
		// The jailer execs firecracker with "--id <id>" (src/jailer env.rs); its docs write --id=<id>.
		return vmproc.HasArgPair(args, "--id", func(v string) bool { return v == st.ID }) ||
			slices.Contains(args, "--id="+st.ID)
	})
}

// alive reports whether VM st's firecracker process runs.
func (b *Backend) alive(st *vmState) bool {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.PID == st.PID && p.Exited() {
		return false
	}
	return isOurs(st)
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
