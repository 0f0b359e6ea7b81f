package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// UploadOptions says how Upload writes a file.
type UploadOptions struct {
	// Mode is the file's permission bits, with fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky (or chmod's 07000
	// bits); zero means 0644.
	Mode fs.FileMode
	// Owner is "user[:group]", names or numbers known to the guest; empty: root.
	Owner string
	// MkdirParents creates missing parent directories.
	MkdirParents bool
	// NoOverwrite fails (409 already_exists) instead of replacing an existing file.
	NoOverwrite bool
	// Size is the content's length when known, sent as Content-Length; 0 means unknown (or empty) and the body is
	// sent chunked.
	Size int64
}

// ModeString writes permission bits as the API takes them ("0644", "4755").
func ModeString(m fs.FileMode) string {
	u := uint32(m & 0o7777)
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return fmt.Sprintf("%04o", u)
}

// ParseMode reads permission bits as the API writes them ("0644", "4755") into an fs.FileMode.
func ParseMode(s string) (fs.FileMode, error) {
	n, err := strconv.ParseUint(s, 8, 32)
	if err != nil || n > 0o7777 {
		return 0, fmt.Errorf("mode %q is not an octal mode like 0644", s)
	}
	m := fs.FileMode(n & 0o777)
	if n&0o4000 != 0 {
		m |= fs.ModeSetuid
	}
	if n&0o2000 != 0 {
		m |= fs.ModeSetgid
	}
	if n&0o1000 != 0 {
		m |= fs.ModeSticky
	}
	return m, nil
}

// Upload streams r into a file of a running VM (PUT /vms/{id}/files). The file appears at path only once complete;
// if r fails or ctx ends, nothing is written.
func (c *Client) Upload(ctx context.Context, vmID, path string, r io.Reader, opts UploadOptions) (*FileInfo, error) {
	q := url.Values{"path": {path}}
	if opts.Mode != 0 {
		q.Set("mode", ModeString(opts.Mode))
	}
	if opts.Owner != "" {
		q.Set("owner", opts.Owner)
	}
	if opts.MkdirParents {
		q.Set("mkdir_parents", "true")
	}
	if opts.NoOverwrite {
		q.Set("overwrite", "false")
	}
	req, err := c.newRequest(ctx, http.MethodPut, vmPath(vmID, "/files"), q, nil)
	if err != nil {
		return nil, err
	}
	if r == nil {
		r = http.NoBody
	}
	req.Body = io.NopCloser(r)
	req.ContentLength = opts.Size
	req.Header.Set("Content-Type", "application/octet-stream")
	var info FileInfo
	if err := c.send(req, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// FileDownload is a file being downloaded from a VM: read it to EOF, then Close it. A transfer cut short ends
// with an error (io.ErrUnexpectedEOF), never with a short file that looks complete.
type FileDownload struct {
	io.ReadCloser
	// Size is the file's length (Content-Length).
	Size int64
	// Mode holds the permission bits, with fs.ModeSetuid, fs.ModeSetgid and fs.ModeSticky.
	Mode     fs.FileMode
	UID, GID int
	ModTime  time.Time
}

// Download opens a file of a running VM for reading (GET /vms/{id}/files). It returns once the server has
// answered; the content streams as it is read, within ctx.
func (c *Client) Download(ctx context.Context, vmID, path string) (*FileDownload, error) {
	req, err := c.newRequest(ctx, http.MethodGet, vmPath(vmID, "/files"), url.Values{"path": {path}}, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		return nil, decodeError(resp)
	}
	d := &FileDownload{ReadCloser: resp.Body, Size: resp.ContentLength}
	if m, err := ParseMode(resp.Header.Get(HeaderFileMode)); err == nil {
		d.Mode = m
	}
	d.UID, _ = strconv.Atoi(resp.Header.Get(HeaderFileUID))
	d.GID, _ = strconv.Atoi(resp.Header.Get(HeaderFileGID))
	d.ModTime, _ = http.ParseTime(resp.Header.Get("Last-Modified"))
	return d, nil
}

// Stat describes a file or directory of a VM; a symbolic link is described itself.
func (c *Client) Stat(ctx context.Context, vmID, path string) (*FileInfo, error) {
	var info FileInfo
	if _, err := c.do(ctx, http.MethodGet, vmPath(vmID, "/fs/stat"), url.Values{"path": {path}}, nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// ListDir lists a directory of a VM, sorted by name.
func (c *Client) ListDir(ctx context.Context, vmID, path string) (*FileList, error) {
	var l FileList
	if _, err := c.do(ctx, http.MethodGet, vmPath(vmID, "/fs/list"), url.Values{"path": {path}}, nil, &l); err != nil {
		return nil, err
	}
	return &l, nil
}

// Mkdir creates a directory in a VM.
func (c *Client) Mkdir(ctx context.Context, vmID string, req MkdirRequest) (*FileInfo, error) {
	var info FileInfo
	if _, err := c.do(ctx, http.MethodPost, vmPath(vmID, "/fs/mkdir"), nil, req, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// Remove removes a file or an empty directory of a VM, or with recursive a whole tree.
func (c *Client) Remove(ctx context.Context, vmID, path string, recursive bool) error {
	q := url.Values{"path": {path}, "recursive": {strconv.FormatBool(recursive)}}
	_, err := c.do(ctx, http.MethodDelete, vmPath(vmID, "/fs"), q, nil, nil)
	return err
}

// StartProcess starts a background process in a VM and returns at once.
func (c *Client) StartProcess(ctx context.Context, vmID string, req StartProcessRequest) (*Process, error) {
	var p Process
	if _, err := c.do(ctx, http.MethodPost, vmPath(vmID, "/processes"), nil, req, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// ListProcesses lists the processes a VM's agent keeps, oldest first.
func (c *Client) ListProcesses(ctx context.Context, vmID string) ([]Process, error) {
	var l ProcessList
	if _, err := c.do(ctx, http.MethodGet, vmPath(vmID, "/processes"), nil, nil, &l); err != nil {
		return nil, err
	}
	return l.Processes, nil
}

// ReadProcessOutput reads one stream ("stdout" or "stderr") of a process from offset on, at most maxBytes (0: all
// that is kept). Pass the answer's NextOffset to read on.
func (c *Client) ReadProcessOutput(ctx context.Context, vmID, pid, stream string, offset int64, maxBytes int) (*ProcessOutput, error) {
	q := url.Values{"stream": {stream}, "offset": {strconv.FormatInt(offset, 10)}}
	if maxBytes > 0 {
		q.Set("max_bytes", strconv.Itoa(maxBytes))
	}
	var o ProcessOutput
	if _, err := c.do(ctx, http.MethodGet, processPath(vmID, pid, "/output"), q, nil, &o); err != nil {
		return nil, err
	}
	return &o, nil
}

// Bytes returns the output's bytes, whichever way they were sent.
func (o *ProcessOutput) Bytes() ([]byte, error) {
	if o.DataBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(o.DataBase64)
		if err != nil {
			return nil, fmt.Errorf("decode process output: %w", err)
		}
		return b, nil
	}
	return []byte(o.Data), nil
}

// WaitProcess waits until a process exits or timeout passes (0: the server's default, 60s); a process still
// running then is returned with State "running".
func (c *Client) WaitProcess(ctx context.Context, vmID, pid string, timeout time.Duration) (*Process, error) {
	var q url.Values
	if timeout > 0 {
		q = url.Values{"timeout": {timeout.String()}}
	}
	var p Process
	if _, err := c.do(ctx, http.MethodPost, processPath(vmID, pid, "/wait"), q, nil, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// SignalProcess sends a signal ("TERM", "KILL", a number) to a process's group.
func (c *Client) SignalProcess(ctx context.Context, vmID, pid, signal string) error {
	_, err := c.do(ctx, http.MethodPost, processPath(vmID, pid, "/signal"), nil, SignalRequest{Signal: signal}, nil)
	return err
}

// RemoveProcess forgets an exited process and its output.
func (c *Client) RemoveProcess(ctx context.Context, vmID, pid string) error {
	_, err := c.do(ctx, http.MethodDelete, processPath(vmID, pid, ""), nil, nil, nil)
	return err
}

func vmPath(vmID, suffix string) string { return "/vms/" + url.PathEscape(vmID) + suffix }

func processPath(vmID, pid, suffix string) string {
	return vmPath(vmID, "/processes/"+url.PathEscape(pid)+suffix)
}

// send sends a prepared request and decodes a 2xx JSON answer into out.
func (c *Client) send(req *http.Request, out any) error {
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode %s %s answer (%d): %w", req.Method, req.URL.Path, resp.StatusCode, err)
	}
	return nil
}
