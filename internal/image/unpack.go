//go:build linux

package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// UnpackStats counts what Unpack wrote.
type UnpackStats struct {
	Entries int   // entries written (whiteouts and the root itself not counted)
	Bytes   int64 // bytes of regular file content
}

// Unpack writes the tar stream r into dir, which must exist. It is meant for container exports, which are
// untrusted input: every write goes through an os.Root, so neither ".." in names nor symlinks (absolute or
// relative, in the archive or planted by earlier entries) can make it write outside dir; names that try are
// rejected with an error. Modes (including setuid/setgid/sticky), owners, symlinks, hard links and device nodes
// are kept where the process may create them (owners and devices need root: without it they are skipped).
// Overlay whiteouts (.wh.*) are skipped: an export is already a flattened filesystem.
func Unpack(r io.Reader, dir string) (UnpackStats, error) {
	var st UnpackStats
	root, err := os.OpenRoot(dir)
	if err != nil {
		return st, fmt.Errorf("unpack: %w", err)
	}
	defer root.Close()
	privileged := os.Geteuid() == 0

	type dirTime struct {
		name string
		mt   time.Time
	}
	var dirTimes []dirTime
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return st, fmt.Errorf("unpack: read archive: %w", err)
		}
		name, err := cleanName(h.Name)
		if err != nil {
			return st, err
		}
		if name == "." || strings.HasPrefix(path.Base(name), ".wh.") {
			continue
		}
		if parent := path.Dir(name); parent != "." {
			// Exports list parents first, but an archive may not; missing parents get default modes.
			if err := root.MkdirAll(parent, 0o755); err != nil {
				return st, fmt.Errorf("unpack: %s: %w", name, err)
			}
		}
		mode := fs.FileMode(h.Mode & 0o777)
		if h.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if h.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if h.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}

		switch h.Typeflag {
		case tar.TypeDir:
			if fi, err := root.Lstat(name); err == nil && !fi.IsDir() {
				if err := root.Remove(name); err != nil {
					return st, fmt.Errorf("unpack: replace %s with a directory: %w", name, err)
				}
			}
			if err := root.Mkdir(name, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return st, fmt.Errorf("unpack: %s: %w", name, err)
			}
			dirTimes = append(dirTimes, dirTime{name, h.ModTime})
		case tar.TypeReg, tar.TypeChar, tar.TypeBlock, tar.TypeFifo, tar.TypeSymlink, tar.TypeLink:
			if err := removeExisting(root, name); err != nil {
				return st, err
			}
			switch h.Typeflag {
			case tar.TypeReg:
				f, err := root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					return st, fmt.Errorf("unpack: %s: %w", name, err)
				}
				n, err := io.Copy(f, tr)
				if cerr := f.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return st, fmt.Errorf("unpack: write %s: %w", name, err)
				}
				st.Bytes += n
			case tar.TypeSymlink:
				// The link itself may point anywhere (it is resolved inside the guest, not here); only writes
				// through it are confined, by the os.Root.
				if err := root.Symlink(h.Linkname, name); err != nil {
					return st, fmt.Errorf("unpack: symlink %s: %w", name, err)
				}
			case tar.TypeLink:
				target, err := cleanName(h.Linkname)
				if err != nil {
					return st, err
				}
				if err := root.Link(target, name); err != nil {
					return st, fmt.Errorf("unpack: hard link %s -> %s: %w", name, target, err)
				}
			default:
				if h.Typeflag != tar.TypeFifo && !privileged {
					continue // device nodes need CAP_MKNOD
				}
				if err := mknod(root, name, h); err != nil {
					return st, err
				}
			}
		default:
			// Extended headers are consumed by archive/tar; anything else (sparse, GNU volume) an export never has.
			continue
		}
		st.Entries++
		if h.Typeflag == tar.TypeLink {
			continue // shares the target's inode, already owned and moded
		}
		if privileged {
			if err := root.Lchown(name, h.Uid, h.Gid); err != nil {
				return st, fmt.Errorf("unpack: chown %s: %w", name, err)
			}
		}
		if h.Typeflag != tar.TypeSymlink {
			// After chown, which clears setuid bits; Chmod also ignores the umask applied at creation.
			if err := root.Chmod(name, mode); err != nil {
				return st, fmt.Errorf("unpack: chmod %s: %w", name, err)
			}
			if h.Typeflag != tar.TypeDir {
				if err := root.Chtimes(name, h.ModTime, h.ModTime); err != nil {
					return st, fmt.Errorf("unpack: set times of %s: %w", name, err)
				}
			}
		}
	}
	// Directory times last, deepest first, since creating entries in a directory changes its mtime.
	sort.Slice(dirTimes, func(i, j int) bool { return len(dirTimes[i].name) > len(dirTimes[j].name) })
	for _, d := range dirTimes {
		if err := root.Chtimes(d.name, d.mt, d.mt); err != nil {
			return st, fmt.Errorf("unpack: set times of %s: %w", d.name, err)
		}
	}
	return st, nil
}

// cleanName turns an archive name into a path relative to the root, rejecting any that leave it. Leading "/" and
// "./" are accepted (exports use neither, but other tools do) and mean the root.
func cleanName(name string) (string, error) {
	if strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("unpack: entry name %q contains NUL", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("unpack: entry %q leaves the root (path traversal)", name)
		}
	}
	c := path.Clean("/" + name)
	if c == "/" {
		return ".", nil
	}
	return c[1:], nil
}

// removeExisting clears the way for a non-directory entry (archives may repeat a name; the last one wins).
func removeExisting(root *os.Root, name string) error {
	fi, err := root.Lstat(name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return fmt.Errorf("unpack: %s: %w", name, err)
	}
	if fi.IsDir() {
		return fmt.Errorf("unpack: %s: a directory is in the way of a non-directory entry", name)
	}
	if err := root.Remove(name); err != nil {
		return fmt.Errorf("unpack: replace %s: %w", name, err)
	}
	return nil
}

// mknod creates a device node or FIFO with mknodat relative to its parent, opened through the root, so that the
// parent cannot be a symlink out of it. os.Root has no Mknod.
func mknod(root *os.Root, name string, h *tar.Header) error {
	parent, err := root.Open(path.Dir(name))
	if err != nil {
		return fmt.Errorf("unpack: %s: %w", name, err)
	}
	defer parent.Close()
	var typ uint32
	switch h.Typeflag {
	case tar.TypeChar:
		typ = syscall.S_IFCHR
	case tar.TypeBlock:
		typ = syscall.S_IFBLK
	default:
		typ = syscall.S_IFIFO
	}
	dev := unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor))
	if err := unix.Mknodat(int(parent.Fd()), path.Base(name), typ|0o600, int(dev)); err != nil {
		return fmt.Errorf("unpack: mknod %s: %w", name, err)
	}
	return nil
}
