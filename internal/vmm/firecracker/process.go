//go:build linux

package firecracker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a firecracker process this backend started: Wait runs in a goroutine so that it is reaped at once
// and its exit status is known.
type process struct {
	pid   int
	done  chan struct{}
	state *os.ProcessState // valid once done is closed
	err   error
}

// launch starts firecracker (through the jailer when configured) for st, with its serial console on console.
// It runs in its own process group (a signal to the worker's group does not reach it, and DeleteVM kills the
// whole group) and gets SIGKILL when the worker dies (Pdeathsig), so no VM outlives its worker unnoticed.
// Pdeathsig fires when the thread that forked exits; Go only ends threads whose goroutine locked them and exited
// locked, which never happens on this path.
func (b *Backend) launch(st *vmState, console *os.File) (*process, error) {
	var cmd *exec.Cmd
	if b.cfg.JailerBin == "" {
		cmd = exec.Command(b.cfg.FirecrackerBin, "--api-sock", st.APISock, "--id", st.ID)
	} else {
		cmd = exec.Command(b.cfg.JailerBin,
			"--id", st.ID,
			"--exec-file", b.cfg.FirecrackerBin,
			"--uid", strconv.Itoa(b.cfg.JailerUID),
			"--gid", strconv.Itoa(b.cfg.JailerGID),
			"--chroot-base-dir", b.cfg.JailerChrootBase,
			"--cgroup-version", strconv.Itoa(b.cfg.JailerCgroupVersion),
			"--", "--api-sock", "/"+apiSockName)
	}
	cmd.Stdout = console
	cmd.Stderr = console
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &process{pid: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitDetail describes how a child ended.
func (p *process) exitDetail() string {
	if p.state == nil {
		return fmt.Sprintf("firecracker exited: %v", p.err)
	}
	return "firecracker " + p.state.String() // "exit status 1", "signal: killed"
}

// procStat returns the start time (clock ticks since boot) of pid and whether it is a zombie or dead.
func procStat(pid int) (start uint64, gone bool, err error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, true, err
	}
	// The command name (field 2) is in parentheses and may hold anything: parse after the last ')'.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, true, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state), f[19] is field 22 (starttime).
	if len(f) < 20 {
		return 0, true, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	start, err = strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return 0, true, fmt.Errorf("parse /proc/%d/stat: %w", pid, err)
	}
	return start, f[0] == "Z" || f[0] == "X", nil
}

// isOurs reports whether pid is still the firecracker process of VM st: same start time and a command line that
// names the VM (firecracker and the jailer both get --id <id>), so a reused pid is never taken for it.
func isOurs(st *vmState) bool {
	if st.PID <= 0 {
		return false
	}
	start, gone, err := procStat(st.PID)
	if err != nil || gone || start != st.PIDStart {
		return false
	}
	cmdline, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(st.PID), "cmdline"))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--id" && args[i+1] == st.ID {
			return true
		}
	}
	return false
}

// alive reports whether VM st's firecracker process runs.
func (b *Backend) alive(st *vmState) bool {
	b.mu.Lock()
	p := b.procs[st.ID]
	b.mu.Unlock()
	if p != nil && p.pid == st.PID && p.exited() {
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
	if p != nil && p.pid == st.PID {
		return p.done
	}
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for isOurs(st) {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
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
	// The process leads its own group (Setpgid), so -pid is the group.
	if err := syscall.Kill(-st.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill firecracker process group %d: %w", st.PID, err)
	}
	_ = syscall.Kill(st.PID, syscall.SIGKILL) // in case it left its group
	wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if err := b.waitExit(wctx, st); err != nil {
		return fmt.Errorf("firecracker process %d still there after SIGKILL: %w", st.PID, err)
	}
	return nil
}
