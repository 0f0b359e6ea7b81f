package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// uploadChunk is how much of an upload is read and sent at a time.
const uploadChunk = 128 << 10

// Upload writes the content of r to a file in the guest, streaming it: neither side holds more than the
// protocol's window. The file appears at req.Path only once complete (see agent.UploadRequest). If r fails or
// ctx ends, nothing is written and the error is returned. File errors are *Error with a code (agent.Code*);
// errors.Is works with fs.ErrNotExist, fs.ErrExist and fs.ErrPermission.
func (c *Client) Upload(ctx context.Context, req agent.UploadRequest, r io.Reader) (*agent.FileInfo, error) {
	params := protocol.FileWriteParams{Path: req.Path, Mode: unixMode(req.Mode), Owner: req.Owner,
		MkdirParents: req.MkdirParents, NoOverwrite: req.NoOverwrite}
	st, err := c.open(ctx, protocol.MethodFileWrite, params, protocol.FeatureFiles)
	if err != nil {
		return nil, err
	}
	buf := make([]byte, uploadChunk)
	for {
		n, rerr := fill(r, buf)
		if n > 0 {
			if err := st.send(ctx, protocol.ChannelStdin, buf[:n]); err != nil {
				if errors.Is(err, errStreamFinished) {
					break // the agent answered early (a refusal): read it below
				}
				st.cancel()
				return nil, fmt.Errorf("agent %s: %w", protocol.MethodFileWrite, err)
			}
		}
		if rerr == io.EOF {
			if err := st.sendEnd(ctx, protocol.ChannelStdin); err != nil && !errors.Is(err, errStreamFinished) {
				st.cancel()
				return nil, fmt.Errorf("agent %s: %w", protocol.MethodFileWrite, err)
			}
			break
		}
		if rerr != nil {
			st.cancel() // the agent removes its temporary file
			return nil, fmt.Errorf("upload %s: reading the content: %w", req.Path, rerr)
		}
	}
	resp, err := st.wait(ctx, nil)
	raw, err := result(protocol.MethodFileWrite, resp, err)
	if err != nil {
		return nil, err
	}
	var info protocol.FileInfo
	if err := decodeResult(protocol.MethodFileWrite, raw, &info); err != nil {
		return nil, err
	}
	return fileInfo(info), nil
}

// fill reads from r until buf is full or r fails, and returns r's own error: unlike io.ReadFull it does not turn
// an end of input into io.ErrUnexpectedEOF, so a clean end (io.EOF) stays distinguishable from a cut one (an HTTP
// body shorter than its Content-Length reads as io.ErrUnexpectedEOF), which must not commit the file.
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// FileReader streams a file from the guest (see OpenFile). Read it to EOF, then Close it; closing it early
// tells the agent to stop.
type FileReader struct {
	// Info describes the file as it was when opened; exactly Info.Size bytes are read. Info.Size is -1 when the
	// size is unknown (stat says 0: a /proc file or an empty one): the content runs to its end, and Info.Size is
	// set to what was read once Read has returned io.EOF.
	Info agent.FileInfo

	ctx    context.Context
	st     *stream
	cur    []byte
	n      int64
	err    error
	closed sync.Once
}

// OpenFile starts a download: it returns once the agent has opened the file, with its metadata, before any of
// its content. The content streams as it is read, within ctx.
func (c *Client) OpenFile(ctx context.Context, filePath string) (*FileReader, error) {
	st, err := c.open(ctx, protocol.MethodFileRead, protocol.PathParams{Path: filePath}, protocol.FeatureFiles)
	if err != nil {
		return nil, err
	}
	hdr, resp, err := st.waitHeader(ctx)
	if err != nil || resp != nil {
		if _, err := result(protocol.MethodFileRead, resp, err); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w: agent file.read: answered without a HEADER", ErrUnavailable)
	}
	var info protocol.FileInfo
	if err := json.Unmarshal(hdr, &info); err != nil {
		st.cancel()
		return nil, fmt.Errorf("%w: agent file.read: decode HEADER: %w", ErrUnavailable, err)
	}
	return &FileReader{Info: *fileInfo(info), ctx: ctx, st: st}, nil
}

// Read reads the file's content.
func (f *FileReader) Read(p []byte) (int, error) {
	for len(f.cur) == 0 {
		if f.err != nil {
			return 0, f.err
		}
		c, resp, err := f.st.next(f.ctx)
		switch {
		case err != nil:
			f.err = fmt.Errorf("agent %s: %w", protocol.MethodFileRead, err)
		case resp != nil && resp.Error != nil:
			f.err = &Error{Method: protocol.MethodFileRead, Code: resp.Error.Code, Message: resp.Error.Message}
		case resp != nil && f.Info.Size >= 0 && f.n != f.Info.Size:
			f.err = fmt.Errorf("%w: agent file.read: got %d bytes of %d", ErrUnavailable, f.n, f.Info.Size)
		case resp != nil:
			f.err = io.EOF
			if f.Info.Size < 0 {
				f.Info.Size = f.n
			}
		default:
			f.cur = c.data
		}
	}
	n := copy(p, f.cur)
	f.cur = f.cur[n:]
	f.n += int64(n)
	if f.Info.Size >= 0 && f.n > f.Info.Size {
		f.err = fmt.Errorf("%w: agent file.read: sent more than the %d bytes announced", ErrUnavailable, f.Info.Size)
		f.st.cancel()
		return 0, f.err
	}
	return n, nil
}

// Close ends the download; before EOF it tells the agent to stop.
func (f *FileReader) Close() error {
	f.closed.Do(func() {
		if !errors.Is(f.err, io.EOF) {
			f.st.cancel()
		}
	})
	return nil
}

// Download copies a file of the guest to w and returns its metadata.
func (c *Client) Download(ctx context.Context, filePath string, w io.Writer) (*agent.FileInfo, error) {
	f, err := c.OpenFile(ctx, filePath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := io.Copy(w, f); err != nil {
		return nil, err
	}
	return &f.Info, nil
}

// Stat describes a file; a symbolic link is described itself (LinkTarget says where it points).
func (c *Client) Stat(ctx context.Context, filePath string) (*agent.FileInfo, error) {
	var info protocol.FileInfo
	if err := c.callInto(ctx, protocol.MethodFileStat, protocol.PathParams{Path: filePath}, &info, protocol.FeatureFiles); err != nil {
		return nil, err
	}
	return fileInfo(info), nil
}

// ListDir lists a directory, sorted by name.
func (c *Client) ListDir(ctx context.Context, dir string) ([]agent.FileInfo, error) {
	var data bytes.Buffer
	raw, err := c.call(ctx, protocol.MethodFileList, protocol.PathParams{Path: dir}, func(_ protocol.Channel, p []byte) error {
		data.Write(p)
		return nil
	}, protocol.FeatureFiles)
	if err != nil {
		return nil, err
	}
	var res protocol.FileListResult
	if err := decodeResult(protocol.MethodFileList, raw, &res); err != nil {
		return nil, err
	}
	out := make([]agent.FileInfo, 0, res.Count)
	dec := json.NewDecoder(&data)
	for {
		var info protocol.FileInfo
		if err := dec.Decode(&info); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("%w: agent file.list: decode entry: %w", ErrUnavailable, err)
		}
		out = append(out, *fileInfo(info))
	}
	if len(out) != res.Count {
		return nil, fmt.Errorf("%w: agent file.list: got %d entries, the agent says %d", ErrUnavailable, len(out), res.Count)
	}
	slices.SortFunc(out, func(a, b agent.FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

// Mkdir creates a directory.
func (c *Client) Mkdir(ctx context.Context, req agent.MkdirRequest) (*agent.FileInfo, error) {
	var info protocol.FileInfo
	params := protocol.FileMkdirParams{Path: req.Path, Mode: unixMode(req.Mode), Parents: req.Parents, Owner: req.Owner}
	if err := c.callInto(ctx, protocol.MethodFileMkdir, params, &info, protocol.FeatureFiles); err != nil {
		return nil, err
	}
	return fileInfo(info), nil
}

// Remove removes a file or an empty directory, or with recursive a whole tree. A missing path is CodeNotFound.
func (c *Client) Remove(ctx context.Context, filePath string, recursive bool) error {
	return c.callInto(ctx, protocol.MethodFileRemove, protocol.FileRemoveParams{Path: filePath, Recursive: recursive},
		nil, protocol.FeatureFiles)
}

func decodeResult(method string, raw json.RawMessage, out any) error {
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: agent %s: decode result: %w", ErrUnavailable, method, err)
	}
	return nil
}

// st_mode bits (stat(2)); spelled out here because this package builds on every platform.
const (
	sIFMT   = 0o170000
	sIFSOCK = 0o140000
	sIFLNK  = 0o120000
	sIFREG  = 0o100000
	sIFBLK  = 0o060000
	sIFDIR  = 0o040000
	sIFCHR  = 0o020000
	sIFIFO  = 0o010000
	sISUID  = 0o4000
	sISGID  = 0o2000
	sISVTX  = 0o1000
)

// fileMode turns a raw st_mode into an fs.FileMode.
func fileMode(m uint32) fs.FileMode {
	mode := fs.FileMode(m & 0o777)
	switch m & sIFMT {
	case sIFDIR:
		mode |= fs.ModeDir
	case sIFLNK:
		mode |= fs.ModeSymlink
	case sIFIFO:
		mode |= fs.ModeNamedPipe
	case sIFSOCK:
		mode |= fs.ModeSocket
	case sIFCHR:
		mode |= fs.ModeDevice | fs.ModeCharDevice
	case sIFBLK:
		mode |= fs.ModeDevice
	case sIFREG:
	}
	if m&sISUID != 0 {
		mode |= fs.ModeSetuid
	}
	if m&sISGID != 0 {
		mode |= fs.ModeSetgid
	}
	if m&sISVTX != 0 {
		mode |= fs.ModeSticky
	}
	return mode
}

// unixMode turns the permission bits of an fs.FileMode into chmod's 07777 form. Raw bits 07000 are taken as
// chmod would (fs.FileMode keeps setuid, setgid and sticky elsewhere, but 0o4755 is what people write).
func unixMode(m fs.FileMode) uint32 {
	u := uint32(m & 0o7777)
	if m&fs.ModeSetuid != 0 {
		u |= sISUID
	}
	if m&fs.ModeSetgid != 0 {
		u |= sISGID
	}
	if m&fs.ModeSticky != 0 {
		u |= sISVTX
	}
	return u
}

func fileInfo(p protocol.FileInfo) *agent.FileInfo {
	mode := fileMode(p.Mode)
	return &agent.FileInfo{
		Path:       p.Path,
		Name:       path.Base(p.Path),
		Size:       p.Size,
		Mode:       mode,
		ModTime:    time.Unix(0, p.MtimeNS),
		IsDir:      mode.IsDir(),
		LinkTarget: p.LinkTarget,
		UID:        p.UID,
		GID:        p.GID,
	}
}
