//go:build linux

package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/agenttest"
	"github.com/aetherium/aetherium/internal/agent/client"
)

// fakeFirecracker is the host side of Firecracker's vsock device as its documentation and API spec describe
// it (docs/vsock.md, the Vsock definition of firecracker-api.yaml): it listens on uds_path; a host program
// connects and sends "CONNECT <port>\n"; if a guest program listens on that vsock port, Firecracker answers
// "OK <host-side port>\n" and from then on forwards bytes both ways; if none does (the guest answers the
// connection request with a reset), or the request is malformed, it closes the connection without a word.
// Guest ports are Unix sockets served by in-process agents here.
type fakeFirecracker struct {
	uds string

	mu       sync.Mutex
	ports    map[uint32]string // guest vsock port -> where the "guest" listens
	hostPort uint32            // Firecracker numbers host-side ports from 1<<30 up
	answer   string            // when set, sent instead of "OK <n>\n" (and nothing is forwarded)
	silent   bool              // read the request, then never answer
}

func newFakeFirecracker(t testing.TB) *fakeFirecracker {
	t.Helper()
	fc := &fakeFirecracker{uds: filepath.Join(tempDir(t), "v.sock"), ports: make(map[uint32]string), hostPort: 1 << 30}
	l, err := net.Listen("unix", fc.uds)
	if err != nil {
		t.Fatal(err)
	}
	acceptLoop(t, l, fc.handle)
	return fc
}

func (fc *fakeFirecracker) listenGuest(port uint32, path string) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.ports[port] = path
}

func (fc *fakeFirecracker) handle(hc net.Conn) {
	// Firecracker reads the request without reading past it: what follows is for the guest.
	line, err := readLine(hc, 32)
	if err != nil {
		_ = hc.Close()
		return
	}
	fc.mu.Lock()
	answer, silent := fc.answer, fc.silent
	fc.mu.Unlock()
	if silent {
		_, _ = io.Copy(io.Discard, hc) // until the host gives up and closes
		_ = hc.Close()
		return
	}
	if answer != "" {
		_, _ = hc.Write([]byte(answer))
		_ = hc.Close()
		return
	}
	arg, ok := strings.CutPrefix(line, "CONNECT ")
	port, perr := strconv.ParseUint(arg, 10, 32)
	if !ok || perr != nil {
		_ = hc.Close()
		return
	}
	fc.mu.Lock()
	path, listening := fc.ports[uint32(port)]
	fc.hostPort++
	hostPort := fc.hostPort
	fc.mu.Unlock()
	if !listening {
		_ = hc.Close()
		return
	}
	gc, err := net.Dial("unix", path)
	if err != nil {
		_ = hc.Close()
		return
	}
	if _, err := fmt.Fprintf(hc, "OK %d\n", hostPort); err != nil {
		_ = hc.Close()
		_ = gc.Close()
		return
	}
	splice(hc, gc)
}

func TestConformanceFirecrackerVsock(t *testing.T) {
	fc := newFakeFirecracker(t)
	fc.listenGuest(DefaultVsockPort, unixAgent(t))
	agenttest.Run(t, func(t *testing.T) agent.Dialer { return FirecrackerVsock(fc.uds, DefaultVsockPort) })
}

func TestFirecrackerRefused(t *testing.T) {
	fc := newFakeFirecracker(t)
	fc.listenGuest(DefaultVsockPort, unixAgent(t))

	// Nothing listens on port 52 in the guest: Firecracker closes the connection.
	_, err := FirecrackerVsock(fc.uds, 52)(ctxTimeout(t, 10*time.Second))
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "port 52") {
		t.Fatalf("dial to a port nobody listens on: %v; want ErrRefused naming the port", err)
	}
	// The client reports it as unavailable (so that readiness waits retry), not as a protocol problem.
	c := client.New(FirecrackerVsock(fc.uds, 52))
	defer c.Close()
	if _, err := c.Health(ctxTimeout(t, 10*time.Second)); !errors.Is(err, client.ErrUnavailable) || !errors.Is(err, ErrRefused) {
		t.Fatalf("Health: %v; want ErrUnavailable wrapping ErrRefused", err)
	}

	// No VM at all: the socket does not exist.
	_, err = FirecrackerVsock(filepath.Join(tempDir(t), "gone.sock"), DefaultVsockPort)(ctxTimeout(t, 10*time.Second))
	if err == nil || errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "gone.sock") {
		t.Fatalf("dial to a missing socket: %v; want an error naming it", err)
	}
}

func TestFirecrackerWrongAnswer(t *testing.T) {
	for _, answer := range []string{"ERR no\n", "OK\n", "OK x\n", "HELLO 1\n", strings.Repeat("O", 100)} {
		fc := newFakeFirecracker(t)
		fc.answer = answer
		_, err := FirecrackerVsock(fc.uds, DefaultVsockPort)(ctxTimeout(t, 10*time.Second))
		if answer == strings.Repeat("O", 100) {
			if err == nil || !strings.Contains(err.Error(), "line too long") {
				t.Errorf("answer %q: %v; want a line-too-long error", answer, err)
			}
			continue
		}
		if !errors.Is(err, ErrHandshake) || errors.Is(err, ErrRefused) {
			t.Errorf("answer %q: %v; want ErrHandshake", answer, err)
		}
	}
}

func TestFirecrackerTimeout(t *testing.T) {
	fc := newFakeFirecracker(t)
	fc.silent = true
	start := time.Now()
	_, err := FirecrackerVsock(fc.uds, DefaultVsockPort)(ctxTimeout(t, 200*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial to a VMM that never answers: %v; want context.DeadlineExceeded", err)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("the deadline was not kept: %v", time.Since(start))
	}

	// Cancelling interrupts it too.
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := FirecrackerVsock(fc.uds, DefaultVsockPort)(ctx)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled dial: %v; want context.Canceled", err)
	}
}

// TestFirecrackerNoReadAhead checks that the dialer leaves what follows Firecracker's answer in the
// connection, even when it arrives in the same segment.
func TestFirecrackerNoReadAhead(t *testing.T) {
	path := filepath.Join(tempDir(t), "v.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	acceptLoop(t, l, func(nc net.Conn) {
		if line, err := readLine(nc, 32); err != nil || line != "CONNECT 7" {
			_ = nc.Close()
			return
		}
		_, _ = nc.Write([]byte("OK 1073741825\nprotocol bytes"))
		_, _ = io.Copy(io.Discard, nc)
	})
	nc, err := FirecrackerVsock(path, 7)(ctxTimeout(t, 10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	got := make([]byte, len("protocol bytes"))
	if _, err := io.ReadFull(nc, got); err != nil || string(got) != "protocol bytes" {
		t.Fatalf("after the handshake the connection reads %q, %v", got, err)
	}
}
