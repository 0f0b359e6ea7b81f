//go:build linux

package server

import (
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Reaper reaps the zombies a PID 1 inherits (orphaned grandchildren of commands) without ever taking the exit
// status of a command the server started and is waiting for with os/exec.
//
// How it avoids stealing: it never calls wait4(-1). On SIGCHLD it asks the kernel which child is a zombie with
// waitid(P_ALL, WNOHANG|WEXITED|WNOWAIT), which reports a zombie without reaping it, and reaps that pid with
// wait4(pid) only if it is not one of the server's commands. A command's pid is recorded under the same lock as
// the fork (start), so the reaper can never see a command's zombie before knowing it is ours. When the zombie it
// finds is ours, it stops: os/exec is about to reap it, and once cmd.Wait has returned (finished) the reaper
// looks again for the orphans behind it. (The other common approach, an RWMutex that keeps the reaper out while
// any command runs, leaves orphans unreaped for as long as a long command runs; forking a separate init process
// costs a process and a second binary role. This one is exact and cheap.)
//
// One Reaper serves the whole process; give it to every Server via Config.Reaper.
type Reaper struct {
	log *slog.Logger

	mu   sync.Mutex
	ours map[int]struct{}
	kick chan struct{}
}

// NewReaper returns a Reaper; call Run to start reaping.
func NewReaper(log *slog.Logger) *Reaper {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reaper{log: log, ours: make(map[int]struct{}), kick: make(chan struct{}, 1)}
}

// Run reaps orphans on every SIGCHLD until ctx ends.
func (r *Reaper) Run(ctx context.Context) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGCHLD)
	defer signal.Stop(sig)
	for {
		r.ReapOrphans()
		select {
		case <-ctx.Done():
			return nil
		case <-sig:
		case <-r.kick:
		}
	}
}

// ReapOrphans reaps every zombie child that is not a command being waited for, and returns how many it reaped.
func (r *Reaper) ReapOrphans() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	reaped := 0
	for {
		pid, err := peekZombie()
		if err != nil {
			if !errors.Is(err, unix.ECHILD) {
				r.log.Warn("waitid", "err", err)
			}
			return reaped
		}
		if pid == 0 {
			return reaped // children, but no zombie
		}
		if _, ok := r.ours[pid]; ok {
			return reaped // os/exec reaps it; finished() brings us back for the ones behind it
		}
		var ws unix.WaitStatus
		got, err := unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		if err != nil && !errors.Is(err, unix.EINTR) {
			r.log.Warn("wait4", "pid", pid, "err", err)
			return reaped
		}
		if got == pid {
			reaped++
			r.log.Debug("reaped orphan", "pid", pid, "status", ws)
		}
	}
}

func (r *Reaper) start(cmd *exec.Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := cmd.Start(); err != nil {
		return err
	}
	r.ours[cmd.Process.Pid] = struct{}{}
	return nil
}

func (r *Reaper) finished(pid int) {
	r.mu.Lock()
	delete(r.ours, pid)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// siPidOffset is where si_pid sits in a siginfo_t: after three ints, aligned to the union that follows, which
// holds pointers (so 16 on 64-bit Linux, 12 on 32-bit).
const siPidOffset = (12 + unsafe.Sizeof(uintptr(0)) - 1) &^ (unsafe.Sizeof(uintptr(0)) - 1)

// peekZombie returns the pid of a zombie child without reaping it, 0 if no child is a zombie, or ECHILD when
// there are no children. golang.org/x/sys's Siginfo does not expose si_pid, so it is read at its ABI offset.
func peekZombie() (int, error) {
	var info unix.Siginfo // zeroed: on WNOHANG with nothing to report the kernel leaves si_pid 0
	for {
		err := unix.Waitid(unix.P_ALL, 0, &info, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		raw := unsafe.Slice((*byte)(unsafe.Pointer(&info)), unsafe.Sizeof(info))
		return int(int32(binary.NativeEndian.Uint32(raw[siPidOffset:]))), nil
	}
}
