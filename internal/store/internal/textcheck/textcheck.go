// Package textcheck says whether strings are text both stores can hold (valid UTF-8, no NUL).
package textcheck

import (
	"strings"
	"unicode/utf8"
)

// Text reports whether s is valid UTF-8 without NUL.
func Text(s string) bool { return utf8.ValidString(s) && strings.IndexByte(s, 0) < 0 }

// Ident reports whether s is 1 to max bytes of Text.
func Ident(s string, max int) bool { return s != "" && len(s) <= max && Text(s) }
