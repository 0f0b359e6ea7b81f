// Package agenttest is the conformance suite of the guest agent: one set of tests that every transport (Unix
// socket, vsock, TCP, virtio-serial) and every backend (in-process, Docker, QEMU, Firecracker) must pass, so
// that behaviour never depends on the transport. It talks to the agent only through internal/agent/client and
// checks the guest's state only by running commands in it, so it works wherever the agent runs.
//
// The guest needs /bin/sh and the usual Debian/busybox tools (echo, printf, head, cat, sleep, cut, mktemp,
// sha256sum, pwd, rm, id, grep, stty, seq, tr, wc, ln, touch), a user "nobody", and the agent must run as root
// (the suite runs commands and writes files as other users).
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
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
)

// testTimeout bounds every subtest, so a hang fails with a message instead of stalling the run.
const testTimeout = 60 * time.Second

// Run runs the suite. dial is called once per subtest (subtests run in parallel) and returns a Dialer for the
// agent under test; every call of the Dialer must open a new connection to the same agent.
func Run(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	tests := []struct {
		name string
		fn   func(t *testing.T, dial func(t *testing.T) agent.Dialer)
	}{
		{"Health", testHealth},
		{"Echo", testEcho},
		{"ExitCode", testExitCode},
		{"Signal", testSignal},
		{"StderrSeparated", testStderrSeparated},
		{"EnvAndWorkingDir", testEnvAndWorkingDir},
		{"TimeoutKillsProcessGroup", testTimeoutKillsGroup},
		{"CommandNotFound", testNotFound},
		{"CannotExecute", testCannotExecute},
		{"BadWorkingDir", testBadWorkingDir},
		{"BadRequest", testBadRequest},
		{"OutputCap", testOutputCap},
		{"DefaultOutputCap", testDefaultOutputCap},
		{"BinaryOutput", testBinaryOutput},
		{"LargeBinaryStream", testLargeBinaryStream},
		{"StreamsWhileRunning", testStreamsWhileRunning},
		{"BackgroundProcessDoesNotHoldResult", testBackground},
		{"CancelKillsCommand", testCancelKills},
		{"ConcurrentExecs", testConcurrentExecs},
		{"SlowConsumerDoesNotBlockOthers", testSlowConsumer},
		{"DisconnectKillsCommand", testDisconnectKills},
		{"ReconnectsAfterBrokenConnection", testReconnect},
		{"Shell", testShell},
		{"User", testUser},
		{"Stdin", testStdin},
		{"PeakMemory", testPeakMemory},
		{"SignalDelivery", testSignalDelivery},
		{"KeepRunningOnDisconnect", testKeepRunningOnDisconnect},
		{"BackgroundProcesses", testBackgroundProcesses},
		{"Pty", testPty},
		{"ThousandConcurrentExecs", testThousandConcurrentExecs},
		{"FileTransfer", testFileTransfer},
		{"UploadIsAtomic", testUploadIsAtomic},
		{"FileOperations", testFileOperations},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, dial)
		})
	}
}

func newClient(t *testing.T, dial func(t *testing.T) agent.Dialer) *client.Client {
	t.Helper()
	c := client.New(dial(t))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// mustExec runs req and fails the test on a transport or request error (not on a non-zero exit code).
func mustExec(t *testing.T, ctx context.Context, c *client.Client, req agent.ExecRequest) *agent.ExecResult {
	t.Helper()
	res, err := c.Exec(ctx, req)
	if err != nil {
		t.Fatalf("Exec(%q): %v", req.Argv, err)
	}
	return res
}

func wantOutput(t *testing.T, res *agent.ExecResult, code int, stdout, stderr string) {
	t.Helper()
	if res.ExitCode != code || string(res.Stdout) != stdout || string(res.Stderr) != stderr {
		t.Fatalf("got exit %d stdout %q stderr %q; want exit %d stdout %q stderr %q",
			res.ExitCode, res.Stdout, res.Stderr, code, stdout, stderr)
	}
}

func testHealth(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	info, err := c.Health(testCtx(t))
	if err != nil {
		t.Fatalf("Health: %v", err)
	}
	if info.ProtocolVersion != agent.ProtocolVersion {
		t.Errorf("protocol version %d, want %d", info.ProtocolVersion, agent.ProtocolVersion)
	}
	if info.Version == "" {
		t.Error("empty agent version")
	}
	if info.Hostname == "" {
		t.Error("empty hostname")
	}
}

func testEcho(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	res := mustExec(t, testCtx(t), c, agent.ExecRequest{Argv: []string{"echo", "hello"}})
	wantOutput(t, res, 0, "hello\n", "")
	if res.Signal != "" || res.TimedOut || res.StdoutTruncated || res.StderrTruncated {
		t.Errorf("unexpected flags: %+v", res)
	}
	if res.Duration <= 0 || res.StartedAt.IsZero() {
		t.Errorf("duration %v, started at %v", res.Duration, res.StartedAt)
	}
}

func testExitCode(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	res := mustExec(t, testCtx(t), c, agent.ExecRequest{Argv: []string{"sh", "-c", "exit 3"}})
	wantOutput(t, res, 3, "", "")
}

func testSignal(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	res := mustExec(t, testCtx(t), c, agent.ExecRequest{Argv: []string{"sh", "-c", "kill -TERM $$"}})
	if res.ExitCode != 128+15 || res.Signal != "SIGTERM" || res.TimedOut {
		t.Fatalf("got exit %d signal %q timed out %v; want 143 SIGTERM", res.ExitCode, res.Signal, res.TimedOut)
	}
}

func testStderrSeparated(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	res := mustExec(t, testCtx(t), c, agent.ExecRequest{
		Argv: []string{"sh", "-c", "echo out1; echo err1 >&2; echo out2; echo err2 >&2"},
	})
	wantOutput(t, res, 0, "out1\nout2\n", "err1\nerr2\n")
}

func testEnvAndWorkingDir(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	script := `echo "$FOO|$HOME|$(pwd)"; case ":$PATH:" in *:/usr/bin:*) echo path-ok;; esac`

	res := mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"sh", "-c", script}})
	wantOutput(t, res, 0, "|/root|/\npath-ok\n", "")

	res = mustExec(t, ctx, c, agent.ExecRequest{
		Argv:       []string{"sh", "-c", script},
		Env:        map[string]string{"FOO": "bar baz", "HOME": "/tmp"},
		WorkingDir: "/tmp",
	})
	wantOutput(t, res, 0, "bar baz|/tmp|/tmp\npath-ok\n", "")

	// The request's PATH is the one the program is looked up in.
	res = mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"echo", "x"}, Env: map[string]string{"PATH": "/nonexistent"}})
	if res.ExitCode != 127 {
		t.Fatalf("with PATH=/nonexistent, echo exited %d, want 127", res.ExitCode)
	}
}

// alivePIDs returns which of pids are still running (not zombies) in the guest.
func alivePIDs(t *testing.T, ctx context.Context, c *client.Client, pids []string) []string {
	t.Helper()
	script := `for p; do s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null) && [ "$s" != Z ] && echo $p; done; true`
	res := mustExec(t, ctx, c, agent.ExecRequest{Argv: append([]string{"sh", "-c", script, "sh"}, pids...)})
	return strings.Fields(string(res.Stdout))
}

// waitDead polls the guest until none of pids runs, failing at the deadline.
func waitDead(t *testing.T, ctx context.Context, c *client.Client, pids []string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		alive := alivePIDs(t, ctx, c, pids)
		if len(alive) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v still alive", alive)
		}
		time.Sleep(20 * time.Millisecond) // polling the guest's state; there is no event to wait for
	}
}

func parsePIDs(t *testing.T, out []byte, n int) []string {
	t.Helper()
	pids := strings.Fields(string(out))
	if len(pids) != n {
		t.Fatalf("expected %d pids, got output %q", n, out)
	}
	for _, p := range pids {
		if _, err := strconv.Atoi(p); err != nil {
			t.Fatalf("bad pid %q in %q", p, out)
		}
	}
	return pids
}

func testTimeoutKillsGroup(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	const timeout = 500 * time.Millisecond
	res := mustExec(t, ctx, c, agent.ExecRequest{
		Argv:    []string{"sh", "-c", "sleep 100 & echo $!; sleep 100 & echo $!; echo $$; wait"},
		Timeout: timeout,
	})
	if !res.TimedOut || res.ExitCode != 137 || res.Signal != "SIGKILL" {
		t.Fatalf("got timed out %v exit %d signal %q; want timed out, 137, SIGKILL", res.TimedOut, res.ExitCode, res.Signal)
	}
	if res.Duration < timeout {
		t.Errorf("duration %v is shorter than the timeout %v", res.Duration, timeout)
	}
	waitDead(t, ctx, c, parsePIDs(t, res.Stdout, 3))
}

func testNotFound(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	for _, argv0 := range []string{"aetherium-no-such-command", "/nonexistent/aetherium-cmd"} {
		res := mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{argv0, "arg"}})
		if res.ExitCode != 127 || len(res.Stdout) != 0 || !bytes.Contains(res.Stderr, []byte(argv0)) {
			t.Errorf("%s: got exit %d stdout %q stderr %q; want 127 and the name on stderr", argv0, res.ExitCode, res.Stdout, res.Stderr)
		}
	}
}

func testCannotExecute(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	// mktemp makes a file with mode 0600: it exists but cannot be executed.
	res := mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"mktemp"}})
	path := strings.TrimSpace(string(res.Stdout))
	if res.ExitCode != 0 || path == "" {
		t.Fatalf("mktemp: exit %d, output %q %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, _ = c.Exec(ctx, agent.ExecRequest{Argv: []string{"rm", "-f", path}})
	})
	res = mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{path}})
	if res.ExitCode != 126 || !bytes.Contains(res.Stderr, []byte("permission denied")) {
		t.Fatalf("got exit %d stderr %q; want 126 and permission denied", res.ExitCode, res.Stderr)
	}
	res = mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"/tmp"}})
	if res.ExitCode != 126 {
		t.Fatalf("executing a directory: exit %d stderr %q; want 126", res.ExitCode, res.Stderr)
	}
}

func testBadWorkingDir(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	res := mustExec(t, testCtx(t), c, agent.ExecRequest{Argv: []string{"pwd"}, WorkingDir: "/nonexistent/dir"})
	if res.ExitCode != 127 || !bytes.Contains(res.Stderr, []byte("/nonexistent/dir")) {
		t.Fatalf("got exit %d stderr %q; want 127 naming the directory", res.ExitCode, res.Stderr)
	}
}

func testBadRequest(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	for _, req := range []agent.ExecRequest{
		{},
		{Argv: []string{""}},
		{Argv: []string{"echo"}, Env: map[string]string{"A=B": "c"}},
		{Argv: []string{"echo"}, WorkingDir: "relative/dir"},
		{Argv: []string{"echo"}, Timeout: -time.Second},
	} {
		_, err := c.Exec(ctx, req)
		var aerr *client.Error
		if !errors.As(err, &aerr) || aerr.Code != "bad_request" || errors.Is(err, client.ErrUnavailable) {
			t.Errorf("Exec(%+v): got %v; want a bad_request agent error", req, err)
		}
	}
	// The connection is still good after bad requests.
	wantOutput(t, mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"echo", "ok"}}), 0, "ok\n", "")
}

func testOutputCap(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	res := mustExec(t, ctx, c, agent.ExecRequest{
		Argv:           []string{"sh", "-c", "head -c 50000 /dev/zero; head -c 3000 /dev/zero >&2; exit 4"},
		MaxOutputBytes: 1000,
	})
	if res.ExitCode != 4 || len(res.Stdout) != 1000 || len(res.Stderr) != 1000 ||
		!res.StdoutTruncated || !res.StderrTruncated {
		t.Fatalf("got exit %d, %d/%d bytes, truncated %v/%v; want 4, 1000/1000, true/true",
			res.ExitCode, len(res.Stdout), len(res.Stderr), res.StdoutTruncated, res.StderrTruncated)
	}
	res = mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"head", "-c", "1000", "/dev/zero"}, MaxOutputBytes: 1000})
	if len(res.Stdout) != 1000 || res.StdoutTruncated {
		t.Fatalf("output exactly at the cap: %d bytes, truncated %v", len(res.Stdout), res.StdoutTruncated)
	}
}

func testDefaultOutputCap(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	n := agent.DefaultMaxOutputBytes
	res := mustExec(t, testCtx(t), c, agent.ExecRequest{Argv: []string{"head", "-c", strconv.Itoa(3*n + 7), "/dev/zero"}})
	if res.ExitCode != 0 || len(res.Stdout) != n || !res.StdoutTruncated || res.StderrTruncated {
		t.Fatalf("got exit %d, %d bytes, truncated %v/%v; want 0, %d, true/false",
			res.ExitCode, len(res.Stdout), res.StdoutTruncated, res.StderrTruncated, n)
	}
}

func testBinaryOutput(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	var format strings.Builder
	want := make([]byte, 256)
	for i := range 256 {
		fmt.Fprintf(&format, `\%03o`, i)
		want[i] = byte(i)
	}
	var stdout, stderr bytes.Buffer
	res, err := c.ExecStream(testCtx(t), agent.ExecRequest{Argv: []string{"printf", format.String()}}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("ExecStream: %v", err)
	}
	if res.ExitCode != 0 || !bytes.Equal(stdout.Bytes(), want) || stderr.Len() != 0 {
		t.Fatalf("exit %d, stdout %x (want %x), stderr %q", res.ExitCode, stdout.Bytes(), want, stderr.Bytes())
	}
	if res.Stdout != nil || res.Stderr != nil {
		t.Error("ExecStream's result carries output")
	}
}

func testLargeBinaryStream(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	// Random bytes made in the guest; the guest's own digest on stderr checks what arrived on stdout.
	script := `f=$(mktemp) && head -c 3000000 /dev/urandom > "$f" && sha256sum < "$f" >&2 && cat "$f"; s=$?; rm -f "$f"; exit $s`
	h := sha256.New()
	n := &countWriter{w: h}
	var stderr bytes.Buffer
	res, err := c.ExecStream(testCtx(t), agent.ExecRequest{Argv: []string{"sh", "-c", script}}, n, &stderr)
	if err != nil {
		t.Fatalf("ExecStream: %v", err)
	}
	fields := strings.Fields(stderr.String())
	if res.ExitCode != 0 || len(fields) == 0 {
		t.Fatalf("exit %d, stderr %q", res.ExitCode, stderr.String())
	}
	if got := hex.EncodeToString(h.Sum(nil)); n.n != 3000000 || got != fields[0] {
		t.Fatalf("received %d bytes with sha256 %s; the guest sent 3000000 with %s", n.n, got, fields[0])
	}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	return c.w.Write(p)
}

// lineWriter reports the first line written to it on a channel, and keeps everything.
type lineWriter struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	first chan string
	sent  bool
}

func newLineWriter() *lineWriter { return &lineWriter{first: make(chan string, 1)} }

func (w *lineWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if line, _, ok := bytes.Cut(w.buf.Bytes(), []byte("\n")); ok && !w.sent {
		w.sent = true
		w.first <- string(line)
	}
	return len(p), nil
}

func awaitLine(t *testing.T, ctx context.Context, w *lineWriter, errc <-chan error) string {
	t.Helper()
	select {
	case line := <-w.first:
		return line
	case err := <-errc:
		t.Fatalf("exec ended before its first line of output: %v", err)
	case <-ctx.Done():
		t.Fatalf("no output while the command runs: %v", ctx.Err())
	}
	return ""
}

func testStreamsWhileRunning(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	marker := "/tmp/aetherium-agenttest-" + hex.EncodeToString(rnd[:])
	w := newLineWriter()
	type result struct {
		res *agent.ExecResult
		err error
	}
	done := make(chan result, 1)
	errc := make(chan error, 1)
	go func() {
		// The command cannot print its second line before the client has seen the first one and created the
		// marker file: that only works if output is streamed while the command runs.
		res, err := c.ExecStream(ctx, agent.ExecRequest{
			Argv:    []string{"sh", "-c", `echo first; while [ ! -e "$0" ]; do sleep 0.01; done; rm -f "$0"; echo second`, marker},
			Timeout: 30 * time.Second,
		}, w, nil)
		if err != nil {
			errc <- err
		}
		done <- result{res, err}
	}()
	if line := awaitLine(t, ctx, w, errc); line != "first" {
		t.Fatalf("first line %q", line)
	}
	wantOutput(t, mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"touch", marker}}), 0, "", "")
	r := <-done
	if r.err != nil {
		t.Fatalf("ExecStream: %v", r.err)
	}
	if r.res.ExitCode != 0 || r.res.TimedOut || w.buf.String() != "first\nsecond\n" {
		t.Fatalf("exit %d timed out %v output %q", r.res.ExitCode, r.res.TimedOut, w.buf.String())
	}
}

func testBackground(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	// The background sleep keeps stdout open long after sh exits; the result must not wait for it (it would
	// take 1000s, far past this test's deadline).
	res := mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"sh", "-c", "sleep 1000 & echo $!; echo done"}})
	lines := strings.Fields(string(res.Stdout))
	if res.ExitCode != 0 || res.TimedOut || len(lines) != 2 || lines[1] != "done" {
		t.Fatalf("got exit %d timed out %v stdout %q", res.ExitCode, res.TimedOut, res.Stdout)
	}
	mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"kill", "-9", lines[0]}})
	waitDead(t, ctx, c, lines[:1])
}

// startPIDCommand starts `sh -c script` streaming on c and returns the pids of its first output line.
func startPIDCommand(t *testing.T, ctx context.Context, c *client.Client, script string, n int) ([]string, <-chan error) {
	t.Helper()
	w := newLineWriter()
	errc := make(chan error, 1)
	go func() {
		_, err := c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", script}, Timeout: 60 * time.Second}, w, nil)
		errc <- err
	}()
	line := awaitLine(t, ctx, w, errc)
	return parsePIDs(t, []byte(line), n), errc
}

func testCancelKills(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pids, errc := startPIDCommand(t, cctx, c, `sleep 100 & echo $$ $!; wait`, 2)
	cancel()
	err := <-errc
	if !errors.Is(err, context.Canceled) || errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("cancelled ExecStream returned %v; want context.Canceled", err)
	}
	// The same client (and connection) keeps working, and the command with its child is gone.
	waitDead(t, ctx, c, pids)
}

func testDisconnectKills(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := client.New(dial(t))
	ctx := testCtx(t)
	pids, errc := startPIDCommand(t, ctx, c, `sleep 100 & echo $$ $!; wait`, 2)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-errc; !errors.Is(err, client.ErrClosed) {
		t.Fatalf("ExecStream in flight during Close returned %v; want ErrClosed", err)
	}
	waitDead(t, ctx, newClient(t, dial), pids)
}

func testConcurrentExecs(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	const n = 100
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
	for err := range errs {
		t.Error(err)
	}
}

// stuckWriter blocks its first Write until released.
type stuckWriter struct {
	stuck   chan struct{}
	release chan struct{}
	once    sync.Once
	n       atomic.Int64
}

func (w *stuckWriter) Write(p []byte) (int, error) {
	w.once.Do(func() {
		close(w.stuck)
		<-w.release
	})
	w.n.Add(int64(len(p)))
	return len(p), nil
}

func testSlowConsumer(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	c := newClient(t, dial)
	ctx := testCtx(t)
	w := &stuckWriter{stuck: make(chan struct{}), release: make(chan struct{})}
	const size = 20 << 20
	type result struct {
		res *agent.ExecResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}}, w, nil)
		done <- result{res, err}
	}()
	select {
	case <-w.stuck:
	case r := <-done:
		t.Fatalf("exec ended without output: %+v %v", r.res, r.err)
	}
	// One consumer is stuck with megabytes still to come; the connection must still carry other requests.
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("Health while another stream is stuck: %v", err)
	}
	wantOutput(t, mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"echo", "through"}}), 0, "through\n", "")
	close(w.release)
	r := <-done
	if r.err != nil || r.res.ExitCode != 0 || w.n.Load() != size {
		t.Fatalf("stuck exec: %v, result %+v, %d of %d bytes", r.err, r.res, w.n.Load(), size)
	}
}

func testReconnect(t *testing.T, dial func(t *testing.T) agent.Dialer) {
	d := dial(t)
	var (
		mu    sync.Mutex
		conns []net.Conn
	)
	c := client.New(func(ctx context.Context) (net.Conn, error) {
		nc, err := d(ctx)
		if err == nil {
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
		return nc, err
	})
	t.Cleanup(func() { _ = c.Close() })
	ctx := testCtx(t)
	dials := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(conns)
	}
	last := func() net.Conn {
		mu.Lock()
		defer mu.Unlock()
		return conns[len(conns)-1]
	}

	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("Health: %v", err)
	}
	// Idle connection breaks: the next call notices and goes through on a new one.
	_ = last().Close()
	if _, err := c.Health(ctx); err != nil {
		t.Fatalf("Health after the connection broke: %v", err)
	}
	if got := dials(); got != 2 {
		t.Fatalf("%d dials, want 2", got)
	}
	// Connection breaks under a running command: that call fails as unavailable, the next one reconnects.
	_, errc := startPIDCommand(t, ctx, c, `echo $$; exec sleep 100`, 1)
	_ = last().Close()
	if err := <-errc; !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("exec on a broken connection returned %v; want ErrUnavailable", err)
	}
	wantOutput(t, mustExec(t, ctx, c, agent.ExecRequest{Argv: []string{"echo", "again"}}), 0, "again\n", "")
	if got := dials(); got != 3 {
		t.Fatalf("%d dials, want 3", got)
	}
}
