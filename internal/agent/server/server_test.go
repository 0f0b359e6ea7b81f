//go:build linux

package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/agenttest"
	"github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/protocol"
	"github.com/aetherium/aetherium/internal/agent/server"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("AETHERIUM_AGENT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// startServer serves srv on l until the test ends.
func startServer(t testing.TB, srv *server.Server, l net.Listener) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; !errors.Is(err, server.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})
}

// socketPath returns a short path for a Unix socket (their paths are limited to 108 bytes).
func socketPath(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agent")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return filepath.Join(dir, "agent.sock")
}

func unixServer(t testing.TB, cfg server.Config) string {
	t.Helper()
	path := socketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Version == "" {
		cfg.Version = "test"
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	startServer(t, server.New(cfg), l)
	return path
}

func TestConformanceUnix(t *testing.T) {
	path := unixServer(t, server.Config{})
	agenttest.Run(t, func(t *testing.T) agent.Dialer { return agent.UnixDialer(path) })
}

func TestConformanceTCP(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A tiny pipe grace: output still in a pipe when the command exits must be drained, not dropped, even when
	// the client is slower than the grace (LargeBinaryStream and the cap tests check every byte).
	startServer(t, server.New(server.Config{Version: "test", Logger: testLogger(t), PipeGrace: time.Millisecond}), l)
	addr := l.Addr().String()
	agenttest.Run(t, func(t *testing.T) agent.Dialer {
		return func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		}
	})
}

// TestConformanceWithReaper runs the suite with a Reaper reaping as eagerly as PID 1 would, to show that it
// never takes a command's exit status. (This process is not PID 1, but its own children are reaped the same way.)
func TestConformanceWithReaper(t *testing.T) {
	r := server.NewReaper(testLogger(t))
	ctx, cancel := context.WithCancel(context.Background())
	reaperDone := make(chan error, 1)
	go func() { reaperDone <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-reaperDone
	})
	path := unixServer(t, server.Config{Reaper: r})
	agenttest.Run(t, func(t *testing.T) agent.Dialer { return agent.UnixDialer(path) })
}

// rawConn is a hand-driven protocol connection, for what the client would never send.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	rd *protocol.Reader
	w  *protocol.Writer
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = nc.Close() })
	_ = nc.SetDeadline(time.Now().Add(30 * time.Second))
	return &rawConn{t: t, nc: nc, rd: protocol.NewReader(nc), w: protocol.NewWriter(nc)}
}

func (c *rawConn) send(typ protocol.FrameType, stream uint32, payload any) {
	c.t.Helper()
	var b []byte
	switch p := payload.(type) {
	case nil:
	case []byte:
		b = p
	default:
		var err error
		if b, err = json.Marshal(p); err != nil {
			c.t.Fatal(err)
		}
	}
	if err := c.w.WriteFrame(typ, stream, b); err != nil {
		c.t.Fatalf("send %s: %v", typ, err)
	}
}

func (c *rawConn) hello(version int) protocol.Hello {
	c.t.Helper()
	c.send(protocol.FrameHello, 0, protocol.Hello{ProtocolVersion: version, Role: protocol.RoleClient})
	f, err := c.rd.ReadFrame()
	if err != nil || f.Type != protocol.FrameHello {
		c.t.Fatalf("agent HELLO: %v %v", f.Type, err)
	}
	var h protocol.Hello
	if err := json.Unmarshal(f.Payload, &h); err != nil {
		c.t.Fatal(err)
	}
	return h
}

// expectClosed reads until the agent closes the connection, failing if it answers with anything but the
// frames allowed.
func (c *rawConn) expectClosed() {
	c.t.Helper()
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || strings.Contains(err.Error(), "reset") {
				return
			}
			c.t.Fatalf("want the agent to close the connection, got %v", err)
		}
		c.t.Fatalf("want the agent to close the connection, got a %s frame", f.Type)
	}
}

func (c *rawConn) response(stream uint32) protocol.Response {
	c.t.Helper()
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			c.t.Fatalf("read RESPONSE: %v", err)
		}
		if f.Type != protocol.FrameResponse || f.Stream != stream {
			continue
		}
		var r protocol.Response
		if err := json.Unmarshal(f.Payload, &r); err != nil {
			c.t.Fatal(err)
		}
		return r
	}
}

func TestHandshake(t *testing.T) {
	path := unixServer(t, server.Config{Version: "1.2.3", HandshakeTimeout: 200 * time.Millisecond})

	t.Run("hello", func(t *testing.T) {
		c := dialRaw(t, path)
		h := c.hello(protocol.Version)
		if h.ProtocolVersion != protocol.Version || h.AgentVersion != "1.2.3" || h.Role != protocol.RoleAgent {
			t.Fatalf("agent HELLO %+v", h)
		}
		if !strings.Contains(strings.Join(h.Features, ","), "exec") {
			t.Fatalf("features %v", h.Features)
		}
	})
	t.Run("version mismatch answers then closes", func(t *testing.T) {
		c := dialRaw(t, path)
		if h := c.hello(99); h.ProtocolVersion != protocol.Version {
			t.Fatalf("agent HELLO %+v", h)
		}
		c.expectClosed()
	})
	t.Run("request before hello", func(t *testing.T) {
		c := dialRaw(t, path)
		c.send(protocol.FrameRequest, 1, protocol.Request{Method: "health"})
		c.expectClosed()
	})
	t.Run("no hello closes after the handshake timeout", func(t *testing.T) {
		c := dialRaw(t, path)
		c.expectClosed()
	})
	t.Run("oversized frame", func(t *testing.T) {
		c := dialRaw(t, path)
		c.hello(protocol.Version)
		if _, err := c.nc.Write([]byte{0x7f, 0xff, 0xff, 0xff, byte(protocol.FrameData), 0, 0, 0, 1}); err != nil {
			t.Fatal(err)
		}
		c.expectClosed()
	})
	t.Run("version mismatch through the client", func(t *testing.T) {
		// The client's side of a mismatch is tested in package client against a fake agent; here the real agent
		// just has to keep working for a correct client after refusing a wrong one.
		c := client.New(agent.UnixDialer(path))
		defer c.Close()
		if _, err := c.Health(t.Context()); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRequestErrors(t *testing.T) {
	path := unixServer(t, server.Config{})
	c := dialRaw(t, path)
	c.hello(protocol.Version)

	c.send(protocol.FrameRequest, 1, protocol.Request{Method: "nope"})
	if r := c.response(1); r.Error == nil || r.Error.Code != protocol.CodeUnknownMethod {
		t.Fatalf("unknown method: %+v", r)
	}
	c.send(protocol.FrameRequest, 3, []byte("{not json"))
	if r := c.response(3); r.Error == nil || r.Error.Code != protocol.CodeBadRequest {
		t.Fatalf("bad JSON: %+v", r)
	}
	c.send(protocol.FrameRequest, 5, protocol.Request{Method: "exec", Params: json.RawMessage(`{"argv":["true"],"frobnicate":true}`)})
	if r := c.response(5); r.Error == nil || r.Error.Code != protocol.CodeBadRequest || !strings.Contains(r.Error.Message, "frobnicate") {
		t.Fatalf("unknown exec field: %+v", r)
	}
	// Frames for unknown streams are ignored; the connection stays usable.
	c.send(protocol.FrameCancel, 77, nil)
	c.send(protocol.FrameWindow, 77, protocol.WindowPayload(10))
	c.send(protocol.FrameRequest, 7, protocol.Request{Method: "health"})
	if r := c.response(7); r.Error != nil {
		t.Fatalf("health after ignored frames: %+v", r)
	}
	// An even stream id is a protocol error.
	c.send(protocol.FrameRequest, 8, protocol.Request{Method: "health"})
	c.expectClosed()
}

func TestTooManyStreams(t *testing.T) {
	path := unixServer(t, server.Config{MaxStreams: 2})
	c := dialRaw(t, path)
	c.hello(protocol.Version)
	sleep := protocol.Request{Method: "exec", Params: json.RawMessage(`{"argv":["sleep","100"]}`)}
	c.send(protocol.FrameRequest, 1, sleep)
	c.send(protocol.FrameRequest, 3, sleep)
	c.send(protocol.FrameRequest, 5, sleep)
	if r := c.response(5); r.Error == nil || r.Error.Code != protocol.CodeTooManyStreams {
		t.Fatalf("third concurrent request: %+v", r)
	}
	c.send(protocol.FrameCancel, 1, nil)
	if r := c.response(1); r.Error != nil {
		t.Fatalf("cancelled exec: %+v", r)
	}
}

func TestShutdownWaitsThenKills(t *testing.T) {
	path := socketPath(t)
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := server.New(server.Config{Logger: testLogger(t)})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()

	c := client.New(agent.UnixDialer(path))
	defer c.Close()
	ctx := t.Context()
	if _, err := c.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	type result struct {
		res *agent.ExecResult
		err error
	}
	quick, slow := make(chan result, 1), make(chan result, 1)
	started := make(chan struct{})
	var once sync.Once
	go func() {
		res, err := c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "echo go; exec sleep 100"}},
			writerFunc(func(p []byte) { once.Do(func() { close(started) }) }), nil)
		slow <- result{res, err}
	}()
	<-started
	go func() {
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "read x < /dev/null; echo done"}})
		quick <- result{res, err}
	}()
	if r := <-quick; r.err != nil || string(r.res.Stdout) != "done\n" {
		t.Fatalf("quick exec: %+v %v", r.res, r.err)
	}

	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if err := srv.Shutdown(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with a command still running: %v", err)
	}
	if err := <-served; !errors.Is(err, server.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	// The running command was killed; its caller sees an unavailable agent (a shutting_down answer or the
	// connection gone, depending on which comes first), not a command result.
	if r := <-slow; !errors.Is(r.err, client.ErrUnavailable) {
		t.Fatalf("slow exec after shutdown: %+v %v", r.res, r.err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still there after shutdown: %v", err)
	}
}

type writerFunc func(p []byte)

func (f writerFunc) Write(p []byte) (int, error) {
	f(p)
	return len(p), nil
}
