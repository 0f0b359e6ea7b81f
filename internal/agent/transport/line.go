package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

// errLineTooLong is returned by readLine for a line longer than its limit: the peer is not speaking the
// expected preamble, and an unbounded read would let it make us buffer forever.
var errLineTooLong = errors.New("line too long")

// readLine reads one '\n'-terminated line from r one byte at a time and returns it without the newline. It never
// reads past the newline: whatever follows belongs to the protocol that the preamble hands over to, and a
// buffered reader would swallow the start of it. Preambles are a few dozen bytes, read once per connection, so
// the per-byte reads cost nothing that matters. It fails on EOF before the newline (io.EOF if nothing at all
// was read, io.ErrUnexpectedEOF otherwise) and on lines longer than max.
func readLine(r io.Reader, max int) (string, error) {
	buf := make([]byte, 0, 64)
	var b [1]byte
	for {
		n, err := r.Read(b[:])
		if n == 1 {
			if b[0] == '\n' {
				return string(buf), nil
			}
			if len(buf) >= max {
				return "", fmt.Errorf("%w (more than %d bytes without a newline)", errLineTooLong, max)
			}
			buf = append(buf, b[0])
			continue
		}
		if err != nil {
			if errors.Is(err, io.EOF) && len(buf) > 0 {
				return "", fmt.Errorf("%w after %q", io.ErrUnexpectedEOF, buf)
			}
			return "", err
		}
	}
}

// withDeadline runs fn, a blocking exchange on nc, bounded by ctx: ctx's deadline becomes nc's, and cancelling
// ctx interrupts fn. The deadline is cleared afterwards, so that the connection can be handed over. A timeout
// caused by ctx is reported as ctx's error, so that callers can tell "too slow" from "refused".
func withDeadline(ctx context.Context, nc net.Conn, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok {
		if err := nc.SetDeadline(dl); err != nil {
			return fmt.Errorf("set deadline: %w", err)
		}
	}
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	err := fn()
	stopped := stop()
	if err != nil {
		// The socket's only deadlines come from ctx, so a timeout means ctx ended (its timer may fire a moment
		// after the socket's).
		if !stopped || errors.Is(err, os.ErrDeadlineExceeded) {
			cerr := ctx.Err()
			if cerr == nil {
				cerr = context.DeadlineExceeded
			}
			return fmt.Errorf("%w (%w)", cerr, err)
		}
		return err
	}
	if !stopped || ctx.Err() != nil {
		// ctx ended just as fn finished: the socket may already carry the past deadline.
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return context.Canceled
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear deadline: %w", err)
	}
	return nil
}
