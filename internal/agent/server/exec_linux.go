//go:build linux

package server

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// Base environment of every command; the request's env is laid over it.
const (
	basePath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	baseHome = "/root"
)

// chunkSize is how much output is read from a pipe at a time: a Linux pipe's default capacity, so a command that
// writes fast fills one DATA frame per read.
const chunkSize = 64 << 10

// Exit codes of a command that could not be started, as a shell reports them.
const (
	exitNotFound      = 127
	exitCannotExecute = 126
)

// starter starts commands; the Reaper is one, so that it never reaps a command's exit status itself.
type starter interface {
	start(cmd *exec.Cmd) error
	// finished is called once cmd.Wait has returned for the process with this pid.
	finished(pid int)
}

type plainStarter struct{}

func (plainStarter) start(cmd *exec.Cmd) error { return cmd.Start() }
func (plainStarter) finished(int)              {}

// exec runs one command for stream st. Failures to start the command are results (126/127), not errors; an
// error is returned only for a bad request or a failure of the agent itself.
func (c *conn) exec(st *stream, p protocol.ExecParams) (*protocol.ExecResult, *protocol.Error) {
	if len(p.Argv) == 0 || p.Argv[0] == "" {
		return nil, badRequest("argv is empty")
	}
	for _, a := range p.Argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, badRequest("argv contains a NUL byte")
		}
	}
	if p.TimeoutNS < 0 {
		return nil, badRequest("timeout_ns is negative")
	}
	env, pathEnv, err := buildEnv(p.Env)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	dir := p.WorkingDir
	if dir == "" {
		dir = "/"
	}
	if !filepath.IsAbs(dir) || strings.IndexByte(dir, 0) >= 0 {
		return nil, badRequest("working_dir %q is not an absolute path", dir)
	}

	started := time.Now()
	notStarted := func(code int, reason string) (*protocol.ExecResult, *protocol.Error) {
		c.log.Debug("command not started", "argv0", p.Argv[0], "exit_code", code, "reason", reason)
		msg := []byte("aetherium-agent: " + reason + "\n")
		// Send errors mean the client is gone; it will not read the response either.
		_ = st.sendData([]byte{byte(protocol.ChannelStderr)}, msg)
		_ = st.end(protocol.ChannelStdout)
		_ = st.end(protocol.ChannelStderr)
		return &protocol.ExecResult{ExitCode: code, StartedAt: started, DurationNS: int64(time.Since(started))}, nil
	}
	if fi, err := os.Stat(dir); err != nil {
		return notStarted(exitNotFound, fmt.Sprintf("cannot change to working directory %s: %s", dir, errText(err)))
	} else if !fi.IsDir() {
		return notStarted(exitNotFound, fmt.Sprintf("cannot change to working directory %s: not a directory", dir))
	}
	prog, code, reason := lookPath(p.Argv[0], pathEnv, dir)
	if code != 0 {
		return notStarted(code, reason)
	}

	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, internalError("stdout pipe: %v", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		_ = outR.Close()
		_ = outW.Close()
		return nil, internalError("stderr pipe: %v", err)
	}
	defer outR.Close()
	defer errR.Close()
	cmd := &exec.Cmd{
		Path:   prog,
		Args:   p.Argv,
		Env:    env,
		Dir:    dir,
		Stdout: outW,
		Stderr: errW,
		// Its own process group, so that a timeout or a cancel kills everything it started, not just itself.
		SysProcAttr: &syscall.SysProcAttr{Setpgid: true},
	}
	err = c.s.starter.start(cmd)
	// The child has its copies; ours must go, or the pipes never reach EOF.
	_ = outW.Close()
	_ = errW.Close()
	if err != nil {
		return notStarted(startFailureCode(err), fmt.Sprintf("%s: %s", p.Argv[0], errText(err)))
	}
	pid := cmd.Process.Pid // == its process group id (Setpgid with Pgid 0)
	killGroup := func() {
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			c.log.Warn("kill process group", "pgid", pid, "err", err)
		}
	}

	waitDone := make(chan error, 1)
	go func() {
		err := cmd.Wait()
		c.s.starter.finished(pid)
		waitDone <- err
	}()
	var pumps sync.WaitGroup
	for _, pp := range []struct {
		f  *os.File
		ch protocol.Channel
	}{{outR, protocol.ChannelStdout}, {errR, protocol.ChannelStderr}} {
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			if err := st.pump(pp.f, pp.ch); err != nil && st.ctx.Err() == nil {
				c.log.Debug("output stream ended early", "stream", st.id, "channel", pp.ch, "err", err)
			}
		}()
	}
	pumpsDone := make(chan struct{})
	go func() {
		pumps.Wait()
		close(pumpsDone)
	}()

	var timeout <-chan time.Time
	if p.TimeoutNS > 0 {
		t := time.NewTimer(time.Duration(p.TimeoutNS))
		defer t.Stop()
		timeout = t.C
	}
	var (
		waitErr  error
		exited   bool
		timedOut bool
		canceled bool // killed because the request or the connection ended
		duration time.Duration
		ctxDone  = st.ctx.Done()
	)
	// Stop waiting on the pipes at d: for background processes that keep them open after the main process
	// exits, or for output nobody will read any more. What is already in a pipe is still read (see pump).
	stopReading := func(d time.Time) {
		for _, f := range []*os.File{outR, errR} {
			if err := f.SetReadDeadline(d); err != nil {
				c.log.Warn("set pipe deadline", "err", err)
			}
		}
	}
	for !exited || pumpsDone != nil {
		select {
		case waitErr = <-waitDone:
			exited = true
			duration = time.Since(started)
			if ctxDone != nil { // not cancelled already (that set a shorter deadline)
				stopReading(time.Now().Add(c.s.cfg.PipeGrace))
			}
		case <-pumpsDone:
			pumpsDone = nil
		case <-timeout:
			timeout = nil
			// Only a timeout that cut the main process short is reported; after it exited, the kill merely
			// cleans up background processes still holding the pipes.
			timedOut = !exited
			c.log.Debug("command timed out, killing its process group", "pgid", pid)
			killGroup()
		case <-ctxDone:
			ctxDone = nil
			canceled = !exited
			c.log.Debug("request cancelled or connection lost, killing the process group", "pgid", pid)
			killGroup()
			stopReading(time.Now())
		}
	}

	if canceled && c.s.ctx.Err() != nil {
		// Killed because the agent is going away: an infrastructure failure, not the command's result.
		return nil, &protocol.Error{Code: protocol.CodeShuttingDown, Message: "agent shut down; the command was killed"}
	}
	ps := cmd.ProcessState
	if ps == nil {
		return nil, internalError("wait for pid %d: %v", pid, waitErr)
	}
	res := &protocol.ExecResult{StartedAt: started, DurationNS: int64(duration), TimedOut: timedOut}
	ws, ok := ps.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		res.ExitCode = 128 + int(ws.Signal())
		res.Signal = unix.SignalName(ws.Signal())
		if res.Signal == "" {
			res.Signal = ws.Signal().String()
		}
	default:
		res.ExitCode = ps.ExitCode()
	}
	c.log.Debug("command finished", "argv0", p.Argv[0], "pid", pid, "exit_code", res.ExitCode,
		"signal", res.Signal, "timed_out", res.TimedOut, "duration", duration)
	return res, nil
}

// pump copies one pipe to the stream until EOF, then sends END. At most one chunk is held here at a time and
// sendData waits for credit, so a command whose output is not consumed blocks on its pipe instead of filling the
// agent's memory.
//
// When the exec loop's read deadline passes (the grace after the main process exited), what is still in the pipe
// is drained without waiting, and the channel ends even if a background process still holds the pipe open.
func (st *stream) pump(f *os.File, ch protocol.Channel) error {
	buf := make([]byte, 1+chunkSize)
	buf[0] = byte(ch)
	for {
		n, err := f.Read(buf[1:])
		if n > 0 {
			if werr := st.sendData(buf[:1], buf[1:1+n]); werr != nil {
				return werr
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && st.ctx.Err() == nil {
			if derr := st.drain(f, buf); derr != nil {
				return derr
			}
		}
		if endErr := st.end(ch); endErr != nil {
			return endErr
		}
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) {
			return nil
		}
		return err
	}
}

// drain sends what a pipe holds now, without waiting for more. A Go read past its deadline fails before
// looking at the pipe, so the deadline is cleared and the pipe (non-blocking, as the poller sets it) is read
// directly until it is empty. It reads at most the pipe's capacity, which is all it could hold when the grace
// ended, so a background process that keeps writing cannot keep it going forever.
func (st *stream) drain(f *os.File, buf []byte) error {
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		return nil
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil
	}
	limit := chunkSize
	_ = rc.Control(func(fd uintptr) {
		if size, err := unix.FcntlInt(fd, unix.F_GETPIPE_SZ, 0); err == nil && size > 0 {
			limit = size
		}
	})
	for limit > 0 {
		var (
			n    int
			rerr error
		)
		err := rc.Read(func(fd uintptr) bool {
			n, rerr = unix.Read(int(fd), buf[1:1+min(chunkSize, limit)])
			return true // never wait for the pipe to become readable
		})
		if err != nil || rerr != nil || n <= 0 {
			return nil // empty (EAGAIN), EOF, or cancelled meanwhile
		}
		limit -= n
		if err := st.sendData(buf[:1], buf[1:1+n]); err != nil {
			return err
		}
	}
	return nil
}

// buildEnv lays the request's env over the base environment and returns it with the resulting PATH.
func buildEnv(extra map[string]string) ([]string, string, error) {
	m := map[string]string{"PATH": basePath, "HOME": baseHome}
	for k, v := range extra {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, "", fmt.Errorf("invalid environment variable name %q", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, "", fmt.Errorf("environment variable %s contains a NUL byte", k)
		}
		m[k] = v
	}
	env := make([]string, 0, len(m))
	for k, v := range m {
		env = append(env, k+"="+v)
	}
	slices.Sort(env) // deterministic, which makes commands reproducible
	return env, m["PATH"], nil
}

// lookPath finds file as a shell would, in the command's PATH (not the agent's) and relative to its working
// directory. It returns the path, or a non-zero exit code and the reason.
func lookPath(file, pathEnv, dir string) (string, int, string) {
	resolve := func(p string) string {
		if filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if strings.Contains(file, "/") {
		p := resolve(file)
		switch err := checkExecutable(p); {
		case err == nil:
			return p, 0, ""
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR):
			return "", exitNotFound, fmt.Sprintf("%s: no such file or directory", file)
		default:
			return "", exitCannotExecute, fmt.Sprintf("%s: %s", file, errText(err))
		}
	}
	denied := ""
	for _, d := range filepath.SplitList(pathEnv) {
		if d == "" {
			d = "." // an empty PATH entry means the working directory
		}
		p := resolve(filepath.Join(d, file))
		err := checkExecutable(p)
		if err == nil {
			return p, 0, ""
		}
		// Like a shell: keep looking after a file that is not executable, and report it if nothing better is found.
		if errors.Is(err, fs.ErrPermission) && denied == "" {
			denied = p
		}
	}
	if denied != "" {
		return "", exitCannotExecute, fmt.Sprintf("%s: permission denied", denied)
	}
	return "", exitNotFound, fmt.Sprintf("%s: command not found", file)
}

var errIsDir = errors.New("is a directory")

func checkExecutable(p string) error {
	fi, err := os.Stat(p)
	if err != nil {
		return err
	}
	if fi.IsDir() {
		return errIsDir
	}
	// Even root cannot execute a file without any execute bit.
	if fi.Mode()&0o111 == 0 {
		return fs.ErrPermission
	}
	return nil
}

// startFailureCode maps an exec failure to a shell's exit code: 126 when the file exists but cannot be run,
// 127 otherwise.
func startFailureCode(err error) int {
	for _, e := range []error{syscall.EACCES, syscall.EPERM, syscall.ENOEXEC, syscall.ETXTBSY, syscall.EISDIR} {
		if errors.Is(err, e) {
			return exitCannotExecute
		}
	}
	return exitNotFound
}

// errText is the operating system's reason without Go's "op path:" prefix, which the caller already names.
func errText(err error) string {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func internalError(format string, args ...any) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeInternal, Message: fmt.Sprintf(format, args...)}
}
