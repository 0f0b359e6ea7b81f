//go:build unix

package cli

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"golang.org/x/term"
)

// watchResize calls resize with the terminal's new size each time it changes (SIGWINCH), until ctx ends.
func watchResize(ctx context.Context, fd int, resize func(rows, cols uint16)) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGWINCH)
	defer signal.Stop(ch)
	for {
		select {
		case <-ctx.Done():
			return
		case <-ch:
			if w, h, err := term.GetSize(fd); err == nil && w > 0 && h > 0 {
				resize(uint16(h), uint16(w))
			}
		}
	}
}
