//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
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
		in, network, addr string
		ok                bool
	}{
		{"unix:/run/aetherium/agent.sock", "unix", "/run/aetherium/agent.sock", true},
		{"unix:/tmp/../tmp/a.sock", "unix", "/tmp/a.sock", true},
		{"unix:relative.sock", "", "", false},
		{"unix:", "", "", false},
		{"tcp:127.0.0.1:9999", "tcp", "127.0.0.1:9999", true},
		{"tcp:127.0.0.1:0", "tcp", "127.0.0.1:0", true},
		{"tcp:[::1]:9999", "tcp", "[::1]:9999", true},
		{"tcp:0.0.0.0:9999", "", "", false},
		{"tcp::9999", "", "", false},
		{"tcp:10.0.0.1:9999", "", "", false},
		{"tcp:localhost:9999", "", "", false},
		{"tcp:127.0.0.1", "", "", false},
		{"vsock:3:9999", "", "", false},
		{"/run/agent.sock", "", "", false},
	} {
		network, addr, err := parseListen(tc.in)
		if (err == nil) != tc.ok || network != tc.network || addr != tc.addr {
			t.Errorf("parseListen(%q) = %q, %q, %v", tc.in, network, addr, err)
		}
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
	if code := run(t.Context(), []string{"--listen", "tcp:0.0.0.0:0"}, io.Discard, io.Discard); code != 1 {
		t.Errorf("non-loopback TCP: exit %d, want 1", code)
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
