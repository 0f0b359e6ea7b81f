//go:build linux

package docker

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDialNoFollow checks the dial against what a guest can leave in its directory, without a Docker engine.
func TestDialNoFollow(t *testing.T) {
	dir, err := os.MkdirTemp("", "aedial-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	mk := func(name string) string {
		p := filepath.Join(dir, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	// A real listener elsewhere: a symlink to it must not be followed.
	target := filepath.Join(mk("target"), "agent.sock")
	l, err := net.Listen("unix", target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	if err := os.Symlink(target, filepath.Join(mk("link"), "agent.sock")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(mk("fifo"), "agent.sock"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mk("file"), "agent.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// The VM's directory itself replaced by a symlink (the host made it, but check the walk anyway).
	if err := os.Symlink(filepath.Join(dir, "target"), filepath.Join(dir, "dirlink")); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for sub, want := range map[string]string{"link": "symbolic link", "fifo": "fifo", "file": "regular file"} {
		_, err := dialNoFollow(ctx, dir, sub, "agent.sock")
		if !errors.Is(err, errHostileSocket) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want refused as a %s", sub, err, want)
		}
	}
	if _, err := dialNoFollow(ctx, dir, "dirlink", "agent.sock"); err == nil || !errors.Is(err, syscall.ELOOP) && !errors.Is(err, syscall.ENOTDIR) {
		t.Errorf("through a symlinked directory: %v; want ELOOP", err)
	}
	// The real socket: connected, and its listener is this process.
	nc, err := dialNoFollow(ctx, dir, "target", "agent.sock")
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	pid, err := peerPID(nc)
	if err != nil || pid != os.Getpid() {
		t.Fatalf("peerPID = %d, %v; want %d", pid, err, os.Getpid())
	}
}
