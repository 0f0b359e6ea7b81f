package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"

	"github.com/mdlayher/vsock"

	"github.com/aetherium/aetherium/internal/agent"
)

// DefaultVsockPort is the vsock port the agent listens on in a VM.
const DefaultVsockPort = 9999

// ErrRefused is returned when the VMM reached the guest but nothing accepted the connection on the port: the
// agent is not (yet) listening, or the guest is gone. Waiting for readiness retries on it.
var ErrRefused = errors.New("connection refused by the guest")

// fcMaxLine bounds Firecracker's answer ("OK " and a 32-bit port number).
const fcMaxLine = 64

// FirecrackerVsock dials the guest's vsock port through Firecracker's hybrid vsock: connect to the Unix socket
// udsPath that Firecracker listens on for the VM, send "CONNECT <port>\n", and read "OK <host port>\n"; from
// then on the connection is the guest's port. The handshake is bounded by ctx. When no guest program listens
// on the port, Firecracker closes the connection instead of answering: that is ErrRefused.
func FirecrackerVsock(udsPath string, port uint32) agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "unix", udsPath)
		if err != nil {
			return nil, fmt.Errorf("firecracker vsock socket: %w", err)
		}
		if err := firecrackerConnect(ctx, nc, port); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("firecracker vsock %s port %d: %w", udsPath, port, err)
		}
		return nc, nil
	}
}

func firecrackerConnect(ctx context.Context, nc net.Conn, port uint32) error {
	return withDeadline(ctx, nc, func() error {
		if _, err := nc.Write([]byte("CONNECT " + strconv.FormatUint(uint64(port), 10) + "\n")); err != nil {
			// Firecracker may have closed the connection already (a dead VM): a refusal, not a bug.
			return fmt.Errorf("%w: send CONNECT: %w", ErrRefused, err)
		}
		line, err := readLine(nc, fcMaxLine)
		switch {
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || isConnReset(err):
			return fmt.Errorf("%w (no listener on the port, or the VM is not running): %w", ErrRefused, err)
		case err != nil:
			return fmt.Errorf("read CONNECT answer: %w", err)
		}
		word, hostPort, _ := strings.Cut(line, " ")
		if _, perr := strconv.ParseUint(hostPort, 10, 32); word != "OK" || perr != nil {
			return fmt.Errorf("%w: Firecracker answered %q to CONNECT, want \"OK <port>\"", ErrHandshake, truncate(line))
		}
		return nil
	})
}

func isConnReset(err error) bool   { return errors.Is(err, syscall.ECONNRESET) }
func isConnRefused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// VsockDialer dials the guest's AF_VSOCK port from the host kernel (QEMU with vhost-vsock-pci/-device; needs
// /dev/vhost-vsock on the host). cid is the guest's context ID.
func VsockDialer(cid, port uint32) agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		c, err := vsock.DialContext(ctx, cid, port, nil)
		if err != nil {
			if isConnReset(err) || isConnRefused(err) {
				return nil, fmt.Errorf("vsock cid %d port %d: %w: %w", cid, port, ErrRefused, err)
			}
			return nil, fmt.Errorf("vsock cid %d port %d: %w", cid, port, err)
		}
		return c, nil
	}
}

// ListenVsock listens on the AF_VSOCK port in a guest (any CID of the guest). It fails outside a VM with a
// vsock device, and on systems without AF_VSOCK.
func ListenVsock(port uint32) (net.Listener, error) {
	l, err := vsock.Listen(port, nil)
	if err != nil {
		return nil, fmt.Errorf("vsock port %d: %w", port, err)
	}
	return l, nil
}
