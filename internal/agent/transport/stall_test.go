//go:build linux

package transport

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// The QEMU transport (yamux over virtio-serial) has the Docker backend's property too: the guest owns the far
// end, so whatever it does, a call ends on the host's clock. These calls carry no deadline of their own
// (t.Context()); the bounds come from the client's handshake timeout and exec grace.

// serveHostile serves each stream the host opens over l with handle, until the test ends.
func serveHostile(t *testing.T, l net.Listener, handle func(net.Conn)) {
	t.Helper()
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				handle(nc)
			}()
		}
	}()
}

// silent reads everything and never says a word.
func silent(nc net.Conn) { _, _ = io.Copy(io.Discard, nc) }

// stallsExec handshakes and answers health, and never answers anything else.
func stallsExec(nc net.Conn) {
	rd, w := protocol.NewReader(nc), protocol.NewWriter(nc)
	if f, err := rd.ReadFrame(); err != nil || f.Type != protocol.FrameHello {
		return
	}
	hello, _ := json.Marshal(protocol.Hello{ProtocolVersion: protocol.Version, AgentVersion: "hostile", Role: protocol.RoleAgent})
	if w.WriteFrame(protocol.FrameHello, 0, hello) != nil {
		return
	}
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			return
		}
		var req protocol.Request
		if f.Type == protocol.FrameRequest && json.Unmarshal(f.Payload, &req) == nil && req.Method == protocol.MethodHealth {
			res, _ := json.Marshal(protocol.HealthResult{Version: "hostile", ProtocolVersion: protocol.Version})
			resp, _ := json.Marshal(protocol.Response{Result: res})
			_ = w.WriteFrame(protocol.FrameResponse, f.Stream, resp)
		}
	}
}

func boundedCall(t *testing.T, limit time.Duration, fn func() error) (time.Duration, error) {
	t.Helper()
	start := time.Now()
	errc := make(chan error, 1)
	go func() { errc <- fn() }()
	select {
	case err := <-errc:
		return time.Since(start), err
	case <-time.After(limit):
		t.Fatalf("call still blocked after %s", limit)
		return 0, nil
	}
}

func TestMultiplexedStalledGuestCannotHoldACall(t *testing.T) {
	const handshake, grace = 500 * time.Millisecond, 500 * time.Millisecond
	opts := []client.Option{client.WithHandshakeTimeout(handshake), client.WithExecGrace(grace)}

	t.Run("guest never answers the SYNC", func(t *testing.T) {
		v := newFakeVirtioSerial(t) // no guest behind the port at all
		d, _ := v.hostDialer(t, muxPingTimeout)
		c := client.New(d, opts...)
		defer c.Close()
		took, err := boundedCall(t, 30*time.Second, func() error { _, err := c.Health(t.Context()); return err })
		if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("Health: %v; want ErrTimeout", err)
		}
		t.Logf("ended after %s: %v", took.Round(time.Millisecond), err)
	})

	t.Run("guest opens streams and never speaks", func(t *testing.T) {
		v := newFakeVirtioSerial(t)
		serveHostile(t, ServeMultiplexed(v.guest.open, "virtio-serial:test", testLogger(t)), silent)
		d, _ := v.hostDialer(t, muxPingTimeout)
		c := client.New(d, opts...)
		defer c.Close()
		took, err := boundedCall(t, 30*time.Second, func() error {
			_, err := c.Exec(t.Context(), agent.ExecRequest{Argv: []string{"true"}, Timeout: time.Second})
			return err
		})
		if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("Exec: %v; want ErrTimeout", err)
		}
		t.Logf("ended after %s: %v", took.Round(time.Millisecond), err)
	})

	t.Run("guest stalls mid-exec", func(t *testing.T) {
		v := newFakeVirtioSerial(t)
		serveHostile(t, ServeMultiplexed(v.guest.open, "virtio-serial:test", testLogger(t)), stallsExec)
		d, _ := v.hostDialer(t, muxPingTimeout)
		c := client.New(d, opts...)
		defer c.Close()
		if _, err := c.Health(t.Context()); err != nil {
			t.Fatalf("Health of the hostile guest: %v", err)
		}
		const timeout = time.Second
		took, err := boundedCall(t, 30*time.Second, func() error {
			_, err := c.Exec(t.Context(), agent.ExecRequest{Argv: []string{"sleep", "1000"}, Timeout: timeout})
			return err
		})
		if !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("Exec: %v; want ErrTimeout", err)
		}
		if took < timeout+grace {
			t.Fatalf("gave up after %s, before timeout plus grace", took)
		}
		t.Logf("ended after %s: %v", took.Round(time.Millisecond), err)
	})
}
