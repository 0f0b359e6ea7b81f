//go:build linux

package server

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/agent/protocol"
)

func TestCleanPath(t *testing.T) {
	for in, want := range map[string]string{
		"/":             "/",
		"/tmp/":         "/tmp",
		"/tmp/../etc/x": "/etc/x",
		"//a//b/./c":    "/a/b/c",
		"/..":           "/",
	} {
		got, perr := cleanPath(in)
		if perr != nil || got != want {
			t.Errorf("cleanPath(%q) = %q, %v; want %q", in, got, perr, want)
		}
	}
	for _, in := range []string{"", "a", "./a", "../a", "/a\x00b", "/" + strings.Repeat("x", maxPathLen)} {
		if _, perr := cleanPath(in); perr == nil || perr.Code != protocol.CodeInvalidPath {
			t.Errorf("cleanPath(%q): %v; want invalid_path", in, perr)
		}
	}
}

// FuzzCleanPath: every accepted path is absolute, clean, NUL-free and a fixed point.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{"/", "/a/../b", "rel", "/a\x00", "//x/./y/", "/.."} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, perr := cleanPath(in)
		if perr != nil {
			if perr.Code != protocol.CodeInvalidPath {
				t.Fatalf("code %q", perr.Code)
			}
			return
		}
		if !filepath.IsAbs(got) || strings.IndexByte(got, 0) >= 0 || filepath.Clean(got) != got || len(got) > maxPathLen {
			t.Fatalf("cleanPath(%q) = %q", in, got)
		}
		if again, perr := cleanPath(got); perr != nil || again != got {
			t.Fatalf("not a fixed point: %q -> %q (%v)", got, again, perr)
		}
	})
}

func TestParseSignal(t *testing.T) {
	for in, want := range map[string]int{"SIGTERM": 15, "TERM": 15, "term": 15, "9": 9, "SIGKILL": 9, "sigusr1": 10, "64": 64} {
		got, err := parseSignal(in)
		if err != nil || int(got) != want {
			t.Errorf("parseSignal(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "65", "-1", "SIGFROB", "SIG"} {
		if _, err := parseSignal(in); err == nil {
			t.Errorf("parseSignal(%q) accepted", in)
		}
	}
}

func TestValidProcessID(t *testing.T) {
	for id, ok := range map[string]bool{"p1": true, "exec-0194.abc_D": true, "": false, "a b": false, "a/b": false,
		strings.Repeat("x", 128): true, strings.Repeat("x", 129): false, "é": false} {
		if validProcessID(id) != ok {
			t.Errorf("validProcessID(%q) = %v", id, !ok)
		}
	}
}
