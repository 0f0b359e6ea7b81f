//go:build !unix

package cli

import "context"

// watchResize does nothing where there is no SIGWINCH: the remote terminal keeps its first size.
func watchResize(context.Context, int, func(rows, cols uint16)) {}
