package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// fakeAgent is a hand-written agent for what the real one never does (old versions, broken protocol, hangs).
// The real agent is tested against this client in internal/agent/server.
type fakeAgent struct {
	t     *testing.T
	addr  string
	dials atomic.Int32
}

type fakeConn struct {
	t  *testing.T
	nc net.Conn
	rd *protocol.Reader
	w  *protocol.Writer
}

// newFakeAgent serves each connection with handle after reading the client's HELLO. hello is what it answers;
// a nil hello means it never answers.
func newFakeAgent(t *testing.T, hello *protocol.Hello, handle func(c *fakeConn)) *fakeAgent {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fa := &fakeAgent{t: t, addr: l.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = l.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer nc.Close()
				c := &fakeConn{t: t, nc: nc, rd: protocol.NewReader(nc), w: protocol.NewWriter(nc)}
				f, err := c.rd.ReadFrame()
				if err != nil || f.Type != protocol.FrameHello {
					t.Errorf("fake agent: want HELLO, got %v %v", f.Type, err)
					return
				}
				var h protocol.Hello
				if err := json.Unmarshal(f.Payload, &h); err != nil || h.Role != protocol.RoleClient || h.ProtocolVersion != protocol.Version {
					t.Errorf("fake agent: client HELLO %s: %v", f.Payload, err)
					return
				}
				if hello == nil {
					_, _ = io.Copy(io.Discard, nc) // hang: never answer
					return
				}
				c.send(protocol.FrameHello, 0, hello)
				if handle != nil {
					handle(c)
				}
			}()
		}
	}()
	return fa
}

func (fa *fakeAgent) dialer() agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		fa.dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, "tcp", fa.addr)
	}
}

func (c *fakeConn) send(typ protocol.FrameType, stream uint32, payload any) {
	var b []byte
	switch p := payload.(type) {
	case nil:
	case []byte:
		b = p
	default:
		var err error
		if b, err = json.Marshal(p); err != nil {
			c.t.Error(err)
			return
		}
	}
	_ = c.w.WriteFrame(typ, stream, b)
}

func (c *fakeConn) respond(stream uint32, result any) {
	raw, err := json.Marshal(result)
	if err != nil {
		c.t.Error(err)
		return
	}
	c.send(protocol.FrameResponse, stream, protocol.Response{Result: raw})
}

var goodHello = &protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "fake", Role: protocol.RoleAgent}

// serveHealth answers every health request, concurrently as they come.
func serveHealth(c *fakeConn) {
	for {
		f, err := c.rd.ReadFrame()
		if err != nil {
			return
		}
		if f.Type == protocol.FrameRequest {
			c.respond(f.Stream, protocol.HealthResult{Version: "fake", ProtocolVersion: protocol.Version, Hostname: "h"})
		}
	}
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestUnavailableWhenNoAgent(t *testing.T) {
	c := New(agent.UnixDialer("/nonexistent/agent.sock"))
	defer c.Close()
	ctx := ctxTimeout(t, 10*time.Second)
	if _, err := c.Health(ctx); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Health: %v; want ErrUnavailable", err)
	}
	_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"true"}})
	var aerr *Error
	if !errors.Is(err, ErrUnavailable) || errors.As(err, &aerr) {
		t.Fatalf("Exec: %v; want ErrUnavailable and no agent error", err)
	}
}

func TestWaitReadyReportsLastFailure(t *testing.T) {
	var attempts atomic.Int32
	c := New(func(ctx context.Context) (net.Conn, error) {
		attempts.Add(1)
		return nil, errors.New("vsock: connection refused by guest 42")
	})
	defer c.Close()
	_, err := c.WaitReady(ctxTimeout(t, 300*time.Millisecond))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) ||
		!strings.Contains(err.Error(), "connection refused by guest 42") || !strings.Contains(err.Error(), "not ready after") {
		t.Fatalf("WaitReady: %v", err)
	}
	if n := attempts.Load(); n < 3 {
		t.Fatalf("only %d attempts in 300ms", n)
	}
}

func TestWaitReadyWaitsForAgent(t *testing.T) {
	fa := newFakeAgent(t, goodHello, serveHealth)
	var attempts atomic.Int32
	d := fa.dialer()
	c := New(func(ctx context.Context) (net.Conn, error) {
		// The agent "comes up" on the fourth attempt.
		if attempts.Add(1) < 4 {
			return nil, errors.New("not listening yet")
		}
		return d(ctx)
	})
	defer c.Close()
	info, err := c.WaitReady(ctxTimeout(t, 30*time.Second))
	if err != nil || info.Version != "fake" || info.ProtocolVersion != protocol.Version {
		t.Fatalf("WaitReady: %+v %v", info, err)
	}
	if n := attempts.Load(); n != 4 {
		t.Fatalf("%d attempts, want 4", n)
	}
}

func TestProtocolMismatch(t *testing.T) {
	fa := newFakeAgent(t, &protocol.Hello{ProtocolVersion: 99, AgentVersion: "future", Role: protocol.RoleAgent}, nil)
	c := New(fa.dialer())
	defer c.Close()
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := c.Health(ctx)
	if !errors.Is(err, ErrProtocolMismatch) || !strings.Contains(err.Error(), "version 99") || !strings.Contains(err.Error(), "future") {
		t.Fatalf("Health: %v", err)
	}
	// WaitReady gives up at once: waiting cannot fix a version mismatch.
	if _, err := c.WaitReady(ctx); !errors.Is(err, ErrProtocolMismatch) || ctx.Err() != nil {
		t.Fatalf("WaitReady: %v (ctx %v)", err, ctx.Err())
	}
}

func TestHandshakeHangBoundedByContext(t *testing.T) {
	fa := newFakeAgent(t, nil, nil)
	c := New(fa.dialer())
	defer c.Close()
	_, err := c.Health(ctxTimeout(t, 200*time.Millisecond))
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Health against a silent agent: %v", err)
	}
}

func TestConcurrentCallsShareOneConnection(t *testing.T) {
	fa := newFakeAgent(t, goodHello, serveHealth)
	c := New(fa.dialer())
	defer c.Close()
	ctx := ctxTimeout(t, 30*time.Second)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := c.Health(ctx); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if n := fa.dials.Load(); n != 1 {
		t.Fatalf("%d dials for 50 concurrent calls, want 1", n)
	}
}

func TestConnectionLostMidCall(t *testing.T) {
	fa := newFakeAgent(t, goodHello, func(c *fakeConn) {
		f, err := c.rd.ReadFrame()
		if err == nil && f.Type == protocol.FrameRequest {
			c.send(protocol.FrameData, f.Stream, protocol.DataPayload(protocol.ChannelStdout, []byte("partial")))
		}
		// and hang up
	})
	c := New(fa.dialer())
	defer c.Close()
	var out bytes.Buffer
	_, err := c.ExecStream(ctxTimeout(t, 30*time.Second), agent.ExecRequest{Argv: []string{"x"}}, &out, nil)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "connection lost") {
		t.Fatalf("ExecStream: %v", err)
	}
	if out.String() != "partial" {
		t.Fatalf("output before the loss: %q", out.String())
	}
}

func TestAgentOverrunningWindowBreaksConnection(t *testing.T) {
	fa := newFakeAgent(t, goodHello, func(c *fakeConn) {
		f, err := c.rd.ReadFrame()
		if err != nil {
			return
		}
		chunk := make([]byte, 64<<10)
		for range protocol.DefaultWindow/len(chunk) + 2 {
			c.send(protocol.FrameData, f.Stream, append([]byte{byte(protocol.ChannelStdout)}, chunk...))
		}
		_, _ = io.Copy(io.Discard, c.nc)
	})
	c := New(fa.dialer())
	defer c.Close()
	// The consumer does not drain until the session has failed, so the agent's overrun cannot be absorbed.
	var once sync.Once
	w := writerFunc(func(p []byte) error {
		once.Do(func() {
			c.mu.Lock()
			s := c.sess
			c.mu.Unlock()
			if s == nil {
				return // already failed and dropped
			}
			select {
			case <-s.done:
			case <-time.After(10 * time.Second):
				t.Error("the session survived a window overrun")
			}
		})
		return nil
	})
	_, err := c.ExecStream(ctxTimeout(t, 30*time.Second), agent.ExecRequest{Argv: []string{"x"}}, w, nil)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "window") {
		t.Fatalf("ExecStream: %v", err)
	}
}

type writerFunc func(p []byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// TestFlowControl plays an agent that follows the protocol's credit rules to the letter: it never sends more
// than the client's window allows and waits for WINDOW frames, so the transfer only completes if the client
// returns credit as it consumes.
func TestFlowControl(t *testing.T) {
	const total = 8 * protocol.DefaultWindow
	fa := newFakeAgent(t, goodHello, func(c *fakeConn) {
		f, err := c.rd.ReadFrame()
		if err != nil || f.Type != protocol.FrameRequest {
			return
		}
		credit := int64(protocol.DefaultWindow)
		sent := 0
		chunk := bytes.Repeat([]byte{'z'}, 10000)
		for sent < total {
			for credit <= 0 {
				w, err := c.rd.ReadFrame()
				if err != nil {
					t.Errorf("fake agent waiting for credit: %v", err)
					return
				}
				if w.Type == protocol.FrameWindow {
					n, err := protocol.ParseWindow(w.Payload)
					if err != nil {
						t.Error(err)
						return
					}
					credit += int64(n)
				}
			}
			n := min(int64(len(chunk)), credit, int64(total-sent))
			c.send(protocol.FrameData, f.Stream, append([]byte{byte(protocol.ChannelStderr)}, chunk[:n]...))
			credit -= n
			sent += int(n)
		}
		c.send(protocol.FrameEnd, f.Stream, protocol.EndPayload(protocol.ChannelStderr))
		c.respond(f.Stream, protocol.ExecResult{ExitCode: 5, DurationNS: int64(time.Second)})
		_, _ = io.Copy(io.Discard, c.nc)
	})
	c := New(fa.dialer())
	defer c.Close()
	res, err := c.Exec(ctxTimeout(t, 30*time.Second), agent.ExecRequest{Argv: []string{"x"}, MaxOutputBytes: 100})
	if err != nil {
		t.Fatalf("Exec: %v", err)
	}
	if res.ExitCode != 5 || res.Duration != time.Second || len(res.Stderr) != 100 || !res.StderrTruncated ||
		len(res.Stdout) != 0 || res.StdoutTruncated {
		t.Fatalf("result %+v", res)
	}
}

func TestCancelTellsAgent(t *testing.T) {
	cancelled := make(chan uint32, 1)
	fa := newFakeAgent(t, goodHello, func(c *fakeConn) {
		for {
			f, err := c.rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == protocol.FrameCancel {
				cancelled <- f.Stream
				return
			}
		}
	})
	c := New(fa.dialer())
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	_, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"sleep", "100"}})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrUnavailable) {
		t.Fatalf("Exec: %v; want the context's error", err)
	}
	select {
	case id := <-cancelled:
		if id != 1 {
			t.Fatalf("CANCEL for stream %d, want 1", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent never got a CANCEL")
	}
}

func TestAgentErrorsAreNotUnavailable(t *testing.T) {
	fa := newFakeAgent(t, goodHello, func(c *fakeConn) {
		for {
			f, err := c.rd.ReadFrame()
			if err != nil {
				return
			}
			if f.Type == protocol.FrameRequest {
				code := protocol.CodeBadRequest
				if f.Stream > 1 {
					code = protocol.CodeShuttingDown
				}
				c.send(protocol.FrameResponse, f.Stream, protocol.Response{Error: &protocol.Error{Code: code, Message: "no"}})
			}
		}
	})
	c := New(fa.dialer())
	defer c.Close()
	ctx := ctxTimeout(t, 30*time.Second)
	_, err := c.Exec(ctx, agent.ExecRequest{})
	var aerr *Error
	if !errors.As(err, &aerr) || aerr.Code != protocol.CodeBadRequest || errors.Is(err, ErrUnavailable) {
		t.Fatalf("bad request: %v", err)
	}
	// An agent that is shutting down is unavailable: the request failed through no fault of its own.
	if _, err := c.Exec(ctx, agent.ExecRequest{}); !errors.As(err, &aerr) || !errors.Is(err, ErrUnavailable) {
		t.Fatalf("shutting down: %v", err)
	}
}

func TestClosedClient(t *testing.T) {
	fa := newFakeAgent(t, goodHello, serveHealth)
	c := New(fa.dialer())
	ctx := ctxTimeout(t, 30*time.Second)
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Health(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Health after Close: %v", err)
	}
	if _, err := c.WaitReady(ctx); !errors.Is(err, ErrClosed) || ctx.Err() != nil {
		t.Fatalf("WaitReady after Close: %v", err)
	}
}

func TestCapBuffer(t *testing.T) {
	b := &capBuffer{max: 5}
	for _, s := range []string{"ab", "cd", "efg", "h"} {
		if n, err := b.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	if string(b.bytes()) != "abcde" || !b.truncated {
		t.Fatalf("%q truncated %v", b.bytes(), b.truncated)
	}
	if e := (&capBuffer{max: 5}); e.bytes() == nil {
		t.Fatal("empty output is nil, want empty")
	}
}
