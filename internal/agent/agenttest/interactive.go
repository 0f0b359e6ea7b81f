package agenttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
)

func randHex(t *testing.T) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// wantCode fails unless err is an agent answer with one of these codes.
func wantCode(t *testing.T, what string, err error, codes ...string) {
	t.Helper()
	var aerr *client.Error
	if !errors.As(err, &aerr) || !slices.Contains(codes, aerr.Code) {
		t.Fatalf("%s: got %v; want an agent error %q", what, err, codes)
	}
}

func testShell(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	res := mustExec(t, ctx, c, agent.ExecRequest{Shell: `echo $((1+2)) "$0"; echo oops >&2; exit 5`})
	wantOutput(t, res, 5, "3 /bin/sh\n", "oops\n")
	_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo"}, Shell: "echo"})
	wantCode(t, "argv and shell", err, agent.CodeBadRequest)
}

func testUser(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	// What the guest's database says about nobody, to compare with (images differ in home and group).
	res := mustExec(t, ctx, c, agent.ExecRequest{Shell: `grep '^nobody:' /etc/passwd`})
	f := strings.Split(strings.TrimSpace(string(res.Stdout)), ":")
	if res.ExitCode != 0 || len(f) < 7 {
		t.Skipf("the guest has no user nobody: %q", res.Stdout)
	}
	script := `id -u; id -g; echo "$HOME|$USER|$LOGNAME"`
	res = mustExec(t, ctx, c, agent.ExecRequest{Shell: script, User: "nobody"})
	wantOutput(t, res, 0, fmt.Sprintf("%s\n%s\n%s|nobody|nobody\n", f[2], f[3], f[5]), "")
	// By uid, the same user.
	res = mustExec(t, ctx, c, agent.ExecRequest{Shell: `id -un; id -u`, User: f[2]})
	wantOutput(t, res, 0, "nobody\n"+f[2]+"\n", "")

	// Numbers without an entry: exactly those ids, no supplementary groups, HOME=/.
	res = mustExec(t, ctx, c, agent.ExecRequest{Shell: `id -u; id -g; id -G; echo "$HOME"`, User: "4321:8765"})
	wantOutput(t, res, 0, "4321\n8765\n8765\n/\n", "")
	// Env wins over the user's entry.
	res = mustExec(t, ctx, c, agent.ExecRequest{Shell: `echo "$HOME"`, User: "nobody", Env: map[string]string{"HOME": "/tmp"}})
	wantOutput(t, res, 0, "/tmp\n", "")
	// The user's permissions apply: nobody cannot write to /root.
	res = mustExec(t, ctx, c, agent.ExecRequest{Shell: `touch /root/aetherium-agenttest-x 2>/dev/null; echo $?`, User: "nobody"})
	if strings.TrimSpace(string(res.Stdout)) == "0" {
		t.Fatal("nobody could write to /root")
	}

	for _, u := range []string{"aetherium-no-such-user", "nobody:aetherium-no-such-group"} {
		_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, User: u})
		wantCode(t, "user "+u, err, agent.CodeUnknownUser)
	}
	for _, u := range []string{":0", "0:", "a\x00b"} {
		_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, User: u})
		wantCode(t, "user "+u, err, agent.CodeBadRequest)
	}
}

func testStdin(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)

	// Binary input, larger than any window, comes back byte for byte.
	in := make([]byte, 3_000_000)
	_, _ = rand.Read(in)
	var out bytes.Buffer
	res, err := c.ExecInteractive(ctx, agent.ExecRequest{Argv: []string{"cat"}}, agent.ExecIO{Stdin: bytes.NewReader(in), Stdout: &out})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("cat: %+v %v", res, err)
	}
	if !bytes.Equal(out.Bytes(), in) {
		t.Fatalf("cat returned %d bytes (sha %x), sent %d (sha %x)", out.Len(), sha256.Sum256(out.Bytes()), len(in), sha256.Sum256(in))
	}

	// EOF reaches the command.
	out.Reset()
	res, err = c.ExecInteractive(ctx, agent.ExecRequest{Shell: "wc -c; echo done"}, agent.ExecIO{Stdin: strings.NewReader("hello"), Stdout: &out})
	if err != nil || res.ExitCode != 0 || strings.Fields(out.String())[0] != "5" || !strings.HasSuffix(out.String(), "done\n") {
		t.Fatalf("wc -c: %+v %v %q", res, err, out.String())
	}

	// Without stdin the command reads EOF at once.
	res = mustExec(t, ctx, c, agent.ExecRequest{Shell: "wc -c"})
	if strings.TrimSpace(string(res.Stdout)) != "0" {
		t.Fatalf("wc -c without stdin: %q", res.Stdout)
	}

	// Input that never ends does not hold up a command that stops reading: the call returns when it exits.
	pr, pw := io.Pipe()
	t.Cleanup(func() { _ = pw.Close() })
	go func() { _, _ = pw.Write([]byte("hello world")) }()
	out.Reset()
	res, err = c.ExecInteractive(ctx, agent.ExecRequest{Argv: []string{"head", "-c", "5"}}, agent.ExecIO{Stdin: pr, Stdout: &out})
	if err != nil || res.ExitCode != 0 || out.String() != "hello" {
		t.Fatalf("head -c 5 with endless stdin: %+v %v %q", res, err, out.String())
	}
	// Nor one that never reads it.
	res, err = c.ExecInteractive(ctx, agent.ExecRequest{Argv: []string{"true"}}, agent.ExecIO{Stdin: infiniteReader{}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("true with infinite stdin: %+v %v", res, err)
	}

	// Failing input ends the call with its error, and the command.
	boom := errors.New("keyboard on fire")
	_, err = c.ExecInteractive(ctx, agent.ExecRequest{Argv: []string{"cat"}, Timeout: 30 * time.Second},
		agent.ExecIO{Stdin: io.MultiReader(strings.NewReader("x"), errReader{boom}), Stdout: io.Discard})
	if !errors.Is(err, boom) {
		t.Fatalf("failing stdin: got %v, want %v", err, boom)
	}
	wantOutput(t, mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"echo", "ok"}}), 0, "ok\n", "")
}

type infiniteReader struct{}

func (infiniteReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = 'y'
	}
	return len(p), nil
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func testPeakMemory(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	small := mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"true"}})
	if small.PeakMemoryKB <= 0 {
		t.Fatalf("peak memory of true: %d KiB", small.PeakMemoryKB)
	}
	if small.ID == "" {
		t.Error("the result names no process id")
	}
	// The shell holds a 30 MB string: its peak resident set must show it.
	res := mustExec(t, ctx, c, agent.ExecRequest{Shell: `x=$(head -c 30000000 /dev/zero | tr '\0' a); echo ${#x}`})
	if res.ExitCode != 0 || strings.TrimSpace(string(res.Stdout)) != "30000000" {
		t.Fatalf("exit %d stdout %q stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	// The kernel counts the agent's resident set at the fork into every command (see agent.ExecResult): an agent
	// that is itself large (a race-enabled test binary) hides a 30 MB command under that floor.
	const floorLimit = 20_000
	if small.PeakMemoryKB > floorLimit {
		t.Logf("the agent's own resident set (%d KiB) is the floor of every peak; only checking the order", small.PeakMemoryKB)
		if res.PeakMemoryKB < small.PeakMemoryKB*9/10 {
			t.Fatalf("peak memory %d KiB, below the floor %d KiB", res.PeakMemoryKB, small.PeakMemoryKB)
		}
		return
	}
	if res.PeakMemoryKB < 29_000 {
		t.Fatalf("peak memory %d KiB; the command held 30 MB", res.PeakMemoryKB)
	}
}

// execAsync runs req in the background of the test, reporting its first line of stdout.
type asyncExec struct {
	out  *lineWriter
	done chan struct{}
	res  *agent.ExecResult
	err  error
}

func startExec(t *testing.T, ctx context.Context, c *client.Client, req agent.ExecRequest, stdin io.Reader) *asyncExec {
	t.Helper()
	a := &asyncExec{out: newLineWriter(), done: make(chan struct{})}
	go func() {
		defer close(a.done)
		a.res, a.err = c.ExecInteractive(ctx, req, agent.ExecIO{Stdin: stdin, Stdout: a.out})
	}()
	return a
}

func (a *asyncExec) firstLine(t *testing.T, ctx context.Context) string {
	t.Helper()
	select {
	case line := <-a.out.first:
		return line
	case <-a.done:
		t.Fatalf("exec ended before its first line: %+v %v (output %q)", a.res, a.err, a.out.String())
	case <-ctx.Done():
		t.Fatalf("no output: %v", ctx.Err())
	}
	return ""
}

func (a *asyncExec) wait(t *testing.T, ctx context.Context) (*agent.ExecResult, error) {
	t.Helper()
	select {
	case <-a.done:
		return a.res, a.err
	case <-ctx.Done():
		t.Fatalf("exec did not end: %v", ctx.Err())
	}
	return nil, nil
}

func (w *lineWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func testSignalDelivery(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	id := "sig-" + randHex(t)
	a := startExec(t, ctx, c, agent.ExecRequest{ID: id, Timeout: 30 * time.Second,
		Shell: `trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done`}, nil)
	if line := a.firstLine(t, ctx); line != "ready" {
		t.Fatalf("first line %q", line)
	}
	if err := c.Signal(ctx, id, "TERM"); err != nil {
		t.Fatalf("Signal: %v", err)
	}
	res, err := a.wait(t, ctx)
	if err != nil || res.ExitCode != 3 || !strings.Contains(a.out.String(), "got TERM") || res.ID != id {
		t.Fatalf("after SIGTERM: %+v %v output %q", res, err, a.out.String())
	}
	// It no longer runs (and leaves the agent's table once its result is delivered).
	wantCode(t, "signal after the end", c.Signal(ctx, id, "TERM"), agent.CodeNotFound, agent.CodeNotRunning)

	id2 := "sig-" + randHex(t)
	a = startExec(t, ctx, c, agent.ExecRequest{ID: id2, Shell: `echo ready; exec sleep 100`}, nil)
	a.firstLine(t, ctx)
	if err := c.Signal(ctx, id2, "9"); err != nil {
		t.Fatalf("Signal 9: %v", err)
	}
	res, err = a.wait(t, ctx)
	if err != nil || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("after signal 9: %+v %v", res, err)
	}

	wantCode(t, "unknown id", c.Signal(ctx, "aetherium-no-such-process", "TERM"), agent.CodeNotFound)
	wantCode(t, "unknown signal", c.Signal(ctx, id, "SIGFROB"), agent.CodeBadRequest)
	_, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, ID: "bad id!"})
	wantCode(t, "bad id", err, agent.CodeBadRequest)
}

func testKeepRunningOnDisconnect(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	ctx := testCtx(t)
	marker := "/tmp/aetherium-agenttest-" + randHex(t)
	id := "keep-" + randHex(t)
	first := client.New(dial(t))
	a := startExec(t, ctx, first, agent.ExecRequest{ID: id, KeepRunningOnDisconnect: true, Timeout: 60 * time.Second,
		Argv: []string{"sh", "-c", `echo start; while [ ! -e "$0" ]; do sleep 0.01; done; rm -f "$0"; echo after; echo e >&2; exit 6`, marker}}, nil)
	if line := a.firstLine(t, ctx); line != "start" {
		t.Fatalf("first line %q", line)
	}
	_ = first.Close()
	if _, err := a.wait(t, ctx); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("exec during Close: %v", err)
	}

	c := newClient(t, dial)
	procs, err := c.ListProcesses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var found *agent.ProcessInfo
	for i := range procs {
		if procs[i].ID == id {
			found = &procs[i]
		}
	}
	if found == nil || found.State != agent.ProcessRunning || found.PID <= 0 {
		t.Fatalf("process %s after its caller left: %+v (all: %+v)", id, found, procs)
	}
	wantOutput(t, mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"touch", marker}}), 0, "", "")
	info, err := c.WaitProcess(ctx, id, 30*time.Second)
	if err != nil || info.State != agent.ProcessExited || info.Result == nil || info.Result.ExitCode != 6 {
		t.Fatalf("WaitProcess: %+v %v", info, err)
	}
	out, err := c.ReadProcessOutput(ctx, id, agent.Stdout, 0, 0)
	if err != nil || string(out.Data) != "start\nafter\n" || !out.EOF || out.Dropped != 0 {
		t.Fatalf("stdout kept: %+v %v", out, err)
	}
	out, err = c.ReadProcessOutput(ctx, id, agent.Stderr, 0, 0)
	if err != nil || string(out.Data) != "e\n" || !out.EOF {
		t.Fatalf("stderr kept: %+v %v", out, err)
	}
	if err := c.RemoveProcess(ctx, id); err != nil {
		t.Fatal(err)
	}
	_, err = c.WaitProcess(ctx, id, 0)
	wantCode(t, "wait after remove", err, agent.CodeNotFound)

	// A caller's context that ends lets it go on too; a signal ends it.
	id = "keep-" + randHex(t)
	cctx, cancel := context.WithCancel(ctx)
	a = startExec(t, cctx, c, agent.ExecRequest{ID: id, KeepRunningOnDisconnect: true, Shell: "echo up; exec sleep 100"}, nil)
	a.firstLine(t, ctx)
	cancel()
	if _, err := a.wait(t, ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled exec: %v", err)
	}
	if info, err := c.WaitProcess(ctx, id, 50*time.Millisecond); err != nil || info.State != agent.ProcessRunning {
		t.Fatalf("after the caller's cancel: %+v %v", info, err)
	}
	if err := c.Signal(ctx, id, "KILL"); err != nil {
		t.Fatal(err)
	}
	if info, err := c.WaitProcess(ctx, id, 0); err != nil || info.Result == nil || info.Result.Signal != "SIGKILL" {
		t.Fatalf("after SIGKILL: %+v %v", info, err)
	}
	_ = c.RemoveProcess(ctx, id)
}

func testBackgroundProcesses(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	id := "bg-" + randHex(t)
	info, err := c.StartProcess(ctx, agent.ExecRequest{ID: id, Shell: "echo out; echo err >&2; exit 4"})
	if err != nil || info.ID != id {
		t.Fatalf("StartProcess: %+v %v", info, err)
	}
	_, err = c.StartProcess(ctx, agent.ExecRequest{ID: id, Argv: []string{"true"}})
	wantCode(t, "duplicate id", err, agent.CodeExists)
	info, err = c.WaitProcess(ctx, id, 0)
	if err != nil || info.State != agent.ProcessExited || info.Result.ExitCode != 4 || info.StdoutBytes != 4 || info.StderrBytes != 4 {
		t.Fatalf("WaitProcess: %+v %v", info, err)
	}
	out, err := c.ReadProcessOutput(ctx, id, agent.Stdout, 2, 0)
	if err != nil || string(out.Data) != "t\n" || out.Offset != 2 || out.NextOffset != 4 || out.Total != 4 || !out.EOF {
		t.Fatalf("stdout from 2: %+v %v", out, err)
	}
	out, err = c.ReadProcessOutput(ctx, id, agent.Stderr, 0, 1)
	if err != nil || string(out.Data) != "e" || out.EOF || out.NextOffset != 1 {
		t.Fatalf("stderr, 1 byte: %+v %v", out, err)
	}
	procs, err := c.ListProcesses(ctx)
	if err != nil || !containsProcess(procs, id) {
		t.Fatalf("ListProcesses: %+v %v", procs, err)
	}
	if err := c.RemoveProcess(ctx, id); err != nil {
		t.Fatal(err)
	}
	if procs, err := c.ListProcesses(ctx); err != nil || containsProcess(procs, id) {
		t.Fatalf("ListProcesses after remove: %+v %v", procs, err)
	}

	// A long one: waiting with a timeout says it runs; it cannot be removed until it exits.
	id = "bg-" + randHex(t)
	if _, err := c.StartProcess(ctx, agent.ExecRequest{ID: id, Argv: []string{"sleep", "100"}}); err != nil {
		t.Fatal(err)
	}
	if info, err := c.WaitProcess(ctx, id, 100*time.Millisecond); err != nil || info.State != agent.ProcessRunning || info.Result != nil {
		t.Fatalf("WaitProcess with timeout: %+v %v", info, err)
	}
	wantCode(t, "remove running", c.RemoveProcess(ctx, id), agent.CodeStillRunning)
	if err := c.Signal(ctx, id, "SIGKILL"); err != nil {
		t.Fatal(err)
	}
	if info, err := c.WaitProcess(ctx, id, 0); err != nil || info.Result == nil || info.Result.ExitCode != 137 {
		t.Fatalf("after SIGKILL: %+v %v", info, err)
	}
	wantCode(t, "signal exited", c.Signal(ctx, id, "TERM"), agent.CodeNotRunning)
	_ = c.RemoveProcess(ctx, id)

	// More output than the agent keeps: the newest is kept, the rest counted as dropped.
	const n = 300000
	var want strings.Builder
	for i := 1; i <= n; i++ {
		want.WriteString(strconv.Itoa(i))
		want.WriteByte('\n')
	}
	id = "bg-" + randHex(t)
	if _, err := c.StartProcess(ctx, agent.ExecRequest{ID: id, Argv: []string{"seq", "1", strconv.Itoa(n)}}); err != nil {
		t.Fatal(err)
	}
	if info, err := c.WaitProcess(ctx, id, 0); err != nil || info.Result.ExitCode != 0 || info.StdoutBytes != int64(want.Len()) {
		t.Fatalf("seq: %+v %v", info, err)
	}
	out, err = c.ReadProcessOutput(ctx, id, agent.Stdout, 0, 0)
	if err != nil || out.Total != int64(want.Len()) || out.Offset != out.Dropped || !out.EOF ||
		out.NextOffset != out.Total || string(out.Data) != want.String()[out.Offset:] {
		t.Fatalf("ring: offset %d dropped %d total %d eof %v, %d bytes (%v); want total %d", out.Offset, out.Dropped,
			out.Total, out.EOF, len(out.Data), err, want.Len())
	}
	if int64(want.Len()) > agent.DefaultProcessOutputBytes && out.Dropped == 0 {
		t.Logf("agent keeps more than %d bytes per stream", agent.DefaultProcessOutputBytes)
	}
	_ = c.RemoveProcess(ctx, id)

	// A command that cannot start is a process that ended with 127, the reason on its stderr.
	info, err = c.StartProcess(ctx, agent.ExecRequest{Argv: []string{"aetherium-no-such-command"}})
	if err != nil || info.ID == "" {
		t.Fatalf("StartProcess of a missing command: %+v %v", info, err)
	}
	if w, err := c.WaitProcess(ctx, info.ID, 0); err != nil || w.Result.ExitCode != 127 {
		t.Fatalf("missing command: %+v %v", w, err)
	}
	if out, err := c.ReadProcessOutput(ctx, info.ID, agent.Stderr, 0, 0); err != nil || !bytes.Contains(out.Data, []byte("aetherium-no-such-command")) {
		t.Fatalf("missing command's stderr: %+v %v", out, err)
	}
	_ = c.RemoveProcess(ctx, info.ID)
	_, err = c.ReadProcessOutput(ctx, "aetherium-no-such-process", agent.Stdout, 0, 0)
	wantCode(t, "output of unknown", err, agent.CodeNotFound)
}

func containsProcess(procs []agent.ProcessInfo, id string) bool {
	for _, p := range procs {
		if p.ID == id {
			return true
		}
	}
	return false
}

// termWriter collects terminal output and lets a test wait for a piece of it.
type termWriter struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	changed chan struct{}
}

func newTermWriter() *termWriter { return &termWriter{changed: make(chan struct{}, 1)} }

func (w *termWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.buf.Write(p)
	w.mu.Unlock()
	select {
	case w.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

func (w *termWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// await waits until the output contains s.
func (w *termWriter) await(t *testing.T, ctx context.Context, s string, done <-chan struct{}) {
	t.Helper()
	for !strings.Contains(w.String(), s) {
		select {
		case <-w.changed:
		case <-done:
			if !strings.Contains(w.String(), s) {
				t.Fatalf("command ended without printing %q; output %q", s, w.String())
			}
		case <-ctx.Done():
			t.Fatalf("waiting for %q: %v; output %q", s, ctx.Err(), w.String())
		}
	}
}

func testPty(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	id := "pty-" + randHex(t)
	in, typing := io.Pipe()
	t.Cleanup(func() { _ = typing.Close() })
	out := newTermWriter()
	done := make(chan struct{})
	var (
		res *agent.ExecResult
		err error
	)
	go func() {
		defer close(done)
		res, err = c.ExecInteractive(ctx, agent.ExecRequest{Argv: []string{"sh"}, ID: id, Timeout: 60 * time.Second,
			Pty: &agent.PtySize{Rows: 24, Cols: 80}}, agent.ExecIO{Stdin: in, Stdout: out})
	}()
	typeLine := func(s string) {
		if _, err := io.WriteString(typing, s+"\n"); err != nil {
			t.Fatalf("type %q: %v", s, err)
		}
	}
	// The pty echoes what is typed, so the answers are told apart from the commands by what only the answer has.
	typeLine(`stty size; echo "T=$TERM"; [ -t 0 ] && echo "is-$((1+1))-tty"`)
	out.await(t, ctx, "24 80", done)
	out.await(t, ctx, "T=xterm-256color", done)
	out.await(t, ctx, "is-2-tty", done)
	if err := c.Resize(ctx, id, 30, 100); err != nil {
		t.Fatalf("Resize: %v", err)
	}
	typeLine("stty size; exit 7")
	<-done
	if err != nil || res.ExitCode != 7 {
		t.Fatalf("sh in a pty: %+v %v; output %q", res, err, out.String())
	}
	if !strings.Contains(out.String(), "30 100") {
		t.Fatalf("no new size after the resize; output %q", out.String())
	}
	wantCode(t, "resize after the end", c.Resize(ctx, id, 10, 10), agent.CodeNotFound, agent.CodeNotRunning)

	// Without input, with a TERM of its own; stderr goes to the terminal too.
	var buf bytes.Buffer
	res, err = c.ExecStream(ctx, agent.ExecRequest{Shell: `stty size; echo "$TERM"; echo to-stderr >&2`,
		Pty: &agent.PtySize{Rows: 5, Cols: 33, Term: "vt100"}}, &buf, nil)
	if err != nil || res.ExitCode != 0 || buf.String() != "5 33\r\nvt100\r\nto-stderr\r\n" {
		t.Fatalf("pty without stdin: %+v %v %q", res, err, buf.String())
	}

	// A command without a terminal cannot be resized.
	id = "nopty-" + randHex(t)
	a := startExec(t, ctx, c, agent.ExecRequest{ID: id, Shell: "echo up; exec sleep 100"}, nil)
	a.firstLine(t, ctx)
	wantCode(t, "resize without pty", c.Resize(ctx, id, 10, 10), agent.CodeBadRequest)
	_ = c.Signal(ctx, id, "KILL")
	_, _ = a.wait(t, ctx)
	_, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}, Pty: &agent.PtySize{}})
	wantCode(t, "pty of size 0", err, agent.CodeBadRequest)
}

func testThousandConcurrentExecs(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	const n = 1000
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res, err := c.Exec(ctx, agent.ExecRequest{
				Argv: []string{"sh", "-c", `echo "out $0"; echo "err $0" >&2; exit $(($0 % 7))`, strconv.Itoa(i)},
			})
			if err != nil {
				errs <- fmt.Errorf("exec %d: %w", i, err)
				return
			}
			wantOut, wantErr := fmt.Sprintf("out %d\n", i), fmt.Sprintf("err %d\n", i)
			if res.ExitCode != i%7 || string(res.Stdout) != wantOut || string(res.Stderr) != wantErr {
				errs <- fmt.Errorf("exec %d: exit %d stdout %q stderr %q", i, res.ExitCode, res.Stdout, res.Stderr)
			}
		}()
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed++; failed <= 10 {
			t.Error(err)
		}
	}
	if failed > 10 {
		t.Errorf("... and %d more", failed-10)
	}
}
