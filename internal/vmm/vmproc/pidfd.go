//go:build linux

package vmproc

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
)

// ErrPidfdUnsupported is returned by OpenPidfd when the kernel (before Linux 5.3) or a seccomp filter refuses
// pidfd_open(2).
var ErrPidfdUnsupported = errors.New("pidfd_open(2) is unavailable (it needs Linux 5.3 or later)")

// ErrGone is returned by OpenPidfd when the process named by a pid and start time does not run: it exited, or
// its pid now names another process.
var ErrGone = errors.New("process is gone")

// Pidfd refers to one process however its pid is reused later: what lets a worker wait for the exit of a VMM it
// did not start (one it adopted after a restart is not its child, so waitpid cannot), without polling /proc.
// Waiting on it does not reap the process: a child's own Wait still gets its status.
type Pidfd struct {
	f   *os.File
	pid int
}

// OpenPidfd opens a pidfd for the process with this pid and start time (StartTime). The pid is checked after
// the pidfd is open, and the process found still running after that check: so the pidfd is known to refer to the
// recorded process, never to a stranger that reused its pid. ErrGone when that process does not run,
// ErrPidfdUnsupported when pidfds are unavailable.
func OpenPidfd(pid int, start uint64) (*Pidfd, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, ErrGone)
	}
	fd, err := unix.PidfdOpen(pid, 0)
	switch {
	case errors.Is(err, unix.ESRCH):
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, ErrGone)
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM), errors.Is(err, unix.EINVAL):
		return nil, fmt.Errorf("%w: %w", ErrPidfdUnsupported, err)
	case err != nil:
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, err)
	}
	// The pidfd refers to whatever process had the pid when it was opened. If that process still runs after its
	// start time was read, the start time read was its own.
	s, gone, err := StartTime(pid)
	if err != nil || gone || s != start || fdExited(fd) {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, ErrGone)
	}
	// Non-blocking, the descriptor goes into the runtime's poller: a Wait parks its goroutine rather than a
	// thread.
	if err := unix.SetNonblock(fd, true); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("pidfd of process %d: %w", pid, err)
	}
	return &Pidfd{f: os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(pid)), pid: pid}, nil
}

// PID is the process's pid when the pidfd was opened.
func (p *Pidfd) PID() int { return p.pid }

// Exited reports whether the process has exited.
func (p *Pidfd) Exited() bool {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return false
	}
	var exited bool
	_ = rc.Control(func(fd uintptr) { exited = fdExited(int(fd)) })
	return exited
}

// Wait returns nil once the process has exited, or ctx's error when ctx ends first. One Wait at a time.
func (p *Pidfd) Wait(ctx context.Context) error {
	rc, err := p.f.SyscallConn()
	if err != nil {
		return err
	}
	if err := p.f.SetReadDeadline(time.Time{}); err != nil {
		// Not in the runtime's poller (it refused the descriptor): poll it here instead.
		return p.pollWait(ctx, rc)
	}
	// A deadline in the past wakes the parked Read when ctx ends.
	stop := context.AfterFunc(ctx, func() { _ = p.f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	// A pidfd becomes readable when its process exits; Read parks until it is and calls the function again.
	err = rc.Read(func(fd uintptr) bool { return fdExited(int(fd)) })
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// pollWait waits in poll(2) with a short timeout, for a descriptor the runtime's poller does not take.
func (p *Pidfd) pollWait(ctx context.Context, rc interface {
	Control(func(uintptr)) error
}) error {
	for {
		var exited bool
		if err := rc.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			n, err := unix.Poll(fds, 100)
			exited = err == nil && n > 0 && fds[0].Revents != 0
		}); err != nil {
			return err
		}
		if exited {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
	}
}

// Close releases the pidfd (and wakes a Wait, which returns an error).
func (p *Pidfd) Close() error { return p.f.Close() }

// fdExited polls pidfd fd without blocking: readable means the process has exited.
func fdExited(fd int) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0 && fds[0].Revents&(unix.POLLIN|unix.POLLHUP|unix.POLLERR) != 0
	}
}
