package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// shellReadLimit bounds one message from the server (it sends at most 32 KiB of output per message).
const shellReadLimit = 4 << 20

// ErrShellClosed is returned by Shell.Wait when the connection ended before the command's exit was reported.
var ErrShellClosed = errors.New("shell connection closed before the command ended")

// ShellOptions describes an interactive command (GET /vms/{id}/shell).
type ShellOptions struct {
	// Command is the program and its arguments; empty: the VM's /bin/sh (a login shell with a terminal).
	Command []string
	// TTY runs the command on a pseudo-terminal of Rows x Cols (24x80 when zero) with TERM Term; its stdout and
	// stderr are then one stream. Without it they stay apart.
	TTY        bool
	Rows, Cols uint16
	Term       string
	Env        map[string]string
	WorkingDir string
	User       string
}

// ShellExit is how the command of a shell ended.
type ShellExit struct {
	// ExitCode is the command's exit code; 128+n when signal n ended it (Signal names it).
	ExitCode int
	Signal   string
	TimedOut bool
	Duration time.Duration
}

// ShellError is a failure the server reported inside the session: the command could not be run, or the VM's
// agent went away.
type ShellError struct {
	Code    string
	Message string
}

func (e *ShellError) Error() string { return e.Message + " (" + e.Code + ")" }

// Shell is an interactive command running in a VM. Write sends its stdin; Wait copies its output until it ends.
// Write, Resize, Signal and CloseStdin may be called from any goroutine while Wait runs in another.
type Shell struct {
	// ID is the command's process id in the VM's agent (see ListProcesses).
	ID string

	ctx     context.Context
	conn    *websocket.Conn
	closing sync.Once
}

// OpenShell starts an interactive command in a running VM over a WebSocket. ctx bounds the whole session: when it
// ends, the connection closes and the command is killed. Errors before the session starts are *APIError.
func (c *Client) OpenShell(ctx context.Context, vmID string, opts ShellOptions) (*Shell, error) {
	u := *c.base
	u.Path = c.base.Path + apiPrefix + "/vms/" + vmID + "/shell"
	u.RawPath = c.base.EscapedPath() + apiPrefix + vmPath(vmID, "/shell")
	q := url.Values{"tty": {strconv.FormatBool(opts.TTY)}}
	if len(opts.Command) > 0 {
		q["command"] = opts.Command
	}
	if opts.TTY {
		if opts.Rows > 0 && opts.Cols > 0 {
			q.Set("rows", strconv.Itoa(int(opts.Rows)))
			q.Set("cols", strconv.Itoa(int(opts.Cols)))
		}
		if opts.Term != "" {
			q.Set("term", opts.Term)
		}
	}
	for k, v := range opts.Env {
		q.Add("env", k+"="+v)
	}
	if opts.WorkingDir != "" {
		q.Set("working_dir", opts.WorkingDir)
	}
	if opts.User != "" {
		q.Set("user", opts.User)
	}
	u.RawQuery = q.Encode()
	h := http.Header{"User-Agent": {c.userAgent}}
	if c.apiKey != "" {
		h.Set("Authorization", "Bearer "+c.apiKey)
	}
	conn, resp, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{HTTPClient: c.http, HTTPHeader: h})
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			if resp.Body != nil {
				defer resp.Body.Close()
			}
			return nil, decodeError(resp)
		}
		return nil, fmt.Errorf("open shell: %w", err)
	}
	conn.SetReadLimit(shellReadLimit)
	s := &Shell{ctx: ctx, conn: conn}
	// The server's first message says the command is being started, and under which id.
	m, err := s.readControl()
	if err != nil {
		conn.CloseNow()
		return nil, err
	}
	if m.Type != ShellMsgStarted {
		conn.CloseNow()
		if m.Type == ShellMsgError {
			return nil, &ShellError{Code: m.Code, Message: m.Message}
		}
		return nil, fmt.Errorf("open shell: unexpected first message %q", m.Type)
	}
	s.ID = m.ID
	return s, nil
}

func (s *Shell) readControl() (*ShellMessage, error) {
	typ, data, err := s.conn.Read(s.ctx)
	if err != nil {
		return nil, fmt.Errorf("open shell: %w", err)
	}
	if typ != websocket.MessageText {
		return nil, errors.New("open shell: expected a control message first")
	}
	var m ShellMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("open shell: malformed control message: %w", err)
	}
	return &m, nil
}

// Write sends p to the command's stdin.
func (s *Shell) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if err := s.conn.Write(s.ctx, websocket.MessageBinary, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *Shell) control(m ShellMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return s.conn.Write(s.ctx, websocket.MessageText, b)
}

// Resize tells the command's terminal its new size.
func (s *Shell) Resize(rows, cols uint16) error {
	return s.control(ShellMessage{Type: ShellMsgResize, Rows: rows, Cols: cols})
}

// Signal sends a signal ("INT", "TERM", a number) to the command's process group.
func (s *Shell) Signal(sig string) error {
	return s.control(ShellMessage{Type: ShellMsgSignal, Signal: sig})
}

// CloseStdin ends the command's stdin (without a terminal; a terminal's EOF is ^D, written as a byte).
func (s *Shell) CloseStdin() error { return s.control(ShellMessage{Type: ShellMsgEOF}) }

// Wait copies the command's output to stdout and stderr (nil discards) until it ends, and returns how it ended.
// With a terminal everything arrives on stdout. A failure reported by the server is a *ShellError; a connection
// that ends before the command does is ErrShellClosed (wrapped).
func (s *Shell) Wait(stdout, stderr io.Writer) (*ShellExit, error) {
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	for {
		typ, data, err := s.conn.Read(s.ctx)
		if err != nil {
			if s.ctx.Err() != nil {
				return nil, s.ctx.Err()
			}
			return nil, fmt.Errorf("%w: %w", ErrShellClosed, err)
		}
		if typ == websocket.MessageBinary {
			if _, err := stdout.Write(data); err != nil {
				s.Close()
				return nil, fmt.Errorf("write the command's output: %w", err)
			}
			continue
		}
		var m ShellMessage
		if err := json.Unmarshal(data, &m); err != nil {
			continue // a message of a newer server; nothing to do with it
		}
		switch m.Type {
		case ShellMsgStderr:
			if _, err := stderr.Write(m.Data); err != nil {
				s.Close()
				return nil, fmt.Errorf("write the command's stderr: %w", err)
			}
		case ShellMsgExit:
			e := &ShellExit{Signal: m.Signal, TimedOut: m.TimedOut}
			if m.ExitCode != nil {
				e.ExitCode = *m.ExitCode
			}
			if m.DurationMS != nil {
				e.Duration = time.Duration(*m.DurationMS) * time.Millisecond
			}
			s.closing.Do(func() { _ = s.conn.Close(websocket.StatusNormalClosure, "") })
			return e, nil
		case ShellMsgError:
			s.Close()
			return nil, &ShellError{Code: m.Code, Message: m.Message}
		}
	}
}

// Close ends the session; a command still running is killed.
func (s *Shell) Close() error {
	s.closing.Do(func() { _ = s.conn.CloseNow() })
	return nil
}
