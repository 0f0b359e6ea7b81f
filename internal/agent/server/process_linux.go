//go:build linux

package server

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/creack/pty"
	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// proc is one command the agent runs: a streamed exec, or a background process. Every command is in the
// server's process table while it runs, so that it can be signalled, resized and listed by id.
type proc struct {
	s         *Server
	cmd       *command
	id        string
	command   string // for listings
	startedAt time.Time
	// kept: the process outlives its caller (a background process, or an exec that keeps running on
	// disconnect). Only kept processes have rings and stay in the table after they exit.
	kept  bool
	rings [3]*ring // by channel; nil when the output is only streamed
	count [3]atomic.Int64

	killc    chan struct{} // closed by kill
	killOnce sync.Once
	stopNow  atomic.Bool // output is no longer read once the group was killed on request
	done     chan struct{}

	mu         sync.Mutex
	st         *stream // the attached caller, nil once detached (or for a background process)
	pid        int     // 0 until started
	exited     bool    // the main process has been reaped: its pid may be reused, so no more signals
	master     *os.File
	stdinW     *os.File
	stdinOnce  sync.Once
	result     *protocol.ExecResult
	err        *protocol.Error
	finishedAt time.Time
}

func newProc(s *Server, cmd *command, st *stream) *proc {
	pr := &proc{
		s:         s,
		cmd:       cmd,
		id:        cmd.id,
		command:   displayCommand(cmd.argv),
		startedAt: time.Now(),
		kept:      st == nil || cmd.keep,
		killc:     make(chan struct{}),
		done:      make(chan struct{}),
		st:        st,
	}
	if pr.kept {
		pr.rings[protocol.ChannelStdout] = newRing(s.cfg.ProcessOutputBytes)
		if cmd.pty == nil {
			pr.rings[protocol.ChannelStderr] = newRing(s.cfg.ProcessOutputBytes)
		}
	}
	return pr
}

// displayCommand is the command line for listings, shortened: an argv can be a megabyte long.
func displayCommand(argv []string) string {
	const maxLen = 256
	s := strings.Join(argv, " ")
	if len(s) <= maxLen {
		return s
	}
	s = s[:maxLen]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "..."
}

func (pr *proc) stream() *stream {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.st
}

func (pr *proc) pidNow() int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.pid
}

// emit passes output to the rings and to the attached caller. When the caller is gone, a kept process goes on
// with its rings alone; any other stops here (it is being killed).
func (pr *proc) emit(chByte, data []byte) error {
	ch := protocol.Channel(chByte[0])
	pr.count[ch].Add(int64(len(data)))
	if r := pr.rings[ch]; r != nil {
		r.write(data)
	}
	st := pr.stream()
	if st == nil {
		return nil
	}
	if err := st.sendData(chByte, data); err != nil {
		if pr.kept {
			pr.detach(st)
			return nil
		}
		return err
	}
	return nil
}

// end tells the attached caller that channel ch is finished.
func (pr *proc) end(ch protocol.Channel) {
	if st := pr.stream(); st != nil {
		_ = st.end(ch) // an error means the caller is gone; it reads nothing more anyway
	}
}

// detach lets the process go on without its caller st; its stdin reaches EOF.
func (pr *proc) detach(st *stream) {
	pr.mu.Lock()
	if pr.st == st {
		pr.st = nil
	}
	pr.mu.Unlock()
	pr.closeStdin()
}

func (pr *proc) closeStdin() {
	pr.mu.Lock()
	w := pr.stdinW
	pr.mu.Unlock()
	if w != nil {
		pr.stdinOnce.Do(func() { _ = w.Close() })
	}
}

// kill asks the supervisor to kill the process group and stop reading its output.
func (pr *proc) kill() {
	pr.killOnce.Do(func() { close(pr.killc) })
}

func (pr *proc) markExited() {
	pr.mu.Lock()
	pr.exited = true
	pr.mu.Unlock()
}

// finish records how the process ended and wakes everyone waiting for it.
func (pr *proc) finish(res *protocol.ExecResult, perr *protocol.Error) {
	pr.mu.Lock()
	pr.result, pr.err = res, perr
	pr.exited = true
	pr.finishedAt = time.Now()
	pr.mu.Unlock()
	close(pr.done)
}

func (pr *proc) outcome() (*protocol.ExecResult, *protocol.Error) {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.result, pr.err
}

// notStarted ends a process that could not be started, as a shell would: exit code 126 or 127 and the reason
// on stderr (on the terminal, for a pty).
func (pr *proc) notStarted(code int, reason string) {
	pr.s.log.Debug("command not started", "id", pr.id, "argv0", pr.cmd.argv[0], "exit_code", code, "reason", reason)
	ch := protocol.ChannelStderr
	if pr.cmd.pty != nil {
		ch = protocol.ChannelStdout
	}
	_ = pr.emit([]byte{byte(ch)}, []byte("aetherium-agent: "+reason+"\n"))
	pr.end(protocol.ChannelStdout)
	pr.end(protocol.ChannelStderr)
	pr.finish(&protocol.ExecResult{ExitCode: code, StartedAt: pr.startedAt, DurationNS: int64(time.Since(pr.startedAt)),
		ID: pr.id}, nil)
}

func (pr *proc) isDone() bool {
	select {
	case <-pr.done:
		return true
	default:
		return false
	}
}

func (pr *proc) info() protocol.ProcessInfo {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	info := protocol.ProcessInfo{
		ID:          pr.id,
		PID:         pr.pid,
		Command:     pr.command,
		Pty:         pr.cmd.pty != nil,
		Attached:    pr.st != nil,
		State:       string(agent.ProcessRunning),
		StartedAt:   pr.startedAt,
		StdoutBytes: pr.count[protocol.ChannelStdout].Load(),
		StderrBytes: pr.count[protocol.ChannelStderr].Load(),
	}
	if !pr.finishedAt.IsZero() {
		info.State = string(agent.ProcessExited)
		if pr.result != nil {
			r := *pr.result
			info.Result = &r
		}
	}
	return info
}

// signal sends sig to the process group, as long as the main process has not been reaped (after that its pid,
// the group id, may belong to someone else).
func (pr *proc) signal(sig syscall.Signal) *protocol.Error {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.exited || pr.pid <= 0 {
		return notRunning(pr.id)
	}
	if err := syscall.Kill(-pr.pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return notRunning(pr.id)
		}
		return internalError("signal process %s: %v", pr.id, err)
	}
	return nil
}

func notRunning(id string) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeNotRunning, Message: fmt.Sprintf("process %s is not running", id)}
}

// procTable holds the server's processes by id.
type procTable struct {
	max int
	ttl time.Duration
	wg  sync.WaitGroup // supervisors

	mu    sync.Mutex
	procs map[string]*proc
	seq   uint64
}

func newProcTable(max int, ttl time.Duration) *procTable {
	return &procTable{max: max, ttl: ttl, procs: make(map[string]*proc)}
}

// validProcessID: ids travel in URLs and logs, so they are kept plain.
func validProcessID(id string) bool {
	if len(id) == 0 || len(id) > 128 {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// add registers pr, naming it if it has no id. Kept processes are bounded: the oldest exited ones make room,
// and when every kept process runs a new one is refused.
func (t *procTable) add(pr *proc) *protocol.Error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(time.Now())
	if pr.id == "" {
		for {
			t.seq++
			id := "p" + strconv.FormatUint(t.seq, 10)
			if _, taken := t.procs[id]; !taken {
				pr.id = id
				break
			}
		}
	} else if _, taken := t.procs[pr.id]; taken {
		return &protocol.Error{Code: protocol.CodeExists, Message: fmt.Sprintf("a process with id %q exists", pr.id)}
	}
	if pr.kept {
		var oldest *proc
		n := 0
		for _, p := range t.procs {
			if !p.kept {
				continue
			}
			n++
			if p.isDone() && (oldest == nil || p.finishedAtLocked().Before(oldest.finishedAtLocked())) {
				oldest = p
			}
		}
		if n >= t.max {
			if oldest == nil {
				return &protocol.Error{Code: protocol.CodeTooManyProcesses,
					Message: fmt.Sprintf("%d background processes are running; the agent keeps at most %d", n, t.max)}
			}
			delete(t.procs, oldest.id)
		}
	}
	t.procs[pr.id] = pr
	return nil
}

func (pr *proc) finishedAtLocked() time.Time {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.finishedAt
}

// expireLocked forgets kept processes that exited more than ttl ago.
func (t *procTable) expireLocked(now time.Time) {
	for id, p := range t.procs {
		if p.kept && p.isDone() && now.Sub(p.finishedAtLocked()) > t.ttl {
			delete(t.procs, id)
		}
	}
}

func (t *procTable) get(id string) (*proc, *protocol.Error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(time.Now())
	if pr, ok := t.procs[id]; ok {
		return pr, nil
	}
	return nil, &protocol.Error{Code: protocol.CodeNotFound, Message: fmt.Sprintf("no process with id %q", id)}
}

// remove forgets pr (only pr: another process may have taken its id since).
func (t *procTable) remove(pr *proc) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.procs[pr.id] == pr {
		delete(t.procs, pr.id)
	}
}

func (t *procTable) list() []*proc {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.expireLocked(time.Now())
	out := make([]*proc, 0, len(t.procs))
	for _, p := range t.procs {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b *proc) int {
		return cmp.Or(a.startedAt.Compare(b.startedAt), strings.Compare(a.id, b.id))
	})
	return out
}

// wait waits for every supervisor to finish (after the server's context ended, which kills the processes).
func (t *procTable) wait() { t.wg.Wait() }

// parseSignal accepts "SIGTERM", "TERM", "term" or "15".
func parseSignal(s string) (syscall.Signal, error) {
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 64 {
			return 0, fmt.Errorf("signal %d out of range", n)
		}
		return syscall.Signal(n), nil
	}
	name := strings.ToUpper(s)
	if !strings.HasPrefix(name, "SIG") {
		name = "SIG" + name
	}
	if sig := unix.SignalNum(name); sig != 0 {
		return sig, nil
	}
	return 0, fmt.Errorf("unknown signal %q", s)
}

func (c *conn) signal(_ *stream, p protocol.SignalParams) (struct{}, *protocol.Error) {
	sig, err := parseSignal(p.Signal)
	if err != nil {
		return struct{}{}, badRequest("%v", err)
	}
	pr, perr := c.s.procs.get(p.ID)
	if perr != nil {
		return struct{}{}, perr
	}
	c.log.Debug("signalling process", "id", p.ID, "signal", unix.SignalName(sig))
	return struct{}{}, pr.signal(sig)
}

func (c *conn) resize(_ *stream, p protocol.ResizeParams) (struct{}, *protocol.Error) {
	if p.Rows == 0 || p.Cols == 0 {
		return struct{}{}, badRequest("size %dx%d: rows and cols must be positive", p.Rows, p.Cols)
	}
	pr, perr := c.s.procs.get(p.ID)
	if perr != nil {
		return struct{}{}, perr
	}
	if pr.cmd.pty == nil {
		return struct{}{}, badRequest("process %s has no terminal", p.ID)
	}
	pr.mu.Lock()
	defer pr.mu.Unlock()
	if pr.master == nil || pr.exited {
		return struct{}{}, notRunning(p.ID)
	}
	if err := pty.Setsize(pr.master, &pty.Winsize{Rows: p.Rows, Cols: p.Cols}); err != nil {
		return struct{}{}, internalError("resize terminal of %s: %v", p.ID, err)
	}
	return struct{}{}, nil
}

func (c *conn) processList(_ *stream, _ struct{}) (*protocol.ProcessListResult, *protocol.Error) {
	procs := c.s.procs.list()
	res := &protocol.ProcessListResult{Processes: make([]protocol.ProcessInfo, 0, len(procs))}
	for _, p := range procs {
		res.Processes = append(res.Processes, p.info())
	}
	return res, nil
}

func (c *conn) processWait(st *stream, p protocol.ProcessWaitParams) (*protocol.ProcessInfo, *protocol.Error) {
	if p.TimeoutNS < 0 {
		return nil, badRequest("timeout_ns is negative")
	}
	pr, perr := c.s.procs.get(p.ID)
	if perr != nil {
		return nil, perr
	}
	var timeout <-chan time.Time
	if p.TimeoutNS > 0 {
		t := time.NewTimer(time.Duration(p.TimeoutNS))
		defer t.Stop()
		timeout = t.C
	}
	select {
	case <-pr.done:
	case <-timeout: // still running: the answer says so
	case <-st.ctx.Done():
		return nil, &protocol.Error{Code: protocol.CodeInternal, Message: "wait cancelled"}
	}
	info := pr.info()
	return &info, nil
}

func (c *conn) processOutput(st *stream, p protocol.ProcessOutputParams) (*protocol.ProcessOutputResult, *protocol.Error) {
	var ch protocol.Channel
	switch p.Channel {
	case string(agent.Stdout):
		ch = protocol.ChannelStdout
	case string(agent.Stderr):
		ch = protocol.ChannelStderr
	default:
		return nil, badRequest("channel %q: want stdout or stderr", p.Channel)
	}
	if p.Offset < 0 || p.MaxBytes < 0 {
		return nil, badRequest("offset and max_bytes must not be negative")
	}
	pr, perr := c.s.procs.get(p.ID)
	if perr != nil {
		return nil, perr
	}
	r := pr.rings[ch]
	if r == nil {
		if pr.cmd.pty != nil && ch == protocol.ChannelStderr {
			r = newRing(1) // a terminal has one stream: its stderr is empty
		} else {
			return nil, badRequest("process %s keeps no output: it is streamed to its caller", p.ID)
		}
	}
	// Whether it had exited is taken before reading, so that EOF is never claimed for output still to come.
	exited := pr.isDone()
	data, from, total, dropped := r.read(p.Offset, p.MaxBytes)
	if len(data) > 0 {
		if err := st.sendData([]byte{byte(ch)}, data); err != nil {
			return nil, &protocol.Error{Code: protocol.CodeInternal, Message: fmt.Sprintf("send output: %v", err)}
		}
	}
	_ = st.end(ch)
	next := from + int64(len(data))
	return &protocol.ProcessOutputResult{Offset: from, NextOffset: next, Dropped: dropped, Total: total,
		EOF: exited && next == total}, nil
}

func (c *conn) processRemove(_ *stream, p protocol.ProcessParams) (struct{}, *protocol.Error) {
	pr, perr := c.s.procs.get(p.ID)
	if perr != nil {
		return struct{}{}, perr
	}
	if !pr.isDone() {
		return struct{}{}, &protocol.Error{Code: protocol.CodeStillRunning,
			Message: fmt.Sprintf("process %s is still running; signal it first", p.ID)}
	}
	c.s.procs.remove(pr)
	return struct{}{}, nil
}
