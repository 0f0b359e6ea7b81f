//go:build linux

package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// maxPathLen is PATH_MAX less its NUL: longer paths fail in the kernel anyway, with a less clear error.
const maxPathLen = 4095

// fileChunk is how much of a file is read or sent at a time.
const fileChunk = 128 << 10

// uploadPrefix names the temporary files of uploads in progress (they are renamed over the target when done).
const uploadPrefix = ".aetherium-upload-"

// cleanPath validates a path from the host: absolute, no NUL, not too long; it is returned cleaned.
func cleanPath(p string) (string, *protocol.Error) {
	switch {
	case p == "":
		return "", invalidPath("path is empty")
	case strings.IndexByte(p, 0) >= 0:
		return "", invalidPath("path %q contains a NUL byte", p)
	case !strings.HasPrefix(p, "/"):
		return "", invalidPath("path %q is not absolute", p)
	case len(p) > maxPathLen:
		return "", invalidPath("path of %d bytes is longer than %d", len(p), maxPathLen)
	}
	return filepath.Clean(p), nil
}

func invalidPath(format string, args ...any) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeInvalidPath, Message: fmt.Sprintf(format, args...)}
}

// fsError turns a filesystem error into an error answer with the matching code.
func fsError(op, path string, err error) *protocol.Error {
	code := protocol.CodeIOError
	switch {
	case errors.Is(err, syscall.ENOTEMPTY):
		code = protocol.CodeNotEmpty
	case errors.Is(err, fs.ErrNotExist):
		code = protocol.CodeNotFound
	case errors.Is(err, fs.ErrExist):
		code = protocol.CodeExists
	case errors.Is(err, syscall.ENOTDIR):
		code = protocol.CodeNotADirectory
	case errors.Is(err, syscall.EISDIR):
		code = protocol.CodeIsADirectory
	case errors.Is(err, syscall.EROFS):
		code = protocol.CodeReadOnly
	case errors.Is(err, fs.ErrPermission):
		code = protocol.CodePermissionDenied
	case errors.Is(err, syscall.ENXIO), errors.Is(err, syscall.EOPNOTSUPP):
		// open(2) of a socket (ENXIO), or of a special file no driver serves
		code = protocol.CodeNotARegularFile
	case errors.Is(err, syscall.ENAMETOOLONG), errors.Is(err, syscall.ELOOP):
		code = protocol.CodeInvalidPath
	}
	return &protocol.Error{Code: code, Message: fmt.Sprintf("%s %s: %s", op, path, errText(err))}
}

// fileInfo describes fi, found at path; st_mode, uid and gid come from the raw stat.
func fileInfo(path string, fi fs.FileInfo) protocol.FileInfo {
	info := protocol.FileInfo{Path: path, Size: fi.Size(), MtimeNS: fi.ModTime().UnixNano()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		info.Mode, info.UID, info.GID = st.Mode, int(st.Uid), int(st.Gid)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if target, err := os.Readlink(path); err == nil {
			info.LinkTarget = target
		}
	}
	return info
}

// permBits turns the permission bits of a request (07777, as chmod takes them) into an fs.FileMode.
func permBits(mode uint32) (fs.FileMode, *protocol.Error) {
	if mode&^0o7777 != 0 {
		return 0, badRequest("mode %#o has bits beyond 07777", mode)
	}
	m := fs.FileMode(mode & 0o777)
	if mode&unix.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m, nil
}

func (s *Server) resolveOwner(owner string) (*credential, *protocol.Error) {
	if owner == "" {
		return nil, nil
	}
	cred, err := resolveUser(owner, s.cfg.PasswdFile, s.cfg.GroupFile)
	if errors.Is(err, errUnknownUser) {
		return nil, &protocol.Error{Code: protocol.CodeUnknownUser, Message: err.Error()}
	}
	if err != nil {
		return nil, badRequest("owner: %v", err)
	}
	return cred, nil
}

// fileWrite receives a file as the stream's input and puts it at its path atomically: it is written to a
// temporary file in the same directory, given its owner and mode, synced, and renamed over the path. Nothing is
// held in memory beyond the stream's window.
func (c *conn) fileWrite(st *stream, p protocol.FileWriteParams) (*protocol.FileInfo, *protocol.Error) {
	path, perr := cleanPath(p.Path)
	if perr != nil {
		return nil, perr
	}
	if path == "/" {
		return nil, &protocol.Error{Code: protocol.CodeIsADirectory, Message: "/ is a directory"}
	}
	if p.Mode == 0 {
		p.Mode = 0o644
	}
	mode, perr := permBits(p.Mode)
	if perr != nil {
		return nil, perr
	}
	owner, perr := c.s.resolveOwner(p.Owner)
	if perr != nil {
		return nil, perr
	}
	dir := filepath.Dir(path)
	if p.MkdirParents {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fsError("create parent directories of", path, err)
		}
	}
	// Refuse early what the rename would refuse at the end, before the client sends everything.
	if fi, err := os.Lstat(path); err == nil {
		if fi.IsDir() {
			return nil, &protocol.Error{Code: protocol.CodeIsADirectory, Message: fmt.Sprintf("%s is a directory", path)}
		}
		if p.NoOverwrite {
			return nil, &protocol.Error{Code: protocol.CodeExists, Message: fmt.Sprintf("%s exists", path)}
		}
	}
	f, err := os.CreateTemp(dir, uploadPrefix+"*")
	if err != nil {
		return nil, fsError("create a file in", dir, err)
	}
	tmp := f.Name()
	committed := false
	defer func() {
		if !committed {
			_ = f.Close()
			_ = os.Remove(tmp)
		}
	}()
	var n int64
	for {
		data, err := st.readIn()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, &protocol.Error{Code: protocol.CodeInternal, Message: fmt.Sprintf("upload of %s interrupted: %v", path, err)}
		}
		if _, err := f.Write(data); err != nil {
			return nil, fsError("write", path, err)
		}
		n += int64(len(data))
	}
	// chown first: it clears setuid and setgid bits, which chmod then sets.
	if owner != nil {
		if err := f.Chown(int(owner.uid), int(owner.gid)); err != nil {
			return nil, fsError("chown", path, err)
		}
	}
	if err := f.Chmod(mode); err != nil {
		return nil, fsError("chmod", path, err)
	}
	if err := f.Sync(); err != nil {
		return nil, fsError("sync", path, err)
	}
	if err := f.Close(); err != nil {
		return nil, fsError("close", path, err)
	}
	if p.NoOverwrite {
		err = unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, path, unix.RENAME_NOREPLACE)
		if errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOSYS) {
			// A filesystem without RENAME_NOREPLACE: link is just as atomic about an existing target.
			if err = os.Link(tmp, path); err == nil {
				_ = os.Remove(tmp)
			}
		}
	} else {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		return nil, fsError("rename the upload to", path, err)
	}
	committed = true
	c.log.Debug("file written", "path", path, "bytes", n)
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fsError("stat", path, err)
	}
	info := fileInfo(path, fi)
	return &info, nil
}

// fileRead sends a regular file: a HEADER with its metadata (taken from the open file), then its content. A file
// whose size stat gives is sent exactly as that many bytes; a file stat says is empty is sent up to its end with
// the HEADER's size -1 (unknown), since /proc and /sys files report 0 and have content.
//
// The file is opened with O_NONBLOCK and checked with fstat before anything is read: a FIFO opened without it
// blocks open(2) until a writer comes, for ever, holding a thread of the agent per request; a device may do the
// same on read. Whatever is not a regular file is refused (not_a_regular_file). Reads go to the descriptor
// directly, still non-blocking, so a pseudo-file with nothing to give (/proc/kmsg) ends the download instead of
// blocking it.
func (c *conn) fileRead(st *stream, p protocol.PathParams) (*protocol.FileReadResult, *protocol.Error) {
	path, perr := cleanPath(p.Path)
	if perr != nil {
		return nil, perr
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		var sst unix.Stat_t
		if (err == unix.ENXIO || err == unix.EOPNOTSUPP) && unix.Stat(path, &sst) == nil {
			// open(2) refuses sockets: say what the path is rather than "no such device".
			return nil, &protocol.Error{Code: protocol.CodeNotARegularFile,
				Message: fmt.Sprintf("%s is not a regular file (%s)", path, fileTypeName(sst.Mode))}
		}
		return nil, fsError("open", path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	defer unix.Close(fd)
	var sst unix.Stat_t
	if err := unix.Fstat(fd, &sst); err != nil {
		return nil, fsError("stat", path, &fs.PathError{Op: "fstat", Path: path, Err: err})
	}
	switch sst.Mode & unix.S_IFMT {
	case unix.S_IFREG:
	case unix.S_IFDIR:
		return nil, &protocol.Error{Code: protocol.CodeIsADirectory, Message: fmt.Sprintf("%s is a directory", path)}
	default:
		return nil, &protocol.Error{Code: protocol.CodeNotARegularFile,
			Message: fmt.Sprintf("%s is not a regular file (%s)", path, fileTypeName(sst.Mode))}
	}
	size := sst.Size
	info := protocol.FileInfo{Path: path, Size: size, Mode: sst.Mode, UID: int(sst.Uid), GID: int(sst.Gid),
		MtimeNS: sst.Mtim.Nano()}
	if size == 0 {
		info.Size = -1
	}
	if err := st.header(info); err != nil {
		return nil, internalError("send header: %v", err)
	}
	buf := make([]byte, 1+fileChunk)
	buf[0] = byte(protocol.ChannelStdout)
	var sent int64
	for size == 0 || sent < size {
		want := int64(fileChunk)
		if size > 0 {
			want = min(want, size-sent)
		}
		n, err := unix.Read(fd, buf[1:1+want])
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN {
			break // a pseudo-file with nothing more to give now
		}
		if err != nil {
			return nil, fsError("read", path, &fs.PathError{Op: "read", Path: path, Err: err})
		}
		if n == 0 {
			break
		}
		if err := st.sendData(buf[:1], buf[1:1+n]); err != nil {
			return nil, internalError("send %s: %v", path, err)
		}
		sent += int64(n)
	}
	if size > 0 && sent < size {
		return nil, &protocol.Error{Code: protocol.CodeIOError, Message: fmt.Sprintf("%s shrank while being read (%d of %d bytes)", path, sent, size)}
	}
	_ = st.end(protocol.ChannelStdout)
	return &protocol.FileReadResult{Size: sent}, nil
}

// fileTypeName names the type of a st_mode for messages.
func fileTypeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFIFO:
		return "a fifo"
	case unix.S_IFSOCK:
		return "a socket"
	case unix.S_IFCHR:
		return "a character device"
	case unix.S_IFBLK:
		return "a block device"
	case unix.S_IFLNK:
		return "a symbolic link"
	}
	return "of an unknown type"
}

func (c *conn) fileStat(_ *stream, p protocol.PathParams) (*protocol.FileInfo, *protocol.Error) {
	path, perr := cleanPath(p.Path)
	if perr != nil {
		return nil, perr
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fsError("stat", path, err)
	}
	info := fileInfo(path, fi)
	return &info, nil
}

// fileList streams a directory's entries as JSON lines, a batch at a time, so that a huge directory is never
// held whole. Entries come in the directory's order; the client sorts them.
func (c *conn) fileList(st *stream, p protocol.PathParams) (*protocol.FileListResult, *protocol.Error) {
	path, perr := cleanPath(p.Path)
	if perr != nil {
		return nil, perr
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fsError("open", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fsError("stat", path, err)
	}
	if !fi.IsDir() {
		return nil, &protocol.Error{Code: protocol.CodeNotADirectory, Message: fmt.Sprintf("%s is not a directory", path)}
	}
	chByte := []byte{byte(protocol.ChannelStdout)}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	count := 0
	for {
		entries, rerr := f.ReadDir(256)
		for _, e := range entries {
			efi, err := e.Info()
			if err != nil {
				continue // removed since it was read
			}
			if err := enc.Encode(fileInfo(filepath.Join(path, e.Name()), efi)); err != nil {
				return nil, internalError("encode entry: %v", err)
			}
			count++
		}
		if buf.Len() > 0 {
			if err := st.sendData(chByte, buf.Bytes()); err != nil {
				return nil, internalError("send listing: %v", err)
			}
			buf.Reset()
		}
		if errors.Is(rerr, io.EOF) || (rerr == nil && len(entries) == 0) {
			break
		}
		if rerr != nil {
			return nil, fsError("read directory", path, rerr)
		}
	}
	_ = st.end(protocol.ChannelStdout)
	return &protocol.FileListResult{Count: count}, nil
}

func (c *conn) fileMkdir(_ *stream, p protocol.FileMkdirParams) (*protocol.FileInfo, *protocol.Error) {
	path, perr := cleanPath(p.Path)
	if perr != nil {
		return nil, perr
	}
	if p.Mode == 0 {
		p.Mode = 0o755
	}
	mode, perr := permBits(p.Mode)
	if perr != nil {
		return nil, perr
	}
	owner, perr := c.s.resolveOwner(p.Owner)
	if perr != nil {
		return nil, perr
	}
	_, statErr := os.Lstat(path)
	existed := statErr == nil
	if p.Parents {
		err := os.MkdirAll(path, 0o755)
		if err != nil {
			return nil, fsError("mkdir", path, err)
		}
	} else if err := os.Mkdir(path, 0o755); err != nil {
		return nil, fsError("mkdir", path, err)
	}
	if !existed {
		// Set exactly as asked, whatever the agent's umask (chown first: it clears setgid).
		if owner != nil {
			if err := os.Lchown(path, int(owner.uid), int(owner.gid)); err != nil {
				return nil, fsError("chown", path, err)
			}
		}
		if err := os.Chmod(path, mode); err != nil {
			return nil, fsError("chmod", path, err)
		}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return nil, fsError("stat", path, err)
	}
	info := fileInfo(path, fi)
	return &info, nil
}

func (c *conn) fileRemove(_ *stream, p protocol.FileRemoveParams) (struct{}, *protocol.Error) {
	path, perr := cleanPath(p.Path)
	if perr != nil {
		return struct{}{}, perr
	}
	if path == "/" {
		return struct{}{}, invalidPath("refusing to remove /")
	}
	if _, err := os.Lstat(path); err != nil {
		return struct{}{}, fsError("remove", path, err)
	}
	var err error
	if p.Recursive {
		// A process still writing into the tree (an upload finishing, a build) can add an entry between RemoveAll
		// emptying a directory and removing it: try a few times before reporting it not empty.
		for range 5 {
			if err = os.RemoveAll(path); !errors.Is(err, syscall.ENOTEMPTY) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
	} else {
		err = os.Remove(path)
	}
	if err != nil {
		return struct{}{}, fsError("remove", path, err)
	}
	return struct{}{}, nil
}
