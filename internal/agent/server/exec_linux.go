//go:build linux

package server

import (
	"encoding/json"
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

	"github.com/creack/pty"
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

// shellPath runs ExecParams.Shell.
const shellPath = "/bin/sh"

// command is a validated request, ready to start.
type command struct {
	argv    []string
	env     []string
	pathEnv string
	dir     string
	cred    *credential // nil: the agent's own user
	pty     *protocol.PtyParams
	stdin   bool
	timeout time.Duration
	id      string
	keep    bool
}

// prepare validates p and resolves everything that does not depend on the command running: an error here is a
// bad request, never a result.
func (s *Server) prepare(p protocol.ExecParams) (*command, *protocol.Error) {
	argv := p.Argv
	switch {
	case len(p.Argv) > 0 && p.Shell != "":
		return nil, badRequest("argv and shell are mutually exclusive")
	case p.Shell != "":
		if strings.IndexByte(p.Shell, 0) >= 0 {
			return nil, badRequest("shell contains a NUL byte")
		}
		argv = []string{shellPath, "-c", p.Shell}
	case len(p.Argv) == 0 || p.Argv[0] == "":
		return nil, badRequest("argv is empty")
	}
	for _, a := range argv {
		if strings.IndexByte(a, 0) >= 0 {
			return nil, badRequest("argv contains a NUL byte")
		}
	}
	if p.TimeoutNS < 0 {
		return nil, badRequest("timeout_ns is negative")
	}
	if p.ID != "" && !validProcessID(p.ID) {
		return nil, badRequest("id %q: want 1 to 128 letters, digits, '.', '_' or '-'", p.ID)
	}
	cmd := &command{argv: argv, stdin: p.Stdin, timeout: time.Duration(p.TimeoutNS), id: p.ID, keep: p.KeepRunning}

	overlay := map[string]string{}
	if p.User != "" {
		cred, err := resolveUser(p.User, s.cfg.PasswdFile, s.cfg.GroupFile)
		if errors.Is(err, errUnknownUser) {
			return nil, &protocol.Error{Code: protocol.CodeUnknownUser, Message: err.Error()}
		}
		if err != nil {
			return nil, badRequest("%v", err)
		}
		cmd.cred = cred
		overlay["HOME"] = cred.home
		if cred.name != "" {
			overlay["USER"] = cred.name
			overlay["LOGNAME"] = cred.name
		}
	}
	var forced map[string]string
	if p.Pty != nil {
		if p.Pty.Rows == 0 || p.Pty.Cols == 0 {
			return nil, badRequest("pty size %dx%d: rows and cols must be positive", p.Pty.Rows, p.Pty.Cols)
		}
		if strings.ContainsAny(p.Pty.Term, "\x00=") {
			return nil, badRequest("pty term %q is invalid", p.Pty.Term)
		}
		cmd.pty = p.Pty
		overlay["TERM"] = "xterm-256color"
		if p.Pty.Term != "" {
			forced = map[string]string{"TERM": p.Pty.Term}
		}
	}
	env, pathEnv, err := buildEnv(overlay, p.Env, forced)
	if err != nil {
		return nil, badRequest("%v", err)
	}
	cmd.env, cmd.pathEnv = env, pathEnv
	cmd.dir = p.WorkingDir
	if cmd.dir == "" {
		cmd.dir = "/"
	}
	if !filepath.IsAbs(cmd.dir) || strings.IndexByte(cmd.dir, 0) >= 0 {
		return nil, badRequest("working_dir %q is not an absolute path", cmd.dir)
	}
	return cmd, nil
}

// execMethod serves "exec". The process leaves the table once its result is delivered; a kept-running one whose
// caller left (even just as it ended) stays, for whoever looks for it.
func (c *conn) execMethod(st *stream, raw json.RawMessage) (any, *protocol.Error, func(bool)) {
	var p protocol.ExecParams
	if err := protocol.DecodeParams(raw, &p); err != nil {
		return nil, badRequest("exec params: %v", err), nil
	}
	res, perr, pr := c.exec(st, p)
	if pr == nil {
		return res, perr, nil
	}
	return res, perr, func(delivered bool) {
		if delivered || !pr.kept || c.s.ctx.Err() != nil {
			c.s.procs.remove(pr)
		} else {
			pr.detach(st)
		}
	}
}

// exec runs one command for stream st, streaming its output while it runs. Failures to start the command are
// results (126/127), not errors; an error is returned only for a bad request or a failure of the agent itself.
func (c *conn) exec(st *stream, p protocol.ExecParams) (*protocol.ExecResult, *protocol.Error, *proc) {
	cmd, perr := c.s.prepare(p)
	if perr != nil {
		return nil, perr, nil
	}
	pr, perr := c.s.launch(cmd, st)
	if perr != nil {
		return nil, perr, nil
	}
	select {
	case <-pr.done:
	case <-st.ctx.Done():
		if cmd.keep && c.s.ctx.Err() == nil {
			// The caller is gone or gave up watching; the command goes on, findable under its id.
			pr.detach(st)
			c.log.Debug("caller went away, process keeps running", "id", pr.id, "pid", pr.pidNow())
			return nil, &protocol.Error{Code: protocol.CodeInternal,
				Message: fmt.Sprintf("request cancelled; process %s keeps running", pr.id)}, pr
		}
		pr.kill()
		<-pr.done
	}
	res, perr := pr.outcome()
	return res, perr, pr
}

// processStart starts a background process: its output goes to rings, and the answer comes at once.
func (c *conn) processStart(_ *stream, p protocol.ExecParams) (*protocol.ProcessInfo, *protocol.Error) {
	if p.Stdin {
		return nil, badRequest("a background process has no stdin")
	}
	cmd, perr := c.s.prepare(p)
	if perr != nil {
		return nil, perr
	}
	cmd.keep = true
	pr, perr := c.s.launch(cmd, nil)
	if perr != nil {
		return nil, perr
	}
	info := pr.info()
	return &info, nil
}

// launch registers and starts cmd. With st it is a streamed exec (its output goes to st, and to rings too when
// it may outlive st); without, a background process. A command that cannot be started still makes a process,
// one that ended at once with 126 or 127 and the reason on stderr.
func (s *Server) launch(cmd *command, st *stream) (*proc, *protocol.Error) {
	pr := newProc(s, cmd, st)
	if perr := s.procs.add(pr); perr != nil {
		return nil, perr
	}
	if fi, err := os.Stat(cmd.dir); err != nil {
		pr.notStarted(exitNotFound, fmt.Sprintf("cannot change to working directory %s: %s", cmd.dir, errText(err)))
		return pr, nil
	} else if !fi.IsDir() {
		pr.notStarted(exitNotFound, fmt.Sprintf("cannot change to working directory %s: not a directory", cmd.dir))
		return pr, nil
	}
	prog, code, reason := lookPath(cmd.argv[0], cmd.pathEnv, cmd.dir)
	if code != 0 {
		pr.notStarted(code, reason)
		return pr, nil
	}
	if perr := pr.start(prog); perr != nil {
		s.procs.remove(pr)
		return nil, perr
	}
	return pr, nil
}

// output is one stream of a process's output: where the agent reads it, and its channel.
type output struct {
	f  *os.File
	ch protocol.Channel
}

// start starts the command and its supervisor. Errors are the agent's own (no pipe, no pty); a command that
// fails to exec ends the process with 126/127 instead.
func (pr *proc) start(prog string) *protocol.Error {
	cmd := pr.cmd
	c := &exec.Cmd{Path: prog, Args: cmd.argv, Env: cmd.env, Dir: cmd.dir}
	attr := &syscall.SysProcAttr{}
	var (
		outs      []output
		childEnds []*os.File // the child's copies: ours are closed once it has started
		stdinW    *os.File
	)
	closeAll := func() {
		for _, o := range outs {
			_ = o.f.Close()
		}
		for _, f := range childEnds {
			_ = f.Close()
		}
		if stdinW != nil {
			_ = stdinW.Close()
		}
	}
	if cmd.pty != nil {
		master, tty, err := pty.Open()
		if err != nil {
			return internalError("open pty: %v", err)
		}
		outs = append(outs, output{master, protocol.ChannelStdout})
		childEnds = append(childEnds, tty)
		if err := pty.Setsize(master, &pty.Winsize{Rows: cmd.pty.Rows, Cols: cmd.pty.Cols}); err != nil {
			closeAll()
			return internalError("set pty size: %v", err)
		}
		c.Stdin, c.Stdout, c.Stderr = tty, tty, tty
		// A session of its own with the pty as controlling terminal (fd 0 in the child): job control, ^C and
		// SIGHUP work as in a terminal. The session leader leads its process group too.
		attr.Setsid, attr.Setctty, attr.Ctty = true, true, 0
		if cmd.stdin {
			stdinW = master // input is typed into the terminal
		}
	} else {
		for _, ch := range []protocol.Channel{protocol.ChannelStdout, protocol.ChannelStderr} {
			r, w, err := os.Pipe()
			if err != nil {
				closeAll()
				return internalError("%s pipe: %v", ch, err)
			}
			outs = append(outs, output{r, ch})
			childEnds = append(childEnds, w)
		}
		c.Stdout, c.Stderr = childEnds[0], childEnds[1]
		if cmd.stdin {
			r, w, err := os.Pipe()
			if err != nil {
				closeAll()
				return internalError("stdin pipe: %v", err)
			}
			childEnds = append(childEnds, r)
			stdinW = w
			c.Stdin = r
		}
		// Its own process group, so that a timeout or a cancel kills everything it started, not just itself.
		attr.Setpgid = true
	}
	if cmd.cred != nil {
		attr.Credential = &syscall.Credential{Uid: cmd.cred.uid, Gid: cmd.cred.gid, Groups: cmd.cred.groups}
	}
	c.SysProcAttr = attr

	resetPeakRSS()
	err := pr.s.starter.start(c)
	// The child has its copies; ours must go, or the pipes never reach EOF.
	for _, f := range childEnds {
		_ = f.Close()
	}
	childEnds = nil
	if err != nil {
		closeAll()
		pr.notStarted(startFailureCode(err), fmt.Sprintf("%s: %s", cmd.argv[0], errText(err)))
		return nil
	}
	pr.mu.Lock()
	pr.pid = c.Process.Pid // == its process group id (Setpgid, or Setsid)
	if cmd.pty != nil {
		pr.master = outs[0].f
	}
	if cmd.pty == nil {
		pr.stdinW = stdinW // a terminal's master is not closed for EOF: it carries the output too
	}
	pr.mu.Unlock()

	if st := pr.stream(); st != nil && cmd.stdin {
		go pr.feed(st, stdinW, cmd.pty != nil)
	}
	pr.s.procs.wg.Add(1)
	go pr.supervise(c, outs)
	return nil
}

// resetPeakRSS lowers the agent's own peak-RSS mark to its current RSS. Go starts commands with
// clone(CLONE_VM|CLONE_VFORK), and at execve the kernel folds the high-water mark of the memory the child shared
// (the agent's) into the child's maxrss: without the reset, every command's PeakMemoryKB would be at least the
// agent's highest RSS ever (after a large upload, say). With it the floor is the agent's current RSS.
func resetPeakRSS() {
	_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // best effort: an old kernel keeps the higher floor
}

// feed copies the stream's input to the command's stdin (or its terminal) until the client's END, the end of
// the stream, or the command no longer reading.
func (pr *proc) feed(st *stream, w *os.File, isPty bool) {
	for {
		data, err := st.readIn()
		if err != nil {
			// END, or the stream is over (the caller left a kept-running command): either way no more input.
			// A terminal has no EOF to pass on; the command sees its session end instead.
			if !isPty {
				pr.closeStdin()
			}
			return
		}
		if _, err := w.Write(data); err != nil {
			return // the command closed its stdin or exited
		}
	}
}

// supervise waits for the command, streams its output, enforces its timeout and kills it when asked, then
// records how it ended.
func (pr *proc) supervise(c *exec.Cmd, outs []output) {
	defer pr.s.procs.wg.Done()
	s := pr.s
	pid := c.Process.Pid
	killGroup := func() {
		if err := syscall.Kill(-pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			s.log.Warn("kill process group", "pgid", pid, "err", err)
		}
	}

	waitDone := make(chan error, 1)
	go func() {
		err := c.Wait()
		s.starter.finished(pid)
		waitDone <- err
	}()
	var pumps sync.WaitGroup
	for _, o := range outs {
		pumps.Add(1)
		go func() {
			defer pumps.Done()
			if err := pr.pump(o.f, o.ch); err != nil && !pr.stopNow.Load() {
				s.log.Debug("output stream ended early", "id", pr.id, "channel", o.ch, "err", err)
			}
		}()
	}
	pumpsDone := make(chan struct{})
	go func() {
		pumps.Wait()
		close(pumpsDone)
	}()

	var timeout <-chan time.Time
	if pr.cmd.timeout > 0 {
		t := time.NewTimer(pr.cmd.timeout)
		defer t.Stop()
		timeout = t.C
	}
	var (
		waitErr  error
		exited   bool
		timedOut bool
		canceled bool // killed because the caller or the agent asked, not by the timeout
		shutdown bool
		duration time.Duration
		killc    = pr.killc
		srvDone  = s.ctx.Done()
	)
	// Stop waiting on the output at d: for background processes that keep the pipes open after the main process
	// exits, or for output nobody will read any more. What is already in a pipe is still read (see pump).
	stopReading := func(d time.Time) {
		for _, o := range outs {
			if err := o.f.SetReadDeadline(d); err != nil {
				s.log.Warn("set output deadline", "err", err)
			}
		}
	}
	stopAtOnce := func() {
		canceled = canceled || !exited
		killGroup()
		pr.stopNow.Store(true)
		stopReading(time.Now())
	}
	for !exited || pumpsDone != nil {
		select {
		case waitErr = <-waitDone:
			exited = true
			duration = time.Since(pr.startedAt)
			pr.markExited()
			if !pr.stopNow.Load() { // not killed already (that set a shorter deadline)
				stopReading(time.Now().Add(s.cfg.PipeGrace))
			}
		case <-pumpsDone:
			pumpsDone = nil
		case <-timeout:
			timeout = nil
			// Only a timeout that cut the main process short is reported; after it exited, the kill merely
			// cleans up background processes still holding the pipes.
			timedOut = !exited
			s.log.Debug("command timed out, killing its process group", "id", pr.id, "pgid", pid)
			killGroup()
		case <-killc:
			killc = nil
			s.log.Debug("request cancelled or connection lost, killing the process group", "id", pr.id, "pgid", pid)
			stopAtOnce()
		case <-srvDone:
			srvDone = nil
			shutdown = shutdown || !exited
			stopAtOnce()
		}
	}
	pr.closeStdin()
	pr.mu.Lock()
	for _, o := range outs {
		_ = o.f.Close()
	}
	pr.master = nil
	pr.mu.Unlock()

	ps := c.ProcessState
	if ps == nil {
		pr.finish(nil, internalError("wait for pid %d: %v", pid, waitErr))
		return
	}
	res := &protocol.ExecResult{StartedAt: pr.startedAt, DurationNS: int64(duration), TimedOut: timedOut, ID: pr.id}
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
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok && ru != nil {
		res.PeakMemoryKB = ru.Maxrss // kilobytes on Linux
	}
	var perr *protocol.Error
	if canceled && shutdown {
		// Killed because the agent is going away: an infrastructure failure, not the command's result.
		perr = &protocol.Error{Code: protocol.CodeShuttingDown, Message: "agent shut down; the command was killed"}
	}
	s.log.Debug("command finished", "id", pr.id, "argv0", pr.cmd.argv[0], "pid", pid, "exit_code", res.ExitCode,
		"signal", res.Signal, "timed_out", res.TimedOut, "duration", duration, "peak_kb", res.PeakMemoryKB)
	pr.finish(res, perr)
}

// pump copies one output to the process's sinks until EOF, then ends the channel. At most one chunk is held here
// at a time and a streamed exec waits for credit, so a command whose output is not consumed blocks on its pipe
// instead of filling the agent's memory.
//
// When the read deadline passes (the grace after the main process exited), what is still in the pipe is
// drained without waiting, and the channel ends even if a background process still holds the pipe open.
func (pr *proc) pump(f *os.File, ch protocol.Channel) error {
	buf := make([]byte, 1+chunkSize)
	buf[0] = byte(ch)
	for {
		n, err := f.Read(buf[1:])
		if n > 0 {
			if werr := pr.emit(buf[:1], buf[1:1+n]); werr != nil {
				return werr
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) && !pr.stopNow.Load() {
			if derr := pr.drain(f, buf); derr != nil {
				return derr
			}
		}
		pr.end(ch)
		// A pty's master reads EIO once no process holds the terminal any more: its EOF.
		if errors.Is(err, io.EOF) || errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, os.ErrClosed) ||
			errors.Is(err, syscall.EIO) {
			return nil
		}
		return err
	}
}

// drain sends what a pipe holds now, without waiting for more. A Go read past its deadline fails before
// looking at the pipe, so the deadline is cleared and the pipe (non-blocking, as the poller sets it) is read
// directly until it is empty. It reads at most the pipe's capacity, which is all it could hold when the grace
// ended, so a background process that keeps writing cannot keep it going forever.
func (pr *proc) drain(f *os.File, buf []byte) error {
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
		if err := pr.emit(buf[:1], buf[1:1+n]); err != nil {
			return err
		}
	}
	return nil
}

// buildEnv lays overlay, then the request's env, then forced over the base environment and returns it with the
// resulting PATH.
func buildEnv(overlay, extra, forced map[string]string) ([]string, string, error) {
	m := map[string]string{"PATH": basePath, "HOME": baseHome}
	for k, v := range overlay {
		m[k] = v
	}
	for k, v := range extra {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			return nil, "", fmt.Errorf("invalid environment variable name %q", k)
		}
		if strings.IndexByte(v, 0) >= 0 {
			return nil, "", fmt.Errorf("environment variable %s contains a NUL byte", k)
		}
		m[k] = v
	}
	for k, v := range forced {
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
