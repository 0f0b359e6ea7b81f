//go:build linux

package image

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

type entry struct {
	h    tar.Header
	body string
}

func makeTar(t *testing.T, entries ...entry) *bytes.Reader {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.h
		h.Size = int64(len(e.body))
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(e.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return bytes.NewReader(buf.Bytes())
}

// TestUnpackRejectsEscapes feeds crafted archives that try to write outside the root and checks that each is
// refused and that nothing appeared outside.
func TestUnpackRejectsEscapes(t *testing.T) {
	cases := map[string][]entry{
		"dotdot":           {{h: tar.Header{Name: "../outside/evil", Typeflag: tar.TypeReg}, body: "x"}},
		"dotdot inside":    {{h: tar.Header{Name: "a/../../outside/evil", Typeflag: tar.TypeReg}, body: "x"}},
		"absolute symlink": {{h: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE"}}, {h: tar.Header{Name: "link/evil", Typeflag: tar.TypeReg}, body: "x"}},
		"relative symlink": {{h: tar.Header{Name: "link", Typeflag: tar.TypeSymlink, Linkname: "../outside"}}, {h: tar.Header{Name: "link/evil", Typeflag: tar.TypeReg}, body: "x"}},
		"symlink to file":  {{h: tar.Header{Name: "evil", Typeflag: tar.TypeSymlink, Linkname: "OUTSIDE/evil"}}, {h: tar.Header{Name: "evil/../evil", Typeflag: tar.TypeReg}, body: "x"}},
		"hard link out":    {{h: tar.Header{Name: "hl", Typeflag: tar.TypeLink, Linkname: "../outside/victim"}}},
	}
	for name, entries := range cases {
		t.Run(name, func(t *testing.T) {
			base := t.TempDir()
			root, outside := filepath.Join(base, "root"), filepath.Join(base, "outside")
			for _, d := range []string{root, outside} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(outside, "victim"), []byte("v"), 0o644); err != nil {
				t.Fatal(err)
			}
			for i := range entries {
				entries[i].h.Linkname = strings.ReplaceAll(entries[i].h.Linkname, "OUTSIDE", outside)
			}
			if _, err := Unpack(makeTar(t, entries...), root); err == nil {
				t.Fatal("Unpack accepted an archive that writes outside its root")
			}
			got, _ := os.ReadDir(outside)
			if len(got) != 1 || got[0].Name() != "victim" {
				t.Fatalf("outside dir now holds %v", got)
			}
			if fi, _ := os.Stat(filepath.Join(outside, "victim")); fi.Sys().(*syscall.Stat_t).Nlink != 1 {
				t.Fatal("victim got a hard link")
			}
		})
	}
}

// TestUnpackKeepsMetadata checks modes, owners, links, FIFOs, whiteouts and content.
func TestUnpackKeepsMetadata(t *testing.T) {
	root := t.TempDir()
	st, err := Unpack(makeTar(t,
		entry{h: tar.Header{Name: "./bin/", Typeflag: tar.TypeDir, Mode: 0o755}},
		entry{h: tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o4755, Uid: 1000, Gid: 1001}, body: "#!/bin/sh\n"},
		entry{h: tar.Header{Name: "bin/alias", Typeflag: tar.TypeSymlink, Linkname: "/bin/tool"}},
		entry{h: tar.Header{Name: "bin/hard", Typeflag: tar.TypeLink, Linkname: "bin/tool"}},
		entry{h: tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777}},
		entry{h: tar.Header{Name: "tmp/.wh.gone", Typeflag: tar.TypeReg}},
		entry{h: tar.Header{Name: "run/fifo", Typeflag: tar.TypeFifo, Mode: 0o620}},
		entry{h: tar.Header{Name: "dev/null", Typeflag: tar.TypeChar, Mode: 0o666, Devmajor: 1, Devminor: 3}},
	), root)
	if err != nil {
		t.Fatalf("Unpack: %v", err)
	}
	priv := os.Geteuid() == 0
	wantEntries := 7
	if !priv {
		wantEntries = 6
	}
	if st.Entries != wantEntries || st.Bytes != int64(len("#!/bin/sh\n")) {
		t.Fatalf("stats %+v, want %d entries and 10 bytes", st, wantEntries)
	}
	fi, err := os.Lstat(filepath.Join(root, "bin/tool"))
	if err != nil {
		t.Fatal(err)
	}
	sys := fi.Sys().(*syscall.Stat_t)
	if fi.Mode()&os.ModeSetuid == 0 || fi.Mode().Perm() != 0o755 || sys.Nlink != 2 {
		t.Fatalf("bin/tool: mode %v nlink %d", fi.Mode(), sys.Nlink)
	}
	if priv && (sys.Uid != 1000 || sys.Gid != 1001) {
		t.Fatalf("bin/tool owned by %d:%d, want 1000:1001", sys.Uid, sys.Gid)
	}
	if l, err := os.Readlink(filepath.Join(root, "bin/alias")); err != nil || l != "/bin/tool" {
		t.Fatalf("bin/alias -> %q, %v", l, err)
	}
	if fi, err := os.Stat(filepath.Join(root, "tmp")); err != nil || fi.Mode()&os.ModeSticky == 0 || fi.Mode().Perm() != 0o777 {
		t.Fatalf("tmp: %v %v", fi.Mode(), err)
	}
	if _, err := os.Lstat(filepath.Join(root, "tmp/.wh.gone")); !os.IsNotExist(err) {
		t.Fatalf("whiteout written: %v", err)
	}
	if fi, err := os.Lstat(filepath.Join(root, "run/fifo")); err != nil || fi.Mode()&os.ModeNamedPipe == 0 || fi.Mode().Perm() != 0o620 {
		t.Fatalf("run/fifo: %v", err)
	}
	if priv {
		if fi, err := os.Lstat(filepath.Join(root, "dev/null")); err != nil || fi.Mode()&os.ModeCharDevice == 0 {
			t.Fatalf("dev/null: %v", err)
		}
	}
}
