//go:build linux

package transport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent/server"
)

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("AETHERIUM_AGENT_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return nil
}

// serveAgent runs an in-process agent server on l until the test ends, or until the returned function
// stops it (an agent that goes away).
func serveAgent(t testing.TB, l net.Listener) (stop func()) {
	t.Helper()
	srv := server.New(server.Config{Version: "test", Logger: testLogger(t)})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			_ = srv.Close()
			if err := <-done; !errors.Is(err, server.ErrServerClosed) {
				t.Errorf("Serve returned %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// tempDir returns a short directory for Unix sockets (their paths are limited to 108 bytes).
func tempDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "transport")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

// unixAgent serves an agent on a new Unix socket and returns its path.
func unixAgent(t testing.TB) string {
	t.Helper()
	path := filepath.Join(tempDir(t), "agent.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	serveAgent(t, l)
	return path
}

func newToken(t testing.TB) string {
	t.Helper()
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func ctxTimeout(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// splice copies between a and b until either side ends, then closes both, as a VMM's proxy does.
func splice(a, b net.Conn) {
	var once sync.Once
	closeBoth := func() {
		once.Do(func() {
			_ = a.Close()
			_ = b.Close()
		})
	}
	go func() {
		_, _ = io.Copy(a, b)
		closeBoth()
	}()
	go func() {
		_, _ = io.Copy(b, a)
		closeBoth()
	}()
}

// connTracker serves a listener's connections with fn and closes the ones still open when stopped.
type connTracker struct {
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func (c *connTracker) add(nc net.Conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conns == nil {
		c.conns = make(map[net.Conn]struct{})
	}
	c.conns[nc] = struct{}{}
}

func (c *connTracker) closeAll() {
	c.mu.Lock()
	for nc := range c.conns {
		_ = nc.Close()
	}
	c.mu.Unlock()
}

// acceptLoop serves l with fn (each connection in its own goroutine) until the test ends.
func acceptLoop(t testing.TB, l net.Listener, fn func(net.Conn)) {
	t.Helper()
	var tr connTracker
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			tr.add(nc)
			tr.wg.Add(1)
			go func() {
				defer tr.wg.Done()
				fn(nc)
			}()
		}
	}()
	t.Cleanup(func() {
		_ = l.Close()
		<-done
		tr.closeAll()
		tr.wg.Wait()
	})
}
