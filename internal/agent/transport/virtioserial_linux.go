//go:build linux

package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// SysVirtioPorts is where the kernel lists virtio-serial ports, each with the name QEMU gave it.
const SysVirtioPorts = "/sys/class/virtio-ports"

// ListenVirtioSerial serves the multiplexed transport on the virtio-serial port that QEMU named name
// (-device virtserialport,name=NAME). A minimal guest has no udev to make /dev/virtio-ports/NAME, so the port
// is found by reading /sys/class/virtio-ports/vport*/name.
func ListenVirtioSerial(name string, log *slog.Logger) (*MuxListener, error) {
	dev, err := FindVirtioPort(SysVirtioPorts, "/dev", name)
	if err != nil {
		return nil, err
	}
	f, err := openPort(dev)
	if err != nil {
		return nil, err
	}
	p := &virtioPort{path: dev, f: f}
	return serveMultiplexed(p.open, "virtio-serial:"+name, log, p.close), nil
}

// FindVirtioPort returns the device node of the virtio-serial port called name, listed under sysDir (normally
// SysVirtioPorts) with its node under devDir. A missing node (no devtmpfs) is made from the port's major:minor.
func FindVirtioPort(sysDir, devDir, name string) (string, error) {
	if name == "" || strings.ContainsAny(name, "/\n") {
		return "", fmt.Errorf("virtio-serial port name %q is not valid", name)
	}
	dirs, err := filepath.Glob(filepath.Join(sysDir, "vport*"))
	if err != nil {
		return "", err
	}
	var seen []string
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "name"))
		if err != nil {
			continue // a port without a name (a console) or one going away
		}
		got := strings.TrimSpace(string(b))
		if got != name {
			seen = append(seen, got)
			continue
		}
		dev := filepath.Join(devDir, filepath.Base(dir))
		if _, err := os.Stat(dev); err == nil {
			return dev, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		if err := mknodFromSys(dir, dev); err != nil {
			return "", fmt.Errorf("virtio-serial port %q: %s is missing and cannot be made: %w", name, dev, err)
		}
		return dev, nil
	}
	return "", fmt.Errorf("no virtio-serial port named %q in %s (ports: %q); is the virtio_console driver loaded?", name, sysDir, seen)
}

func mknodFromSys(sysPortDir, dev string) error {
	b, err := os.ReadFile(filepath.Join(sysPortDir, "dev"))
	if err != nil {
		return err
	}
	maj, mnr, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	major, err1 := strconv.ParseUint(maj, 10, 32)
	minor, err2 := strconv.ParseUint(mnr, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return fmt.Errorf("bad device number %q", b)
	}
	return unix.Mknod(dev, unix.S_IFCHR|0o600, int(unix.Mkdev(uint32(major), uint32(minor))))
}

func openPort(dev string) (*os.File, error) {
	// os.OpenFile puts a character device that supports poll (virtio_console does) in the runtime's poller,
	// which is what makes the deadlines below work.
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, fmt.Errorf("virtio-serial: %w", err)
	}
	return f, nil
}

// virtioPort keeps the port open for the whole life of the listener and hands out one handle per session.
// Closing the device between sessions would work too, but each close and open tells QEMU that the guest side
// went away and came back, and a reopen can race with the close still in progress (EBUSY: a port has one
// opener); a deadline in the past interrupts the old session's reads just as well.
type virtioPort struct {
	path string

	mu sync.Mutex
	f  *os.File // nil after a failed handover; reopened by open
}

func (p *virtioPort) open(context.Context) (io.ReadWriteCloser, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		f, err := openPort(p.path)
		if err != nil {
			return nil, err
		}
		p.f = f
	}
	if err := p.f.SetDeadline(time.Time{}); err != nil {
		// Not in the poller: the only way to interrupt a read is to close the file, so every handle gets a
		// file of its own.
		f := p.f
		p.f = nil
		return &portHandle{f: f, own: true}, nil
	}
	return &portHandle{f: p.f}, nil
}

func (p *virtioPort) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.f == nil {
		return nil
	}
	err := p.f.Close()
	p.f = nil
	return err
}

// portHandle is one session's use of the port. Its Close interrupts the session's reads and writes; it
// closes the file only when the file is its own.
type portHandle struct {
	f   *os.File
	own bool

	mu     sync.Mutex
	closed bool
}

func (h *portHandle) isClosed() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.closed
}

func (h *portHandle) Read(b []byte) (int, error) {
	if h.isClosed() {
		return 0, os.ErrClosed
	}
	n, err := h.f.Read(b)
	if err != nil && h.isClosed() {
		err = os.ErrClosed
	}
	return n, err
}

func (h *portHandle) Write(b []byte) (int, error) {
	if h.isClosed() {
		return 0, os.ErrClosed
	}
	n, err := h.f.Write(b)
	if err != nil && h.isClosed() {
		err = os.ErrClosed
	}
	return n, err
}

func (h *portHandle) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	if h.own {
		return h.f.Close()
	}
	return h.f.SetDeadline(time.Unix(1, 0))
}
