//go:build linux

package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/protocol"
	"github.com/aetherium/aetherium/internal/agent/server"
)

func newTestClient(t *testing.T, path string) *client.Client {
	t.Helper()
	c := client.New(agent.UnixDialer(path))
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// TestSupplementaryGroups runs a command as a user of a database of the test's own, so that the supplementary
// groups really set by setgroups can be checked (the guest's own users rarely have any).
func TestSupplementaryGroups(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	if err := os.WriteFile(passwd, []byte("tester:x:4242:4242:Tester:/home/tester:/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(group, []byte("tester:x:4242:\nbuilders:x:5001:someone,tester\nother:x:5002:someone\nops:x:5003:tester\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newTestClient(t, unixServer(t, server.Config{PasswdFile: passwd, GroupFile: group}))
	res, err := c.Exec(t.Context(), agent.ExecRequest{Shell: `id -u; id -g; id -G; echo "$HOME $USER"`, User: "tester"})
	if err != nil || string(res.Stdout) != "4242\n4242\n4242 5001 5003\n/home/tester tester\n" {
		t.Fatalf("as tester: %+v %v %q", res, err, res.Stdout)
	}
	res, err = c.Exec(t.Context(), agent.ExecRequest{Shell: `id -g; id -G`, User: "tester:other"})
	if err != nil || string(res.Stdout) != "5002\n5002 5001 5003\n" {
		t.Fatalf("as tester:other: %v %q", err, res.Stdout)
	}
	// Files get the same owners.
	target := filepath.Join(dir, "owned")
	if _, err := c.Upload(t.Context(), agent.UploadRequest{Path: target, Owner: "tester:builders"}, strings.NewReader("x")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(target)
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 4242 || fi.Sys().(*syscall.Stat_t).Gid != 5001 {
		t.Fatalf("owner of the upload: %v %+v", err, fi.Sys())
	}
}

func TestPowerOff(t *testing.T) {
	called := make(chan struct{})
	var calls atomic.Int32
	path := unixServer(t, server.Config{PowerOff: func() error {
		if calls.Add(1) == 1 {
			close(called)
		}
		return nil
	}})
	c := newTestClient(t, path)
	if err := c.PowerOff(t.Context()); err != nil {
		t.Fatalf("PowerOff: %v", err)
	}
	select {
	case <-called:
	case <-time.After(10 * time.Second):
		t.Fatal("the power-off handler was not called")
	}

	// An agent without a handler does not offer it.
	other := newTestClient(t, unixServer(t, server.Config{}))
	if err := other.PowerOff(t.Context()); !errors.Is(err, client.ErrUnsupported) {
		t.Fatalf("PowerOff without a handler: %v", err)
	}
	if calls.Load() != 1 {
		t.Fatalf("handler called %d times", calls.Load())
	}
}

// TestAgentRestart: the agent goes away and comes back on the same socket; the same client carries on.
func TestAgentRestart(t *testing.T) {
	path := socketPath(t)
	serve := func() (*server.Server, chan error) {
		l, err := net.Listen("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		srv := server.New(server.Config{Logger: testLogger(t)})
		done := make(chan error, 1)
		go func() { done <- srv.Serve(l) }()
		return srv, done
	}
	srv, done := serve()
	c := newTestClient(t, path)
	ctx := t.Context()
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	// A command in flight when the agent dies fails as unavailable, never as a result.
	errc := make(chan error, 1)
	started := make(chan struct{})
	go func() {
		_, err := c.ExecStream(ctx, agent.ExecRequest{Shell: "echo up; exec sleep 100"}, writerFunc(func([]byte) {
			select {
			case <-started:
			default:
				close(started)
			}
		}), nil)
		errc <- err
	}()
	<-started
	_ = srv.Close()
	<-done
	if err := <-errc; !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("exec across the restart: %v", err)
	}
	_, err := c.Health(ctx)
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Health while the agent is down: %v", err)
	}
	srv, done = serve()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady after the restart: %v", err)
	}
	res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", "back"}})
	if err != nil || string(res.Stdout) != "back\n" {
		t.Fatalf("exec after the restart: %+v %v", res, err)
	}
}

// peakRSS resets this process's peak resident set to the current one and returns a function that reports how
// far the peak rose since (KiB).
func peakRSS(t *testing.T) func() int64 {
	t.Helper()
	read := func(key string) int64 {
		f, err := os.Open("/proc/self/status")
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
				n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				if err != nil {
					t.Fatal(err)
				}
				return n
			}
		}
		t.Fatalf("no %s in /proc/self/status", key)
		return 0
	}
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Skipf("cannot reset the peak RSS: %v", err)
	}
	base := read("VmRSS")
	return func() int64 { return read("VmHWM") - base }
}

// TestHugeOutputBoundedMemory streams 2 GiB (512 MiB under the race detector) through ExecStream into io.Discard.
// Agent and client are both in this process, so its peak resident set covers both ends: it must stay far below
// the output's size.
func TestHugeOutputBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 2 GiB")
	}
	c := newTestClient(t, unixServer(t, server.Config{}))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	size := 2 << 30
	if raceEnabled {
		size = 512 << 20
	}
	grew := peakRSS(t)
	var n counter
	start := time.Now()
	res, err := c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"head", "-c", strconv.Itoa(size), "/dev/zero"}}, &n, nil)
	elapsed := time.Since(start)
	if err != nil || res.ExitCode != 0 || int(n) != size {
		t.Fatalf("ExecStream: %+v %v, %d bytes", res, err, n)
	}
	peak := grew()
	t.Logf("%d MiB in %v (%.0f MB/s); peak RSS rose by %d KiB", size>>20, elapsed.Round(time.Millisecond),
		float64(size)/elapsed.Seconds()/1e6, peak)
	if peak > 64<<10 {
		t.Fatalf("peak RSS rose by %d KiB while streaming: output is being buffered", peak)
	}
}

// TestInputWindowEnforced: a client that sends more input than the agent's window breaks the protocol.
func TestInputWindowEnforced(t *testing.T) {
	path := unixServer(t, server.Config{Window: 4096})
	c := dialRaw(t, path)
	if h := c.hello(protocol.Version); h.Window != 4096 {
		t.Fatalf("agent window %d", h.Window)
	}
	// A command that never reads its stdin: everything sent stays queued in the agent.
	c.send(protocol.FrameRequest, 1, protocol.Request{Method: "exec", Params: json.RawMessage(`{"argv":["sleep","100"],"stdin":true}`)})
	c.send(protocol.FrameData, 1, protocol.DataPayload(protocol.ChannelStdin, make([]byte, 4096)))
	c.send(protocol.FrameData, 1, protocol.DataPayload(protocol.ChannelStdin, []byte{1}))
	c.expectClosed()

	// A HEADER from a client is not in the protocol either.
	c = dialRaw(t, path)
	c.hello(protocol.Version)
	c.send(protocol.FrameHeader, 1, []byte(`{}`))
	c.expectClosed()
}

// TestInputCreditReturned: input the command consumes comes back as WINDOW credit, so input of any size flows
// through a small window.
func TestInputCreditReturned(t *testing.T) {
	path := unixServer(t, server.Config{Window: 1024})
	c := newTestClient(t, path)
	in := strings.Repeat("0123456789abcdef", 1<<16) // 1 MiB through a 1 KiB window
	var out strings.Builder
	res, err := c.ExecInteractive(t.Context(), agent.ExecRequest{Argv: []string{"cat"}},
		agent.ExecIO{Stdin: strings.NewReader(in), Stdout: &out})
	if err != nil || res.ExitCode != 0 || out.String() != in {
		t.Fatalf("cat through a 1 KiB window: %+v %v, %d bytes back", res, err, out.Len())
	}
}

func TestProcessLimit(t *testing.T) {
	c := newTestClient(t, unixServer(t, server.Config{MaxProcesses: 2}))
	ctx := t.Context()
	start := func(id, script string) error {
		_, err := c.StartProcess(ctx, agent.ExecRequest{ID: id, Shell: script})
		return err
	}
	if err := start("a", "exit 1"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.WaitProcess(ctx, "a", 0); err != nil {
		t.Fatal(err)
	}
	if err := start("b", "exec sleep 100"); err != nil {
		t.Fatal(err)
	}
	// Full: the exited one makes room.
	if err := start("c", "exec sleep 100"); err != nil {
		t.Fatalf("third process with an exited one to forget: %v", err)
	}
	if _, err := c.WaitProcess(ctx, "a", 0); !client.IsCode(err, agent.CodeNotFound) {
		t.Fatalf("the exited process was not forgotten: %v", err)
	}
	// Full of running ones: refused. Streamed execs do not count.
	if err := start("d", "true"); !client.IsCode(err, agent.CodeTooManyProcesses) {
		t.Fatalf("fourth process: %v", err)
	}
	if res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}}); err != nil || res.ExitCode != 0 {
		t.Fatalf("exec while the table is full: %v", err)
	}
	for _, id := range []string{"b", "c"} {
		if err := c.Signal(ctx, id, "KILL"); err != nil {
			t.Fatal(err)
		}
	}
}

func TestFinishedProcessesExpire(t *testing.T) {
	c := newTestClient(t, unixServer(t, server.Config{FinishedProcessTTL: 50 * time.Millisecond}))
	ctx := t.Context()
	if _, err := c.StartProcess(ctx, agent.ExecRequest{ID: "short", Argv: []string{"true"}}); err != nil {
		t.Fatal(err)
	}
	if info, err := c.WaitProcess(ctx, "short", 0); err != nil || info.State != agent.ProcessExited {
		t.Fatalf("%+v %v", info, err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		procs, err := c.ListProcesses(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(procs) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("exited process still kept: %+v", procs)
		}
		time.Sleep(20 * time.Millisecond) // polling the agent's state; expiry has no event
	}
}

// TestCloseKillsBackgroundProcesses: background processes belong to the agent; when it stops, they go.
func TestCloseKillsBackgroundProcesses(t *testing.T) {
	path := socketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Logger: testLogger(t)})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	c := newTestClient(t, path)
	info, err := c.StartProcess(t.Context(), agent.ExecRequest{Argv: []string{"sleep", "100"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	<-done
	// Close waited for the process to be reaped: it is gone, not a zombie.
	if _, err := os.Stat("/proc/" + strconv.Itoa(info.PID)); !errors.Is(err, os.ErrNotExist) {
		raw, _ := os.ReadFile("/proc/" + strconv.Itoa(info.PID) + "/stat")
		t.Fatalf("background process %d still there after Close: %s", info.PID, raw)
	}
}

// TestOutputOfStreamedExec: a streamed exec (not kept running) is listed while it runs, but keeps no output.
func TestOutputOfStreamedExec(t *testing.T) {
	c := newTestClient(t, unixServer(t, server.Config{}))
	ctx := t.Context()
	started := make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.ExecStream(ctx, agent.ExecRequest{ID: "streamed", Shell: "echo up; exec sleep 100"}, writerFunc(func([]byte) {
			select {
			case <-started:
			default:
				close(started)
			}
		}), nil)
		errc <- err
	}()
	<-started
	procs, err := c.ListProcesses(ctx)
	if err != nil || len(procs) != 1 || procs[0].ID != "streamed" || !procs[0].Attached || procs[0].State != agent.ProcessRunning {
		t.Fatalf("ListProcesses: %+v %v", procs, err)
	}
	if _, err := c.ReadProcessOutput(ctx, "streamed", agent.Stdout, 0, 0); !client.IsCode(err, agent.CodeBadRequest) {
		t.Fatalf("output of a streamed exec: %v", err)
	}
	if err := c.Signal(ctx, "streamed", "KILL"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
}
