//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/guestinit"
	"github.com/aetherium/aetherium/internal/agent/transport"
)

// TestMain lets the tests run this very binary as the agent (as a child process, under its own PID namespace),
// so that signals and PID 1 are tested for real without building a second binary.
func TestMain(m *testing.M) {
	if os.Getenv("AETHERIUM_AGENT_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func TestParseListen(t *testing.T) {
	for _, tc := range []struct {
		in       string
		token    bool
		kind     string
		addr     string
		port     uint32
		auth, ok bool
	}{
		{in: "unix:/run/aetherium/agent.sock", kind: "unix", addr: "/run/aetherium/agent.sock", ok: true},
		{in: "unix:/tmp/../tmp/a.sock", kind: "unix", addr: "/tmp/a.sock", ok: true},
		{in: "unix:relative.sock"},
		{in: "unix:"},
		{in: "tcp:127.0.0.1:9999", kind: "tcp", addr: "127.0.0.1:9999", ok: true},
		{in: "tcp:127.0.0.1:0", kind: "tcp", addr: "127.0.0.1:0", ok: true},
		{in: "tcp:[::1]:9999", kind: "tcp", addr: "[::1]:9999", ok: true},
		{in: "tcp:127.0.0.1:9999", token: true, kind: "tcp", addr: "127.0.0.1:9999", auth: true, ok: true},
		{in: "tcp:0.0.0.0:9999"},
		{in: "tcp::9999"},
		{in: "tcp:10.0.0.1:9999"},
		{in: "tcp:0.0.0.0:9999", token: true, kind: "tcp", addr: "0.0.0.0:9999", auth: true, ok: true},
		{in: "tcp::9999", token: true, kind: "tcp", addr: ":9999", auth: true, ok: true},
		{in: "tcp:10.0.0.1:9999", token: true, kind: "tcp", addr: "10.0.0.1:9999", auth: true, ok: true},
		{in: "tcp:localhost:9999"},
		{in: "tcp:localhost:9999", token: true},
		{in: "tcp:127.0.0.1"},
		{in: "vsock", kind: "vsock", port: 9999, ok: true},
		{in: "vsock:", kind: "vsock", port: 9999, ok: true},
		{in: "vsock:1024", kind: "vsock", port: 1024, ok: true},
		{in: "vsock:3:9999"},
		{in: "vsock:-1"},
		{in: "virtio-serial:agent", kind: "virtio-serial", addr: "agent", ok: true},
		{in: "virtio-serial:"},
		{in: "virtio-serial:../x"},
		{in: "/run/agent.sock"},
		{in: "udp:127.0.0.1:1"},
	} {
		spec, err := parseListen(tc.in, tc.token)
		if (err == nil) != tc.ok {
			t.Errorf("parseListen(%q, token %v): %v", tc.in, tc.token, err)
			continue
		}
		if tc.ok && (spec.kind != tc.kind || spec.address != tc.addr || spec.port != tc.port || spec.auth != tc.auth) {
			t.Errorf("parseListen(%q, token %v) = %+v", tc.in, tc.token, spec)
		}
	}
	// The refusal says what to do about it.
	if _, err := parseListen("tcp:0.0.0.0:9999", false); err == nil || !strings.Contains(err.Error(), "--token-file") {
		t.Errorf("refusal without a token: %v", err)
	}
}

func TestKernelOptions(t *testing.T) {
	got := kernelOptions(`console=ttyS0 aetherium.listen=vsock:9999,tcp::7000 aetherium.token_file=/dev/vdb ` +
		`aetherium.hostname="my vm" aetherium.bare aetherium.=x reboot=t -- --init aetherium.listen=bad`)
	want := map[string]string{"listen": "vsock:9999,tcp::7000", "token_file": "/dev/vdb", "hostname": "my vm"}
	if len(got) != len(want) {
		t.Fatalf("kernelOptions = %q, want %q", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %q, want %q", k, got[k], v)
		}
	}
	if got := kernelOptions(""); len(got) != 0 {
		t.Errorf("empty command line: %q", got)
	}
}

func TestFlags(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(t.Context(), []string{"--version"}, &out, &errOut); code != 0 || out.String() != "aetherium-agent "+version+"\n" {
		t.Fatalf("--version: exit %d, output %q %q", code, out.String(), errOut.String())
	}
	for _, args := range [][]string{{"--nope"}, {"extra"}, {"--log-level", "loud"}} {
		if code := run(t.Context(), args, io.Discard, io.Discard); code != 2 {
			t.Errorf("%q: exit %d, want 2", args, code)
		}
	}
	var logs bytes.Buffer
	if code := run(t.Context(), []string{"--listen", "tcp:0.0.0.0:0"}, io.Discard, &logs); code != 1 || !strings.Contains(logs.String(), "without a token") {
		t.Errorf("non-loopback TCP without a token: exit %d, logs %q; want 1 and the reason", code, logs.String())
	}
	if code := run(t.Context(), []string{"--listen", "tcp:127.0.0.1:0", "--token-file", "/nonexistent/token"}, io.Discard, io.Discard); code != 1 {
		t.Errorf("missing token file: exit %d, want 1", code)
	}
	logs.Reset()
	if code := run(t.Context(), []string{"--listen", "virtio-serial:aetherium-test-no-such-port"}, io.Discard, &logs); code != 1 || !strings.Contains(logs.String(), "no virtio-serial port") {
		t.Errorf("missing virtio-serial port: exit %d, logs %q", code, logs.String())
	}
	// A listener that fails closes the ones already open: the socket is not left behind.
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	path := filepath.Join(socketDir(t), "agent.sock")
	if code := run(t.Context(), []string{"--listen", "unix:" + path, "--listen", "tcp:" + busy.Addr().String()}, io.Discard, io.Discard); code != 1 {
		t.Errorf("second listener failing: exit %d, want 1", code)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket of the first listener left behind: %v", err)
	}
}

func socketDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agentcmd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func waitReady(t *testing.T, path string) *client.Client {
	t.Helper()
	c := client.New(agent.UnixDialer(path))
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatalf("agent not ready: %v", err)
	}
	return c
}

// TestServeUnix runs the agent in process: it replaces a stale socket, makes it 0600, serves, and on shutdown
// exits 0 and removes the socket.
func TestServeUnix(t *testing.T) {
	path := filepath.Join(socketDir(t), "sub", "agent.sock")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	// A stale socket, as a crashed agent leaves it: the file exists, nobody listens.
	stale, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	stale.SetUnlinkOnClose(false)
	_ = stale.Close()

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"--listen", "unix:" + path, "--log-level", "warn"}, io.Discard, io.Discard)
	}()

	c := waitReady(t, path)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a 0600 socket", fi.Mode())
	}
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", "hi"}})
	if err != nil || string(res.Stdout) != "hi\n" {
		t.Fatalf("Exec: %+v %v", res, err)
	}
	cancel()
	if code := <-exited; code != 0 {
		t.Fatalf("exit code %d after shutdown", code)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

func TestRefusesToClobber(t *testing.T) {
	dir := socketDir(t)

	file := filepath.Join(dir, "not-a-socket")
	if err := os.WriteFile(file, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	if code := run(t.Context(), []string{"--listen", "unix:" + file}, io.Discard, io.Discard); code != 1 {
		t.Fatalf("listening over a regular file: exit %d, want 1", code)
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Fatalf("the file was touched: %q %v", b, err)
	}

	live := filepath.Join(dir, "live.sock")
	l, err := net.Listen("unix", live)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	if code := run(t.Context(), []string{"--listen", "unix:" + live}, io.Discard, io.Discard); code != 1 {
		t.Fatalf("listening over a live socket: exit %d, want 1", code)
	}
	if _, err := os.Lstat(live); err != nil {
		t.Fatalf("the live socket was removed: %v", err)
	}
}

func agentCmd(t *testing.T, argv0 string, args ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	cmd := exec.Command(argv0, args...)
	cmd.Env = append(os.Environ(), "AETHERIUM_AGENT_TEST_MAIN=1")
	var logs bytes.Buffer
	cmd.Stderr = &logs
	return cmd, &logs
}

// TestSIGTERM runs the agent as a real process: SIGTERM kills its running commands, removes the socket and
// exits 0.
func TestSIGTERM(t *testing.T) {
	path := filepath.Join(socketDir(t), "agent.sock")
	cmd, logs := agentCmd(t, os.Args[0], "--listen", "unix:"+path, "--shutdown-grace", "100ms")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	c := waitReady(t, path)
	info, err := c.Health(t.Context())
	if err != nil || info.PID1 {
		t.Fatalf("Health: %+v %v", info, err)
	}
	started := make(chan struct{})
	execErr := make(chan error, 1)
	go func() {
		_, err := c.ExecStream(t.Context(), agent.ExecRequest{Argv: []string{"sh", "-c", "echo up; exec sleep 100"}},
			onFirstWrite(func() { close(started) }), nil)
		execErr <- err
	}()
	<-started
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		exited <- err // for the cleanup
		if err != nil {
			t.Fatalf("agent exited with %v; logs:\n%s", err, logs)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent did not exit after SIGTERM; logs:\n%s", logs)
	}
	if err := <-execErr; !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("command running at shutdown: %v; want ErrUnavailable", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
	if !strings.Contains(logs.String(), "agent stopped") {
		t.Fatalf("logs:\n%s", logs)
	}
}

type onFirstWrite func()

func (f onFirstWrite) Write(p []byte) (int, error) {
	if f != nil {
		f()
	}
	return len(p), nil
}

// TestPID1 runs the agent as PID 1 of a new PID namespace (with its own /proc), as Docker does: it must reap
// the orphans that commands leave behind, without disturbing the commands' own exit statuses, and shut down
// on SIGTERM.
func TestPID1(t *testing.T) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skipf("SKIPPED: no unshare(1) to make a PID namespace: %v", err)
	}
	probe := exec.Command(unshare, "--pid", "--fork", "--mount-proc", "true")
	if out, err := probe.CombinedOutput(); err != nil {
		t.Skipf("SKIPPED: cannot make a PID namespace here (needs root or user namespaces): %v %s", err, out)
	}
	path := filepath.Join(socketDir(t), "agent.sock")
	// --kill-child: if unshare dies, the agent gets SIGTERM (that is how this test stops it).
	cmd, logs := agentCmd(t, unshare, "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM",
		os.Args[0], "--listen", "unix:"+path, "--log-level", "debug")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})

	c := waitReady(t, path)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	info, err := c.Health(ctx)
	if err != nil || !info.PID1 {
		t.Fatalf("Health: %+v %v; want PID1", info, err)
	}

	// Each command leaves three orphans that exit soon after; they are re-parented to the agent. Meanwhile
	// other commands' exit codes must come through intact.
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "for i in 1 2 3; do sleep 0.2 & echo $!; done"}})
	if err != nil || res.ExitCode != 0 {
		t.Fatalf("orphan maker: %+v %v", res, err)
	}
	orphans := strings.Fields(string(res.Stdout))
	if len(orphans) != 3 {
		t.Fatalf("orphan pids %q", res.Stdout)
	}
	for i := range 20 {
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "(sleep 0.01 &); exit $0", string(rune('0' + i%10))}})
		if err != nil || res.ExitCode != i%10 {
			t.Fatalf("exec %d under the reaper: %+v %v", i, res, err)
		}
	}
	// Reaped means gone from the process table, not a zombie.
	deadline := time.Now().Add(20 * time.Second)
	for {
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: append([]string{"sh", "-c", `for p; do [ -e /proc/$p ] && echo $p; done; true`, "sh"}, orphans...)})
		if err != nil {
			t.Fatal(err)
		}
		if len(bytes.TrimSpace(res.Stdout)) == 0 {
			break
		}
		if time.Now().After(deadline) {
			state, _ := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "cat /proc/[0-9]*/stat"}})
			t.Fatalf("orphans %q never reaped; processes:\n%s", res.Stdout, state.Stdout)
		}
		time.Sleep(20 * time.Millisecond) // polling the guest's process table
	}
	res, err = c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", `grep -l "^State:.*Z" /proc/[0-9]*/status; true`}})
	if err != nil || len(bytes.TrimSpace(res.Stdout)) != 0 {
		t.Fatalf("zombies left: %q %v", res.Stdout, err)
	}

	// Stop: unshare's death sends the agent SIGTERM; a clean shutdown removes the socket.
	_ = cmd.Process.Kill()
	deadline = time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent as PID 1 did not shut down on SIGTERM; logs:\n%s", logs)
		}
		time.Sleep(10 * time.Millisecond) // polling for the socket's removal
	}
}

// freePort returns a TCP port that was free a moment ago.
func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(l.Addr().String())
	_ = l.Close()
	return port
}

func writeToken(t *testing.T, dir string) (path, token string) {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	token = hex.EncodeToString(b[:])
	path = filepath.Join(dir, "token")
	// As on a raw token disk: NUL padding after the token.
	if err := os.WriteFile(path, append([]byte(token+"\n"), make([]byte, 100)...), 0o600); err != nil {
		t.Fatal(err)
	}
	return path, token
}

// startAgent runs the agent in process with sys until the test ends; the returned function stops it and
// returns its exit code.
func startAgent(t *testing.T, sys system, args ...string) func() int {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	exited := make(chan int, 1)
	go func() { exited <- runWith(ctx, sys, args, io.Discard, testLogWriter(t)) }()
	var code *int
	stop := func() int {
		if code == nil {
			cancel()
			c := <-exited
			code = &c
		}
		return *code
	}
	t.Cleanup(func() { stop() })
	return stop
}

func testLogWriter(t *testing.T) io.Writer {
	if os.Getenv("AETHERIUM_AGENT_TEST_LOG") != "" {
		return os.Stderr
	}
	return io.Discard
}

func plainTCP(addr string) agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
}

func health(t *testing.T, d agent.Dialer) (agent.Info, error) {
	t.Helper()
	c := client.New(d)
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return c.WaitReady(ctx)
}

// TestSeveralListeners serves a Unix socket and a token-authenticated TCP port on all interfaces at once.
func TestSeveralListeners(t *testing.T) {
	dir := socketDir(t)
	tokenFile, token := writeToken(t, dir)
	path := filepath.Join(dir, "agent.sock")
	port := freePort(t)
	stop := startAgent(t, realSystem(), "--listen", "unix:"+path, "--listen", "tcp::"+port, "--token-file", tokenFile)

	if _, err := health(t, agent.UnixDialer(path)); err != nil {
		t.Fatalf("over the Unix socket: %v", err)
	}
	addr := net.JoinHostPort("127.0.0.1", port)
	if _, err := health(t, transport.TCPDialer(addr, token)); err != nil {
		t.Fatalf("over TCP with the token: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := transport.TCPDialer(addr, strings.Repeat("x", 64))(ctx); !errors.Is(err, transport.ErrAuth) {
		t.Fatalf("TCP with a wrong token: %v; want ErrAuth", err)
	}
	c := client.New(plainTCP(addr))
	defer c.Close()
	if _, err := c.Health(ctx); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("TCP without the preamble: %v; want ErrUnavailable", err)
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left behind: %v", err)
	}
}

// fakeGuest is the PID-1 side of a VM, recorded instead of done.
type fakeGuest struct {
	mu        sync.Mutex
	cmdline   string
	inits     []guestinit.Options
	poweredBy string // the command line power-off was chosen from
	powerOffs int
}

func (g *fakeGuest) system() system {
	return system{
		pid1: func() bool { return false },
		initGuest: func(o guestinit.Options) error {
			g.mu.Lock()
			defer g.mu.Unlock()
			g.inits = append(g.inits, o)
			return nil
		},
		readFile: func(path string) ([]byte, error) {
			if path != "/proc/cmdline" {
				return nil, os.ErrNotExist
			}
			return []byte(g.cmdline), nil
		},
		powerOffBy: func(cmdline string) func() error {
			g.mu.Lock()
			g.poweredBy = cmdline
			g.mu.Unlock()
			return func() error {
				g.mu.Lock()
				defer g.mu.Unlock()
				g.powerOffs++
				return nil
			}
		},
	}
}

// TestInitFromKernelCommandLine runs the --init path with the guest's duties faked: settings come from the
// kernel command line (flags win over it), and the end is a power-off, not an exit.
func TestInitFromKernelCommandLine(t *testing.T) {
	dir := socketDir(t)
	tokenFile, token := writeToken(t, dir)
	path := filepath.Join(dir, "agent.sock")
	port := freePort(t)
	g := &fakeGuest{cmdline: "console=ttyS0 reboot=k aetherium.listen=unix:" + path + ",tcp:0.0.0.0:" + port +
		" aetherium.token_file=" + tokenFile + " aetherium.hostname=vm-1 aetherium.log_level=debug -- --init aetherium.listen=tcp:0.0.0.0:1\n"}
	stop := startAgent(t, g.system(), "--init")

	if _, err := health(t, agent.UnixDialer(path)); err != nil {
		t.Fatalf("over the Unix socket from the command line: %v", err)
	}
	if _, err := health(t, transport.TCPDialer(net.JoinHostPort("127.0.0.1", port), token)); err != nil {
		t.Fatalf("over TCP with the token from the command line's file: %v", err)
	}
	if code := stop(); code != 0 {
		t.Fatalf("exit code %d", code)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if len(g.inits) != 2 || g.inits[0].Hostname != "" || g.inits[1].Hostname != "vm-1" {
		t.Fatalf("guest init calls %+v; want one, then one for the hostname", g.inits)
	}
	if g.powerOffs != 1 || g.poweredBy != g.cmdline {
		t.Fatalf("%d power-offs chosen from %q; want 1 from the command line", g.powerOffs, g.poweredBy)
	}
}

// TestInitTokenOnCommandLine: aetherium.token works (with a warning), and --listen given to the agent wins
// over aetherium.listen.
func TestInitTokenOnCommandLine(t *testing.T) {
	token := strings.Repeat("ab", 32)
	port := freePort(t)
	g := &fakeGuest{cmdline: "aetherium.token=" + token + " aetherium.listen=unix:/nonexistent/dir/never.sock"}
	var logs syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	exited := make(chan int, 1)
	go func() {
		exited <- runWith(ctx, g.system(), []string{"--init", "--listen", "tcp:0.0.0.0:" + port}, io.Discard, &logs)
	}()
	if _, err := health(t, transport.TCPDialer(net.JoinHostPort("127.0.0.1", port), token)); err != nil {
		t.Fatalf("over TCP with the token from the command line: %v", err)
	}
	cancel()
	if code := <-exited; code != 0 {
		t.Fatalf("exit code %d", code)
	}
	if !strings.Contains(logs.String(), "kernel command line") {
		t.Fatalf("no warning about the token on the command line in logs:\n%s", logs.String())
	}

	// A bad token on the command line ends the VM, not just the agent.
	g = &fakeGuest{cmdline: "aetherium.token=short"}
	if code := runWith(t.Context(), g.system(), []string{"--init"}, io.Discard, io.Discard); code != 1 || g.powerOffs != 1 {
		t.Fatalf("bad token: exit %d, %d power-offs; want 1 and 1", code, g.powerOffs)
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
