package client

import (
	"bytes"
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// A guest controls what answers on its agent's socket, so every call must end on the host's clock whatever the
// peer does. These tests use no deadline of their own on the calls (t.Context() only): the bounds must come from
// the client.

// within fails the test if fn takes longer than limit (a liveness bound, generous on purpose).
func within(t *testing.T, limit time.Duration, fn func()) time.Duration {
	t.Helper()
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		fn()
	}()
	select {
	case <-done:
	case <-time.After(limit):
		t.Fatalf("still blocked after %s", limit)
	}
	return time.Since(start)
}

func TestHandshakeTimeoutBoundsSilentPeer(t *testing.T) {
	fa := newFakeAgent(t, nil, nil) // accepts, reads our HELLO, never says a word
	c := New(fa.dialer(), WithHandshakeTimeout(300*time.Millisecond))
	defer c.Close()
	var err error
	took := within(t, 20*time.Second, func() { _, err = c.Health(t.Context()) })
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrTimeout) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Health against a silent peer: %v; want ErrUnavailable and ErrTimeout", err)
	}
	if took < 300*time.Millisecond {
		t.Fatalf("gave up after %s, before the handshake timeout", took)
	}
	t.Logf("silent peer dropped after %s: %v", took.Round(time.Millisecond), err)
	// The same holds for an exec, whatever its own timeout (none here).
	within(t, 20*time.Second, func() { _, err = c.Exec(t.Context(), agent.ExecRequest{Argv: []string{"true"}}) })
	if !errors.Is(err, ErrTimeout) {
		t.Fatalf("Exec against a silent peer: %v", err)
	}
}

func TestHandshakeTimeoutBoundsHangingDial(t *testing.T) {
	hang := func(ctx context.Context) (net.Conn, error) {
		<-ctx.Done() // a dialer that honours ctx and nothing else
		return nil, ctx.Err()
	}
	c := New(hang, WithHandshakeTimeout(200*time.Millisecond))
	defer c.Close()
	var err error
	within(t, 20*time.Second, func() { _, err = c.Health(t.Context()) })
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("Health with a hanging dial: %v", err)
	}
}

// stallAfterRequest is an agent that handshakes, reads requests (and sends what out says on the first), and
// never answers one. It reports the CANCELs it gets.
func stallAfterRequest(out []byte, cancels chan<- uint32) func(c *fakeConn) {
	return func(c *fakeConn) {
		for {
			f, err := c.rd.ReadFrame()
			if err != nil {
				return
			}
			switch f.Type {
			case protocol.FrameRequest:
				if len(out) > 0 {
					c.send(protocol.FrameData, f.Stream, protocol.DataPayload(protocol.ChannelStdout, out))
				}
			case protocol.FrameCancel:
				select {
				case cancels <- f.Stream:
				default:
				}
			}
		}
	}
}

func TestExecTimeoutHoldsAgainstStalledAgent(t *testing.T) {
	cancels := make(chan uint32, 4)
	fa := newFakeAgent(t, goodHello, stallAfterRequest([]byte("started\n"), cancels))
	c := New(fa.dialer(), WithExecGrace(500*time.Millisecond))
	defer c.Close()
	var out bytes.Buffer
	var err error
	took := within(t, 30*time.Second, func() {
		_, err = c.ExecStream(t.Context(), agent.ExecRequest{Argv: []string{"sleep", "1000"}, Timeout: time.Second}, &out, nil)
	})
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrTimeout) {
		t.Fatalf("ExecStream against an agent that stalls mid-exec: %v", err)
	}
	if took < 1500*time.Millisecond {
		t.Fatalf("gave up after %s, before timeout plus grace", took)
	}
	if out.String() != "started\n" {
		t.Fatalf("output before the stall: %q", out.String())
	}
	select {
	case <-cancels:
	case <-time.After(10 * time.Second):
		t.Fatal("the agent was never told to cancel the overdue command")
	}
	t.Logf("stalled exec ended after %s: %v", took.Round(time.Millisecond), err)
}

func TestExecWithoutTimeoutFollowsCallerContext(t *testing.T) {
	fa := newFakeAgent(t, goodHello, stallAfterRequest(nil, nil))
	c := New(fa.dialer(), WithExecGrace(100*time.Millisecond))
	defer c.Close()
	// No Timeout: no deadline of the client's own; the caller's ctx bounds it, and its error is what comes back.
	_, err := c.Exec(ctxTimeout(t, 500*time.Millisecond), agent.ExecRequest{Argv: []string{"x"}})
	if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrTimeout) {
		t.Fatalf("Exec: %v; want the caller's deadline", err)
	}
}

func TestCloseAbandonsDialAndCalls(t *testing.T) {
	silent := newFakeAgent(t, nil, nil)
	c := New(silent.dialer(), WithHandshakeTimeout(time.Hour))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Health(t.Context())
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond) // let it dial and block in the handshake
	_ = c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Health cut by Close during the handshake: %v; want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a handshake in progress survived Close")
	}

	// A call in flight on a live connection returns too.
	stalled := newFakeAgent(t, goodHello, stallAfterRequest(nil, nil))
	c = New(stalled.dialer())
	go func() {
		_, err := c.Exec(t.Context(), agent.ExecRequest{Argv: []string{"x"}})
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	_ = c.Close()
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Exec cut by Close: %v; want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an exec in flight survived Close")
	}
}
