//go:build linux

package vmproc

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func writeSparse(t *testing.T, path string, size int64, data map[int64]string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	for off, s := range data {
		if _, err := f.WriteAt([]byte(s), off); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCloneDisk(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "tmpl"), filepath.Join(dir, "clone")
	const size = 64 << 20
	writeSparse(t, src, size, map[int64]string{0: "boot", 5 << 20: "middle", size - 4: "end!"})
	method, err := CloneDisk(src, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("clone method: %s", method)
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("clone differs from the template")
	}
	var st syscall.Stat_t
	if err := syscall.Stat(dst, &st); err != nil {
		t.Fatal(err)
	}
	if method == CloneSparse && st.Blocks*512 > 1<<20 {
		t.Errorf("sparse clone allocates %d bytes for 12 bytes of data", st.Blocks*512)
	}
	// Writing to the clone leaves the template alone.
	f, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("CHANGED"), 5<<20); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	if a2, _ := os.ReadFile(src); !bytes.Equal(a, a2) {
		t.Fatal("writing to the clone changed the template")
	}
	if _, err := CloneDisk(src, dst); err == nil {
		t.Fatal("clone over an existing disk succeeded")
	}
	if _, err := CloneDisk(filepath.Join(dir, "missing"), filepath.Join(dir, "x")); err == nil {
		t.Fatal("clone of a missing template succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("failed clone left a file")
	}
}

func TestReflinkFailsCleanlyWhereUnsupported(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "tmpl")
	writeSparse(t, src, 1<<20, map[int64]string{0: "x"})
	dst := filepath.Join(dir, "clone")
	if err := Reflink(src, dst); err != nil {
		// ext4 and tmpfs cannot share blocks: the error is the caller's cue to fall back, and nothing is left.
		if _, serr := os.Stat(dst); !errors.Is(serr, os.ErrNotExist) {
			t.Fatal("a failed reflink left its destination")
		}
		return
	}
	a, _ := os.ReadFile(src)
	b, _ := os.ReadFile(dst)
	if !bytes.Equal(a, b) {
		t.Fatal("reflink differs from its source")
	}
}
