//go:build linux

package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/server"
)

// threads is the number of threads of this process, where the agent under test runs.
func threads(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	t.Fatal("no Threads: in /proc/self/status")
	return 0
}

// TestDownloadSpecialFiles: a FIFO, a socket and a device are refused at once with not_a_regular_file, and
// refusing them leaves no thread behind (a FIFO opened for reading without O_NONBLOCK blocks until a writer comes);
// a /proc file, which stat says is empty, is sent whole with its size unknown.
func TestDownloadSpecialFiles(t *testing.T) {
	c := newTestClient(t, unixServer(t, server.Config{}))
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Warm up the client's connection and the agent's threads before counting.
	if _, err := c.Download(ctx, "/dev/null", io.Discard); !client.IsCode(err, agent.CodeNotARegularFile) {
		t.Fatalf("/dev/null: %v", err)
	}
	before := threads(t)
	for i := range 31 {
		for _, p := range []string{fifo, sock, "/dev/zero"} {
			rctx, rcancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := c.Download(rctx, p, io.Discard)
			rcancel()
			if !client.IsCode(err, agent.CodeNotARegularFile) || !strings.Contains(err.Error(), "not a regular file") {
				t.Fatalf("download %d of %s: %v, want not_a_regular_file at once", i, p, err)
			}
		}
	}
	if after := threads(t); after > before+4 {
		t.Fatalf("threads %d -> %d after 93 refused downloads: refusals leave threads behind", before, after)
	}

	var got bytes.Buffer
	info, err := c.Download(ctx, "/proc/self/status", &got)
	if err != nil {
		t.Fatalf("/proc/self/status: %v", err)
	}
	if !strings.Contains(got.String(), "Threads:") || info.Size != int64(got.Len()) {
		t.Fatalf("/proc/self/status: %d bytes, info size %d: %.80q", got.Len(), info.Size, got.String())
	}
	f, err := c.OpenFile(ctx, "/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if f.Info.Size != -1 {
		t.Fatalf("HEADER size of a /proc file: %d, want -1 (unknown)", f.Info.Size)
	}
	_ = f.Close()
}

// TestUploadToReadOnlyMount: a write to a read-only filesystem is read_only (409 at the API), not an I/O error.
func TestUploadToReadOnlyMount(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_RDONLY, "size=1m"); err != nil {
		if errors.Is(err, syscall.EPERM) {
			t.Skipf("SKIP: mounting a read-only tmpfs needs root (CAP_SYS_ADMIN): %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	c := newTestClient(t, unixServer(t, server.Config{}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := c.Upload(ctx, agent.UploadRequest{Path: dir + "/f"}, strings.NewReader("x"))
	if !client.IsCode(err, agent.CodeReadOnly) {
		t.Fatalf("upload to a read-only mount: %v, want %s", err, agent.CodeReadOnly)
	}
	_, err = c.Mkdir(ctx, agent.MkdirRequest{Path: dir + "/d"})
	if !client.IsCode(err, agent.CodeReadOnly) {
		t.Fatalf("mkdir on a read-only mount: %v, want %s", err, agent.CodeReadOnly)
	}
}
