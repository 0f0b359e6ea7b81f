//go:build linux

package transport

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/agenttest"
	"github.com/aetherium/aetherium/internal/agent/client"
)

// fakeVirtioSerial stands in for a QEMU virtio-serial port whose chardev is a Unix socket server
// (-chardev socket,server=on,wait=off): the host connects to path, one connection at a time, and may
// disconnect and connect again; the guest has one byte stream for the life of the VM (one end of a socketpair,
// used through virtioPort exactly as the agent uses /dev/vportNpM). While a host is connected, bytes flow both
// ways; what the guest writes while none is connected is lost. The guest never sees the host go away here:
// that is the worst case (a real guest sees EOF only if it happens to read while the host is away), in which
// the old session still runs when the new host's bytes arrive.
type fakeVirtioSerial struct {
	path  string
	guest *virtioPort
	q     net.Conn // QEMU's end of the guest's byte stream

	mu      sync.Mutex
	host    net.Conn
	hostEnd chan struct{} // closed when the current host's copier has stopped
	opens   atomic.Int32  // host connections made
}

func newFakeVirtioSerial(t testing.TB) *fakeVirtioSerial {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Non-blocking, so that os.NewFile puts it in the runtime poller, as os.OpenFile does with the device.
	for _, fd := range fds {
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	qf := os.NewFile(uintptr(fds[1]), "qemu-end")
	q, err := net.FileConn(qf)
	_ = qf.Close()
	if err != nil {
		t.Fatal(err)
	}
	v := &fakeVirtioSerial{
		path:  filepath.Join(tempDir(t), "virtio.sock"),
		guest: &virtioPort{path: "/nonexistent/vport0p1", f: os.NewFile(uintptr(fds[0]), "vport0p1")},
		q:     q,
	}
	l, err := net.Listen("unix", v.path)
	if err != nil {
		t.Fatal(err)
	}
	relayDone := make(chan struct{})
	go func() {
		defer close(relayDone)
		buf := make([]byte, 64<<10)
		for {
			n, err := q.Read(buf)
			if n > 0 {
				v.mu.Lock()
				if h := v.host; h != nil {
					_, _ = h.Write(buf[:n])
				}
				v.mu.Unlock()
			}
			if err != nil {
				return
			}
		}
	}()
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			hc, err := l.Accept()
			if err != nil {
				return
			}
			v.connect(hc)
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-acceptDone
		v.disconnect()
		_ = q.Close()
		<-relayDone
		_ = v.guest.close()
	})
	return v
}

// connect makes hc the connected host (after the previous one is gone, as QEMU serves one at a time).
func (v *fakeVirtioSerial) connect(hc net.Conn) {
	v.disconnect()
	end := make(chan struct{})
	v.mu.Lock()
	v.host, v.hostEnd = hc, end
	v.mu.Unlock()
	v.opens.Add(1)
	go func() {
		defer close(end)
		_, _ = io.Copy(v.q, hc)
		v.mu.Lock()
		if v.host == hc {
			v.host = nil
		}
		v.mu.Unlock()
		_ = hc.Close()
	}()
}

func (v *fakeVirtioSerial) disconnect() {
	v.mu.Lock()
	h, end := v.host, v.hostEnd
	v.host = nil
	v.mu.Unlock()
	if h != nil {
		_ = h.Close()
		<-end
	}
}

// serveGuest runs the agent on the guest side of the port.
func (v *fakeVirtioSerial) serveGuest(t testing.TB) *MuxListener {
	t.Helper()
	l := ServeMultiplexed(v.guest.open, "virtio-serial:test", testLogger(t))
	serveAgent(t, l)
	return l
}

// hostDialer returns the host's Dialer over the port and the connections it made.
func (v *fakeVirtioSerial) hostDialer(t testing.TB, pingTimeout time.Duration) (agent.Dialer, func() []net.Conn) {
	t.Helper()
	var mu sync.Mutex
	var conns []net.Conn
	m := newMuxDialer(func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		nc, err := nd.DialContext(ctx, "unix", v.path)
		if err == nil {
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
		}
		return nc, err
	}, testLogger(t))
	m.pingTimeout = pingTimeout
	t.Cleanup(func() { _ = m.Close() })
	return m.Dial, func() []net.Conn {
		mu.Lock()
		defer mu.Unlock()
		return append([]net.Conn(nil), conns...)
	}
}

func TestConformanceMultiplexed(t *testing.T) {
	v := newFakeVirtioSerial(t)
	v.serveGuest(t)
	d, _ := v.hostDialer(t, muxPingTimeout)
	// One session for the whole suite: every subtest's connections are streams over the one byte stream.
	agenttest.Run(t, func(t *testing.T) agent.Dialer { return d })
}

// TestMultiplexedReconnect breaks the host's byte stream under a running command, while the guest goes on with
// its old session (it cannot tell), and under a stream of output still flowing from the guest: the host must
// make a new session through the leftovers, and the guest must give up the old one.
func TestMultiplexedReconnect(t *testing.T) {
	v := newFakeVirtioSerial(t)
	v.serveGuest(t)
	d, conns := v.hostDialer(t, muxPingTimeout)
	c := client.New(d)
	defer c.Close()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}

	for i, script := range []string{
		"echo started; exec sleep 100",
		"echo started; head -c 100000000 /dev/zero", // output keeps coming after the break
	} {
		started := make(chan struct{})
		errc := make(chan error, 1)
		go func() {
			_, err := c.ExecStream(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", script}}, &firstWrite{fn: func() { close(started) }}, nil)
			errc <- err
		}()
		select {
		case <-started:
		case err := <-errc:
			t.Fatalf("command ended before its output: %v", err)
		}
		all := conns()
		_ = all[len(all)-1].Close()
		if err := <-errc; !errors.Is(err, client.ErrUnavailable) {
			t.Fatalf("exec over a broken byte stream: %v; want ErrUnavailable", err)
		}
		res, err := c.Exec(ctx, agent.ExecRequest{Argv: []string{"echo", "again"}})
		if err != nil || string(res.Stdout) != "again\n" {
			t.Fatalf("exec after reconnecting: %+v, %v", res, err)
		}
		if got := len(conns()); got != i+2 {
			t.Fatalf("%d host connections, want %d", got, i+2)
		}
	}
}

// TestMultiplexedGuestEOF: a guest whose byte stream ends (as the real port reads EOF while the host is away)
// makes a new session on the next one; the host sees its session end and reconnects.
func TestMultiplexedGuestEOF(t *testing.T) {
	// Each host connection is one guest byte stream: the guest's open accepts the next one.
	path := filepath.Join(tempDir(t), "direct.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	var guestConns []net.Conn
	var mu sync.Mutex
	ml := ServeMultiplexed(func(ctx context.Context) (io.ReadWriteCloser, error) {
		nc, err := l.Accept()
		if err == nil {
			mu.Lock()
			guestConns = append(guestConns, nc)
			mu.Unlock()
		}
		return nc, err
	}, "test", testLogger(t))
	serveAgent(t, ml)
	t.Cleanup(func() { _ = l.Close() }) // runs before the server's cleanup: unblocks open

	d, closer := Multiplexed(func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", path)
	})
	defer closer.Close()
	c := client.New(d)
	defer c.Close()
	ctx := ctxTimeout(t, 60*time.Second)
	for i := range 3 {
		if _, err := c.Health(ctx); err != nil {
			t.Fatalf("Health %d: %v", i, err)
		}
		mu.Lock()
		gc := guestConns[len(guestConns)-1]
		n := len(guestConns)
		mu.Unlock()
		if n != i+1 {
			t.Fatalf("%d guest byte streams, want %d", n, i+1)
		}
		_ = gc.Close() // the guest's side ends
	}
}

// TestMultiplexedAgentRestart: the guest agent restarts (a new listener on the same port) while the host's
// session lives on; the next Dial finds the session dead by a ping and makes a new one.
func TestMultiplexedAgentRestart(t *testing.T) {
	v := newFakeVirtioSerial(t)
	stopFirst := serveAgent(t, ServeMultiplexed(v.guest.open, "first", testLogger(t)))
	d, conns := v.hostDialer(t, 300*time.Millisecond)
	c := client.New(d)
	defer c.Close()
	ctx := ctxTimeout(t, 60*time.Second)
	if _, err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	_ = c.Close()
	// The old agent goes away without the host seeing anything on its byte stream.
	stopFirst()
	v.serveGuest(t)
	c2 := client.New(d)
	defer c2.Close()
	if _, err := c2.Health(ctx); err != nil {
		t.Fatalf("Health after the agent restarted: %v", err)
	}
	if got := len(conns()); got != 2 {
		t.Fatalf("%d host connections, want 2", got)
	}
}

// TestMultiplexedNoGuest: with nobody answering on the port, Dial resends its SYNC and fails at ctx's deadline.
func TestMultiplexedNoGuest(t *testing.T) {
	path := filepath.Join(tempDir(t), "mute.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	syncs := make(chan int, 1)
	acceptLoop(t, l, func(nc net.Conn) {
		b, _ := io.ReadAll(nc)
		syncs <- bytes.Count(b, []byte(muxSync))
	})
	d, closer := Multiplexed(func(ctx context.Context) (net.Conn, error) {
		var nd net.Dialer
		return nd.DialContext(ctx, "unix", path)
	})
	defer closer.Close()
	_, err = d(ctxTimeout(t, 3*muxResend))
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer") {
		t.Fatalf("Dial with no guest: %v; want DeadlineExceeded, no answer", err)
	}
	if n := <-syncs; n < 2 {
		t.Fatalf("%d SYNC lines sent; want them resent", n)
	}
	if err := closer.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := d(ctxTimeout(t, time.Second)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close: %v", err)
	}
}

// TestMuxSyncThroughGarbage: both sides find their line behind garbage, cut lines and overlong lines, and the
// guest drops repeated SYNCs before yamux starts.
func TestMuxSyncThroughGarbage(t *testing.T) {
	id := strings.Repeat("ab", muxIDLen)
	other := strings.Repeat("01", muxIDLen)
	in := "\x00\x00\x01junk\n" +
		"AETHERIUM-MUX/1 SY" + "\n" + // a cut line
		muxSync + "nothex\n" +
		strings.Repeat("x", 5*muxMaxLine) + muxSync + other + "\n" + // behind a long run of garbage
		"\x00\x02\x00\x01\x00\x00\x00\x00\x00\x00\x00\x07" + muxSync + id + "\n" + // glued to a yamux ping
		muxSync + id + "\n" + muxSync + id + "\n" + "\x00yamux"
	br := bufio.NewReader(strings.NewReader(in))
	var sc lineScanner
	var found []string
	for len(found) < 2 {
		got, err := sc.next(br, muxSync)
		if err != nil {
			t.Fatalf("scan: %v after %q", err, found)
		}
		if validMuxID(got) {
			found = append(found, got)
		}
	}
	if found[0] != other || found[1] != id {
		t.Fatalf("scan found %q; want %q then %q", found, other, id)
	}
	rest, err := io.ReadAll(&guestReader{br: br, id: id})
	if err != nil || string(rest) != "\x00yamux" {
		t.Fatalf("after the SYNC the session reads %q, %v", rest, err)
	}
	// A different session's SYNC in the session's input ends it.
	br = bufio.NewReader(strings.NewReader(muxSync + strings.Repeat("cd", muxIDLen) + "\n\x00"))
	if _, err := io.ReadAll(&guestReader{br: br, id: id}); !errors.Is(err, errResync) {
		t.Fatalf("new SYNC in an old session: %v; want errResync", err)
	}
}

// firstWrite calls fn on its first Write.
type firstWrite struct {
	once sync.Once
	fn   func()
}

func (w *firstWrite) Write(p []byte) (int, error) {
	w.once.Do(w.fn)
	return len(p), nil
}
