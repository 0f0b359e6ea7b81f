//go:build linux

package transport

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
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
)

// authAgent serves an agent on loopback TCP behind the auth preamble and returns its address.
func authAgent(t testing.TB, token string, cfg AuthConfig) string {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	l, err := ListenTCPAuth("127.0.0.1:0", token, cfg)
	if err != nil {
		t.Fatal(err)
	}
	serveAgent(t, l)
	return l.Addr().String()
}

func TestConformanceTCPAuth(t *testing.T) {
	token := newToken(t)
	addr := authAgent(t, token, AuthConfig{})
	agenttest.Run(t, func(t *testing.T) agent.Dialer { return TCPDialer(addr, token) })
}

func TestAuthWrongToken(t *testing.T) {
	addr := authAgent(t, newToken(t), AuthConfig{})
	_, err := TCPDialer(addr, newToken(t))(ctxTimeout(t, 10*time.Second))
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "rejected") {
		t.Fatalf("dial with the wrong token: %v; want ErrAuth (rejected)", err)
	}
	c := client.New(TCPDialer(addr, newToken(t)))
	defer c.Close()
	if _, err := c.Health(ctxTimeout(t, 10*time.Second)); !errors.Is(err, ErrAuth) {
		t.Fatalf("Health with the wrong token: %v; want ErrAuth", err)
	}
}

// readAll reads nc until EOF or error, with a deadline so that a connection the agent keeps open fails the test.
func readAll(t *testing.T, nc net.Conn) (string, error) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(20 * time.Second))
	b, err := io.ReadAll(nc)
	return string(b), err
}

// TestAuthNoPreamble is a client that speaks the agent protocol at once (an old host, or a scanner): it gets the
// greeting, then DENIED, then the connection closes, and the agent protocol never starts.
func TestAuthNoPreamble(t *testing.T) {
	addr := authAgent(t, newToken(t), AuthConfig{})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("\x00\x00\x00\x10HELLO{\"protocol_version\":1}\n")); err != nil {
		t.Fatal(err)
	}
	got, err := readAll(t, nc)
	if err != nil {
		t.Fatalf("the agent did not close the connection: %v (read %q)", err, got)
	}
	lines := strings.Split(got, "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], authGreeting+" ") || lines[1] != "DENIED" || lines[2] != "" {
		t.Fatalf("got %q; want the greeting, DENIED and EOF", got)
	}

	// The plain protocol client fails as unavailable.
	c := client.New(func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	})
	defer c.Close()
	if _, err := c.Health(ctxTimeout(t, 10*time.Second)); !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("Health without the preamble: %v; want ErrUnavailable", err)
	}
}

// TestAuthSlowPreamble: clients that say nothing are dropped at the deadline, and never hold up the others.
func TestAuthSlowPreamble(t *testing.T) {
	token := newToken(t)
	addr := authAgent(t, token, AuthConfig{HandshakeTimeout: 500 * time.Millisecond})
	var silent []net.Conn
	for range 5 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		silent = append(silent, nc)
	}
	c := client.New(TCPDialer(addr, token))
	defer c.Close()
	if _, err := c.Health(ctxTimeout(t, 10*time.Second)); err != nil {
		t.Fatalf("Health while silent clients are pending: %v", err)
	}
	for _, nc := range silent {
		got, err := readAll(t, nc)
		if err != nil || !strings.HasPrefix(got, authGreeting+" ") || strings.Contains(got, "OK") {
			t.Fatalf("silent client: read %q, %v; want the greeting then EOF", got, err)
		}
	}
	// A client that starts but stalls mid-line is dropped too.
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := nc.Write([]byte("AUTH 00")); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, nc); err != nil || strings.Contains(got, "OK") {
		t.Fatalf("stalled client: read %q, %v; want EOF", got, err)
	}
}

func TestAuthMaxPending(t *testing.T) {
	token := newToken(t)
	addr := authAgent(t, token, AuthConfig{MaxPending: 2, HandshakeTimeout: 30 * time.Second})
	for range 2 {
		nc, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		// Wait for the greeting, so that this connection surely holds a slot.
		if line, err := readLine(nc, authMaxLine); err != nil || !strings.HasPrefix(line, authGreeting) {
			t.Fatalf("greeting %q, %v", line, err)
		}
	}
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if got, err := readAll(t, nc); err != nil || got != "" {
		t.Fatalf("a connection over the limit read %q, %v; want to be closed at once", got, err)
	}
}

// TestAuthMaxPendingPerSource: one peer holding its share of silent connections cannot lock out another (the
// host), because the limit counts per source address.
func TestAuthMaxPendingPerSource(t *testing.T) {
	token := newToken(t)
	addr := authAgent(t, token, AuthConfig{MaxPending: 16, MaxPendingPerSource: 2, HandshakeTimeout: 30 * time.Second})
	dialFrom := func(src string) net.Conn {
		d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}}
		nc, err := d.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nc.Close() })
		return nc
	}
	for range 2 {
		nc := dialFrom("127.0.0.2")
		if line, err := readLine(nc, authMaxLine); err != nil || !strings.HasPrefix(line, authGreeting) {
			t.Fatalf("greeting %q, %v", line, err)
		}
	}
	if got, err := readAll(t, dialFrom("127.0.0.2")); err != nil || got != "" {
		t.Fatalf("a third silent connection from one source read %q, %v; want to be closed at once", got, err)
	}
	// The host, from another address, still gets in.
	nc := dialFrom("127.0.0.1")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := AuthenticateHost(ctx, nc, token); err != nil {
		t.Fatalf("the host was locked out by another source's silent connections: %v", err)
	}
}

// recordConn keeps what is written to it.
type recordConn struct {
	net.Conn
	mu  sync.Mutex
	out bytes.Buffer
}

func (c *recordConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	c.out.Write(p)
	c.mu.Unlock()
	return c.Conn.Write(p)
}

// TestAuthReplay: a recorded AUTH line is worth nothing on another connection (the agent's nonce differs).
func TestAuthReplay(t *testing.T) {
	token := newToken(t)
	addr := authAgent(t, token, AuthConfig{})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &recordConn{Conn: nc}
	if err := AuthenticateHost(ctxTimeout(t, 10*time.Second), rec, token); err != nil {
		t.Fatal(err)
	}
	_ = nc.Close()
	recorded := rec.out.String()
	if !strings.HasPrefix(recorded, "AUTH ") || strings.Contains(recorded, token) {
		t.Fatalf("recorded %q; the token must not be on the wire", recorded)
	}

	nc2, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc2.Close()
	if _, err := readLine(nc2, authMaxLine); err != nil {
		t.Fatal(err)
	}
	if _, err := nc2.Write([]byte(recorded)); err != nil {
		t.Fatal(err)
	}
	if got, err := readAll(t, nc2); err != nil || got != "DENIED\n" {
		t.Fatalf("replayed credentials: read %q, %v; want DENIED and EOF", got, err)
	}
}

// TestAuthImpostor: a peer that does not hold the token cannot pass for the agent, even if it accepts anything.
func TestAuthImpostor(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptLoop(t, l, func(nc net.Conn) {
		defer nc.Close()
		nonce := make([]byte, authNonceLen)
		_, _ = rand.Read(nonce)
		_, _ = nc.Write([]byte(authGreeting + " " + hex.EncodeToString(nonce) + "\n"))
		if _, err := readLine(nc, authMaxLine); err != nil {
			return
		}
		fake := make([]byte, 32)
		_, _ = rand.Read(fake)
		_, _ = nc.Write([]byte("OK " + hex.EncodeToString(fake) + "\n"))
		_, _ = io.Copy(io.Discard, nc)
	})
	_, err = TCPDialer(l.Addr().String(), newToken(t))(ctxTimeout(t, 10*time.Second))
	if !errors.Is(err, ErrAuth) || !strings.Contains(err.Error(), "not the agent") {
		t.Fatalf("dial to an impostor: %v; want ErrAuth (not the agent)", err)
	}

	// A server that is not an agent at all.
	l2, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptLoop(t, l2, func(nc net.Conn) {
		_, _ = nc.Write([]byte("SSH-2.0-OpenSSH_9.2\r\n"))
		_, _ = io.Copy(io.Discard, nc)
		_ = nc.Close()
	})
	if _, err := TCPDialer(l2.Addr().String(), newToken(t))(ctxTimeout(t, 10*time.Second)); !errors.Is(err, ErrHandshake) {
		t.Fatalf("dial to a non-agent: %v; want ErrHandshake", err)
	}
}

func TestAuthHostTimeout(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	acceptLoop(t, l, func(nc net.Conn) { _, _ = io.Copy(io.Discard, nc) }) // never greets
	_, err = TCPDialer(l.Addr().String(), newToken(t))(ctxTimeout(t, 200*time.Millisecond))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("dial to a silent peer: %v; want context.DeadlineExceeded", err)
	}
}

func TestTokens(t *testing.T) {
	for _, bad := range []string{"", "short", strings.Repeat("a", 15), "with space in the token", strings.Repeat("a", maxTokenLen+1)} {
		if err := CheckToken(bad); err == nil {
			t.Errorf("CheckToken(%q) accepted it", bad)
		}
		if _, err := ListenTCPAuth("127.0.0.1:0", bad, AuthConfig{}); err == nil {
			t.Errorf("ListenTCPAuth accepted token %q", bad)
		}
		if _, err := TCPDialer("127.0.0.1:1", bad)(ctxTimeout(t, time.Second)); err == nil {
			t.Errorf("TCPDialer accepted token %q", bad)
		}
	}
	dir := tempDir(t)
	token := newToken(t)
	good := filepath.Join(dir, "token")
	if err := os.WriteFile(good, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadToken(good); err != nil || got != token {
		t.Fatalf("LoadToken: %q, %v", got, err)
	}
	short := filepath.Join(dir, "short")
	if err := os.WriteFile(short, []byte("abc\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadToken(short); err == nil || !strings.Contains(err.Error(), "short") {
		t.Fatalf("LoadToken of a short token: %v", err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, bytes.Repeat([]byte("a"), 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadToken(big); err == nil {
		t.Fatal("LoadToken accepted a 1 MiB file")
	}
	if _, err := LoadToken(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("LoadToken of a missing file: %v", err)
	}
}

// TestAuthListenerClose: Close returns while connections are in the preamble, and Accept then fails.
func TestAuthListenerClose(t *testing.T) {
	l, err := ListenTCPAuth("127.0.0.1:0", newToken(t), AuthConfig{HandshakeTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := readLine(nc, authMaxLine); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-accepted; !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Accept after Close: %v", err)
	}
	if got, err := readAll(t, nc); err != nil || got != "" {
		t.Fatalf("pending connection after Close: %q, %v; want EOF", got, err)
	}
}
