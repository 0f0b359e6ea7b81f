// Package deps pins module dependencies while the packages that use them are being written; it goes away once they
// are imported for real.
package deps

import (
	_ "github.com/creack/pty"
	_ "github.com/mdlayher/vsock"
)
