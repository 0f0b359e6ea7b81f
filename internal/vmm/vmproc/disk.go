//go:build linux

package vmproc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// CloneMethod says how a disk was copied.
type CloneMethod string

// Clone methods, best first.
const (
	CloneReflink CloneMethod = "reflink" // shares blocks with the template until written (btrfs, xfs, ...)
	CloneSparse  CloneMethod = "sparse"  // copies data, leaves holes and zero blocks unallocated
)

// cloneBlock is the granularity at which zero blocks are skipped in a sparse copy (ext4's block size).
const cloneBlock = 64 << 10

// CloneDisk makes dst a private copy of the template src: a reflink where the filesystem can (instant, no space
// used until the guest writes), otherwise a sparse copy. dst must not exist; on failure nothing is left.
func CloneDisk(src, dst string) (CloneMethod, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", fmt.Errorf("open template: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", fmt.Errorf("stat template: %w", err)
	}
	if !st.Mode().IsRegular() {
		return "", fmt.Errorf("template %s is not a regular file", src)
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("create disk: %w", err)
	}
	method, err := cloneInto(in, out, st.Size())
	if cerr := out.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return "", fmt.Errorf("clone %s to %s: %w", src, dst, err)
	}
	return method, nil
}

func cloneInto(in, out *os.File, size int64) (CloneMethod, error) {
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return CloneReflink, nil
	}
	// Not supported here (EOPNOTSUPP, EXDEV, EINVAL on ext4 and tmpfs): copy, keeping holes.
	if err := sparseCopy(in, out, size); err != nil {
		return "", err
	}
	return CloneSparse, nil
}

// sparseCopy copies the data regions of in (found with SEEK_DATA/SEEK_HOLE) to out, skipping blocks of zeros
// inside them too, and sets out's size, so the copy allocates only what holds data.
func sparseCopy(in, out *os.File, size int64) error {
	if err := out.Truncate(size); err != nil {
		return err
	}
	buf := make([]byte, cloneBlock)
	zero := make([]byte, cloneBlock)
	var off int64
	for off < size {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}
		if err != nil {
			// No SEEK_DATA support: treat the rest as data.
			data = off
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			hole = size
		}
		for pos := data; pos < hole; {
			n := min(int64(len(buf)), hole-pos)
			if _, err := io.ReadFull(io.NewSectionReader(in, pos, n), buf[:n]); err != nil {
				return err
			}
			if !bytes.Equal(buf[:n], zero[:n]) {
				if _, err := out.WriteAt(buf[:n], pos); err != nil {
					return err
				}
			}
			pos += n
		}
		off = hole
	}
	return nil
}

// Reflink makes dst a copy-on-write clone of src (FICLONE), or fails where the filesystem cannot share blocks
// (ext4, tmpfs, across filesystems); dst is then removed. Callers fall back to another copy-on-write scheme.
func Reflink(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("open template: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create disk: %w", err)
	}
	err = unix.IoctlFileClone(int(out.Fd()), int(in.Fd()))
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(dst)
		return fmt.Errorf("reflink %s: %w", src, err)
	}
	return nil
}
