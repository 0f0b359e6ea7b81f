//go:build linux

package vmproc

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Process is a VMM process this worker started. Wait runs in a goroutine, so the child is reaped at once and its
// exit status is known.
type Process struct {
	PID  int
	done chan struct{}
	// state and err are valid once done is closed.
	state *os.ProcessState
	err   error
}

// StartOptions says how Start runs a VMM.
type StartOptions struct {
	// DieWithParent gives the VMM SIGKILL as its parent-death signal: it dies with this process (tests, and
	// operators who want no VM to outlive its worker). By default a VMM outlives its worker, which adopts it again
	// after a restart.
	DieWithParent bool
}

// Start starts cmd detached from the worker: in a session of its own (no signal to the worker's process group or
// terminal reaches it, and KillGroup ends the whole group it leads), and by default with no parent-death signal,
// so that a worker restart, crash or upgrade leaves its VMs running. cmd's standard streams must be files (or
// nil), never pipes: a pipe to a dead worker would stop the VMM at its next write.
//
// With DieWithParent, Pdeathsig fires when the thread that forked exits, and Go ends a thread whenever a goroutine
// that locked it exits locked (the network manager's namespace switching does, when it cannot switch back): so
// such VMMs are forked from one thread kept for that purpose, which lives as long as the process.
func Start(cmd *exec.Cmd, opts StartOptions) (*Process, error) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	// setsid makes the child the leader of a new session and process group; setpgid after it would fail.
	cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setpgid = true, false
	var err error
	if opts.DieWithParent {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
		err = spawn(cmd)
	} else {
		cmd.SysProcAttr.Pdeathsig = 0
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", cmd.Path, err)
	}
	p := &Process{PID: cmd.Process.Pid, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		p.state = cmd.ProcessState
		close(p.done)
	}()
	return p, nil
}

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitDetail describes how the process ended ("<what> exit status 1", "<what> signal: killed"); call it only
// once Exited.
func (p *Process) ExitDetail(what string) string {
	if p.state == nil {
		return fmt.Sprintf("%s exited: %v", what, p.err)
	}
	return what + " " + p.state.String()
}

// StartTime returns the start time of pid (clock ticks since boot, field 22 of /proc/<pid>/stat) and whether the
// process is a zombie or dead. Together with the pid it names a process uniquely across pid reuse.
func StartTime(pid int) (start uint64, gone bool, err error) {
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

// Cmdline returns the arguments of pid.
func Cmdline(pid int) ([]string, error) {
	data, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), nil
}

// HasArgPair reports whether args hold flag immediately followed by a value that satisfies match.
func HasArgPair(args []string, flag string, match func(string) bool) bool {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag && match(args[i+1]) {
			return true
		}
	}
	return false
}

// Owned reports whether pid is still the process that was recorded with start time start and whose arguments
// satisfy match (which names the VM): a reused pid is never taken for it.
func Owned(pid int, start uint64, match func(args []string) bool) bool {
	if pid <= 0 {
		return false
	}
	s, gone, err := StartTime(pid)
	if err != nil || gone || s != start {
		return false
	}
	args, err := Cmdline(pid)
	return err == nil && match(args)
}

// Found is a process found by Scan.
type Found struct {
	PID   int
	Start uint64
	Args  []string
}

// Scan lists the live processes whose arguments satisfy match: how a restarted worker finds VMM processes that
// its state files do not account for.
func Scan(match func(args []string) bool) ([]Found, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("scan processes: %w", err)
	}
	var out []Found
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		args, err := Cmdline(pid)
		if err != nil || !match(args) {
			continue
		}
		start, gone, err := StartTime(pid)
		if err != nil || gone {
			continue
		}
		out = append(out, Found{PID: pid, Start: start, Args: args})
	}
	return out, nil
}

// WaitGone waits until alive reports false, polling (a process adopted after a restart is not our child, so
// there is no wait status to block on), or until ctx ends.
func WaitGone(ctx context.Context, alive func() bool) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for alive() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	return nil
}

// KillGroup sends SIGKILL to the process group led by pid (every process the VMM started) and to pid itself, in
// case it left its group.
func KillGroup(pid int) error {
	if pid <= 0 {
		return nil
	}
	if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process group %d: %w", pid, err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process %d: %w", pid, err)
	}
	return nil
}

// spawner is the goroutine, locked to its thread for good, that forks the VMMs that die with their parent (see
// Start).
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func spawn(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread must not end while a VMM it forked runs
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	done := make(chan error, 1)
	spawner.reqs <- spawnReq{cmd: cmd, done: done}
	return <-done
}
