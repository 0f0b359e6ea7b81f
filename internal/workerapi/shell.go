package workerapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	"github.com/go-chi/chi/v5"
	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/workerapi/wire"
	"github.com/aetherium/aetherium/pkg/client"
)

// maxShellMessage bounds one message from the client: keystrokes, pastes and control messages are small.
const maxShellMessage = 1 << 20

// controlRetry bounds how long a resize or a signal waits for the command to be registered by the agent: the
// client may send one the moment the session opens, while the agent is still starting the command.
const controlRetry = 2 * time.Second

// errSessionOver ends the stdin pipe once the command has ended.
var errSessionOver = errors.New("the session is over")

// shell runs an interactive command over a WebSocket (see the package comment of pkg/client's ShellMessage):
// binary messages from the client are its stdin, binary messages to the client its stdout (with a terminal,
// everything the terminal shows), and text messages are JSON controls: resize, signal and eof from the client;
// started, stderr, and a last exit or error from the server. When the client goes away the command is killed.
func (s *server) shell(w http.ResponseWriter, r *http.Request) {
	sh, err := wire.ParseShell(r.URL.Query())
	if err != nil {
		s.fail(w, r, "process", err)
		return
	}
	ag, ok := s.agent(w, r)
	if !ok {
		return
	}
	c, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		// Callers authenticate with a bearer header, never a cookie, so a page of another origin cannot borrow
		// anyone's credentials: an origin check would protect nothing, and would refuse the gateway's proxying.
		InsecureSkipVerify: true,
	})
	if err != nil {
		s.log.Debug("worker api: websocket handshake failed", "err", err) // Accept has answered the client
		return
	}
	defer c.CloseNow()
	c.SetReadLimit(maxShellMessage)
	s.runShell(r.Context(), c, ag, chi.URLParam(r, "id"), sh)
}

func (s *server) runShell(ctx context.Context, c *websocket.Conn, ag *agentclient.Client, vmID string, sh wire.Shell) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	id := "shell-" + uuid.NewString()
	req := agent.ExecRequest{Argv: sh.Command, Env: sh.Env, WorkingDir: sh.WorkingDir, User: sh.User, ID: id}
	if len(req.Argv) == 0 {
		req.Argv = []string{"/bin/sh"}
		if sh.TTY {
			req.Argv = append(req.Argv, "-l") // a login shell, as ssh gives
		}
	}
	if sh.TTY {
		req.Pty = &agent.PtySize{Rows: sh.Rows, Cols: sh.Cols, Term: sh.Term}
	}
	if err := sendJSON(ctx, c, client.ShellMessage{Type: client.ShellMsgStarted, ID: id}); err != nil {
		return
	}
	stdinR, stdinW := io.Pipe()
	execDone := make(chan struct{})
	go s.readShell(ctx, cancel, c, ag, id, stdinW, execDone)
	eio := agent.ExecIO{Stdin: stdinR, Stdout: binaryWriter{ctx: ctx, c: c}}
	if !sh.TTY {
		eio.Stderr = stderrWriter{ctx: ctx, c: c}
	}
	res, err := ag.ExecInteractive(ctx, req, eio)
	close(execDone)
	// Unblocks the reader if it is handing over stdin that nobody will read now.
	_ = stdinR.CloseWithError(errSessionOver)
	if err != nil {
		if ctx.Err() != nil {
			return // the client went away (or the worker stops): the agent has killed the command
		}
		_, code, msg := classify(ctx, vmID, "process", err)
		if code == client.CodeInternal {
			s.log.Warn("worker api: shell failed", "vm_id", vmID, "err", err)
		}
		_ = sendJSON(ctx, c, client.ShellMessage{Type: client.ShellMsgError, Code: code, Message: msg})
		_ = c.Close(websocket.StatusInternalError, closeReason(msg))
		return
	}
	code := res.ExitCode
	_ = sendJSON(ctx, c, client.ShellMessage{Type: client.ShellMsgExit, ExitCode: &code, Signal: res.Signal,
		TimedOut: res.TimedOut, DurationMS: durationMS(res.Duration)})
	_ = c.Close(websocket.StatusNormalClosure, "")
}

// maxStdinBacklog bounds the input a client may send ahead of what the command reads. Handing stdin over
// synchronously would stop the reading of the WebSocket while the command does not read (sleep, a busy program),
// and then a client that goes away would never be noticed: the session and its command would live forever.
// So frames are always read, input waits in a bounded queue, and a client that overruns it is cut off.
const maxStdinBacklog = 8 << 20

// readShell passes the client's messages on, in order: stdin to the command (through a writer goroutine), controls
// to the agent. It ends the session (cancel) when the client goes away or overruns the stdin backlog.
func (s *server) readShell(ctx context.Context, cancel context.CancelFunc, c *websocket.Conn, ag *agentclient.Client,
	id string, stdin *io.PipeWriter, execDone <-chan struct{}) {
	defer cancel()
	queue := make(chan []byte, 1024) // a nil entry means end of input
	var backlog atomic.Int64
	go func() {
		defer stdin.Close()
		open := true
		for data := range queue {
			if data == nil {
				open = false
				_ = stdin.Close()
				continue
			}
			if open {
				if _, err := stdin.Write(data); err != nil {
					open = false // the command has ended; what is typed now goes nowhere
				}
			}
			backlog.Add(-int64(len(data)))
		}
	}()
	defer close(queue)
	stdinOpen := true
	for {
		typ, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		if typ == websocket.MessageBinary {
			if !stdinOpen || len(data) == 0 {
				continue
			}
			if backlog.Add(int64(len(data))) > maxStdinBacklog || len(queue) == cap(queue) {
				msg := fmt.Sprintf("more than %d MiB of input is waiting for the command to read it", maxStdinBacklog>>20)
				_ = sendJSON(ctx, c, client.ShellMessage{Type: client.ShellMsgError, Code: client.CodeTooLarge, Message: msg})
				_ = c.Close(websocket.StatusPolicyViolation, closeReason(msg))
				return
			}
			queue <- data
			continue
		}
		m, reason := parseControl(data)
		if reason != "" {
			// A client that sends what the protocol does not have is broken or probing: it is told why and
			// cut off, never left to wonder why its resize or signal did nothing.
			s.log.Debug("worker api: shell: invalid control message", "reason", reason)
			_ = sendJSON(ctx, c, client.ShellMessage{Type: client.ShellMsgError, Code: client.CodeBadRequest, Message: reason})
			_ = c.Close(websocket.StatusPolicyViolation, closeReason(reason))
			return
		}
		switch m.Type {
		case client.ShellMsgEOF:
			if stdinOpen {
				stdinOpen = false
				queue <- nil // after the input already queued
			}
		case client.ShellMsgResize:
			s.control(ctx, execDone, id, "resize", func() error { return ag.Resize(ctx, id, m.Rows, m.Cols) })
		case client.ShellMsgSignal:
			s.control(ctx, execDone, id, "signal", func() error { return ag.Signal(ctx, id, m.Signal) })
		}
	}
}

// parseControl reads a control message of the client: eof, resize (rows and cols between 1 and 10000) or signal
// (a signal name the API takes). The reason is empty when the message is valid, else it says what is wrong.
func parseControl(data []byte) (client.ShellMessage, string) {
	var m client.ShellMessage
	if err := json.Unmarshal(data, &m); err != nil {
		return m, "invalid control message: not a JSON object of the shell protocol"
	}
	switch m.Type {
	case client.ShellMsgEOF:
	case client.ShellMsgResize:
		if m.Rows == 0 || m.Cols == 0 || m.Rows > 10000 || m.Cols > 10000 {
			return m, fmt.Sprintf("invalid resize: rows and cols must be between 1 and 10000 (got %d x %d)", m.Rows, m.Cols)
		}
	case client.ShellMsgSignal:
		req := client.SignalRequest{Signal: m.Signal}
		if err := wire.NormalizeSignal(&req); err != nil {
			return m, "invalid signal: " + err.Error()
		}
		m.Signal = req.Signal
	default:
		return m, fmt.Sprintf("invalid control message: unknown type %q (the client sends eof, resize or signal)", m.Type)
	}
	return m, ""
}

// control runs a resize or a signal, retrying while the agent has not set the command up yet: until then it
// answers not_found (not registered) or not_running (registered, terminal not open yet), like after the end.
func (s *server) control(ctx context.Context, execDone <-chan struct{}, id, what string, f func() error) {
	deadline := time.Now().Add(controlRetry)
	pause := 5 * time.Millisecond
	for {
		err := f()
		if err == nil {
			return
		}
		early := agentclient.IsCode(err, agent.CodeNotFound) || agentclient.IsCode(err, agent.CodeNotRunning)
		select {
		case <-execDone:
			early = false // it has ended: nothing to wait for
		default:
		}
		if !early || time.Now().After(deadline) {
			s.log.Debug("worker api: shell control failed", "what", what, "id", id, "err", err)
			return
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		pause = min(2*pause, 100*time.Millisecond)
	}
}

func sendJSON(ctx context.Context, c *websocket.Conn, m client.ShellMessage) error {
	b, err := json.Marshal(m)
	if err != nil {
		return fmt.Errorf("encode %s message: %w", m.Type, err)
	}
	return c.Write(ctx, websocket.MessageText, b)
}

// Output goes out in messages of at most these many bytes, so that clients with the common default read limit of
// 32 KiB per message (browsers, most WebSocket libraries) take them.
const (
	maxBinaryMessage = 32 << 10
	maxStderrChunk   = 16 << 10 // base64 and JSON make it about 22 KiB
)

// binaryWriter sends what it is given as binary messages (stdout).
type binaryWriter struct {
	ctx context.Context
	c   *websocket.Conn
}

func (b binaryWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxBinaryMessage)
		if err := b.c.Write(b.ctx, websocket.MessageBinary, p[:k]); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// stderrWriter sends what it is given as stderr messages.
type stderrWriter struct {
	ctx context.Context
	c   *websocket.Conn
}

func (s stderrWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), maxStderrChunk)
		if err := sendJSON(s.ctx, s.c, client.ShellMessage{Type: client.ShellMsgStderr, Data: p[:k]}); err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}

// closeReason fits a message into a close frame (at most 123 bytes).
func closeReason(msg string) string {
	if len(msg) > 120 {
		return msg[:120]
	}
	return msg
}
