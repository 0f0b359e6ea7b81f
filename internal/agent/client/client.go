// Package client is the host side of the guest agent protocol (internal/agent/protocol). One Client keeps one
// multiplexed connection to an agent, made on first use and remade after it breaks, and runs any number of
// concurrent requests over it; a slow request never holds up another. Every VM backend uses it, whatever its
// transport (agent.Dialer).
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
	"github.com/aetherium/aetherium/internal/tracing"
)

// ErrUnavailable wraps every transport failure: the agent cannot be reached, the connection broke, the agent
// broke the protocol. A command that ran and failed is a result, never this; a caller may retry on this error
// (after checking that a retry is safe for what it asked).
var ErrUnavailable = errors.New("agent unavailable")

// ErrProtocolMismatch is returned when the agent speaks another protocol version. Retrying does not help.
var ErrProtocolMismatch = errors.New("agent protocol version mismatch")

// ErrClosed is returned by calls on a closed Client, and by calls in flight when it is closed.
var ErrClosed = errors.New("agent client closed")

// Error is an error the agent answered a request with (a bad request, an unknown method...). The connection is
// fine; the request was not.
type Error struct {
	Method  string
	Code    string
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("agent %s: %s: %s", e.Method, e.Code, e.Message)
}

// ErrUnsupported is returned (wrapped) when the agent does not offer what a call needs (an older agent).
var ErrUnsupported = errors.New("not supported by this agent")

// Unwrap makes an agent that is shutting down count as unavailable (the request did not fail on its merits),
// and lets callers test file errors the usual way: errors.Is(err, fs.ErrNotExist), fs.ErrExist, fs.ErrPermission.
func (e *Error) Unwrap() error {
	switch e.Code {
	case protocol.CodeShuttingDown:
		return ErrUnavailable
	case protocol.CodeNotFound:
		return fs.ErrNotExist
	case protocol.CodeExists:
		return fs.ErrExist
	case protocol.CodePermissionDenied:
		return fs.ErrPermission
	case protocol.CodeUnknownMethod, protocol.CodeUnsupported:
		return ErrUnsupported
	}
	return nil
}

// IsCode reports whether err is an answer of the agent with this code (one of agent.Code*).
func IsCode(err error, code string) bool {
	var e *Error
	return errors.As(err, &e) && e.Code == code
}

// ErrTimeout is wrapped (with ErrUnavailable) by calls that failed because the agent did not answer in time on
// the client's own clock: a dial and handshake past the handshake timeout, an exec past its Timeout plus the
// grace. A guest controls its agent, so the host never waits on it without a bound of its own.
var ErrTimeout = errors.New("agent did not answer in time")

// Defaults of the Options.
const (
	// DefaultHandshakeTimeout bounds one dial plus the HELLO exchange. A healthy agent answers in milliseconds;
	// one that accepts and never speaks (a hostile guest, a socket that is not an agent's) is dropped after this.
	DefaultHandshakeTimeout = 10 * time.Second
	// DefaultExecGrace is how long past an exec's Timeout the client waits for the agent's answer. The agent
	// kills the command at its Timeout and answers at once; the grace covers delivering the rest of the output
	// to a slow consumer and a starved guest.
	DefaultExecGrace = 15 * time.Second
)

// Option configures a Client.
type Option func(*Client)

// WithHandshakeTimeout sets the bound on one dial plus handshake (default DefaultHandshakeTimeout).
func WithHandshakeTimeout(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.handshakeTimeout = d
		}
	}
}

// WithExecGrace sets how long past an exec's Timeout the client waits for its answer (default DefaultExecGrace).
func WithExecGrace(d time.Duration) Option {
	return func(c *Client) {
		if d > 0 {
			c.execGrace = d
		}
	}
}

// Client talks to one agent. It is safe for concurrent use.
type Client struct {
	dial             agent.Dialer
	window           uint32 // per-stream receive window announced to the agent
	handshakeTimeout time.Duration
	execGrace        time.Duration

	// life ends when the Client is closed; a dial or handshake in progress ends with it.
	life context.Context
	kill context.CancelFunc

	mu      sync.Mutex
	sess    *session
	dialing *dialAttempt // non-nil while one caller dials for everyone
	closed  bool
}

type dialAttempt struct {
	done chan struct{}
	err  error
}

// New returns a Client that reaches the agent through d. It does not connect until the first call.
func New(d agent.Dialer, opts ...Option) *Client {
	c := &Client{dial: d, window: protocol.DefaultWindow, handshakeTimeout: DefaultHandshakeTimeout,
		execGrace: DefaultExecGrace}
	for _, o := range opts {
		o(c)
	}
	c.life, c.kill = context.WithCancel(context.Background())
	return c
}

// Close closes the connection. Calls in flight fail with ErrClosed, and the agent kills their commands; a dial
// or handshake in progress is abandoned.
func (c *Client) Close() error {
	c.kill()
	c.mu.Lock()
	c.closed = true
	s := c.sess
	c.sess = nil
	c.mu.Unlock()
	if s != nil {
		s.fail(ErrClosed)
	}
	return nil
}

// session returns the live connection, dialing it if needed. Concurrent callers share one dial.
func (c *Client) session(ctx context.Context) (*session, error) {
	for {
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return nil, ErrClosed
		}
		if s := c.sess; s != nil {
			if s.usable() {
				c.mu.Unlock()
				return s, nil
			}
			c.sess = nil
		}
		if a := c.dialing; a != nil {
			c.mu.Unlock()
			select {
			case <-a.done:
			case <-ctx.Done():
				return nil, fmt.Errorf("%w: waiting for connection: %w", ErrUnavailable, ctx.Err())
			}
			// The dialer's context may have ended while ours has not: then try again ourselves.
			if a.err != nil && !(errors.Is(a.err, context.Canceled) || errors.Is(a.err, context.DeadlineExceeded)) {
				return nil, a.err
			}
			continue
		}
		a := &dialAttempt{done: make(chan struct{})}
		c.dialing = a
		c.mu.Unlock()

		s, err := c.connect(ctx)
		c.mu.Lock()
		c.dialing = nil
		closed := c.closed
		if err == nil && !closed {
			c.sess = s
		}
		if closed {
			err = ErrClosed // whatever the dial says, it ended because of the Close
		}
		a.err = err
		close(a.done)
		c.mu.Unlock()
		if err != nil {
			if s != nil {
				s.fail(ErrClosed) // outside c.mu: fail calls back into the Client
			}
			return nil, err
		}
		return s, nil
	}
}

// errHandshakeTimeout is the cause of a connect cut short by the handshake timeout (not by the caller's ctx).
var errHandshakeTimeout = errors.New("handshake timeout")

// connect dials and shakes hands, within the handshake timeout, ctx and the Client's life, whichever ends
// first: a dial that hangs or a peer that accepts and never speaks costs at most the handshake timeout.
func (c *Client) connect(ctx context.Context) (*session, error) {
	hctx, cancel := context.WithTimeoutCause(ctx, c.handshakeTimeout, errHandshakeTimeout)
	defer cancel()
	stopLife := context.AfterFunc(c.life, cancel)
	defer stopLife()
	// cutShort explains a failure that happened because hctx ended (the socket's deadline may fire a moment
	// before hctx's own timer).
	cutShort := func(what string) error {
		dl, hasDL := ctx.Deadline()
		switch {
		case c.life.Err() != nil:
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, ErrClosed)
		case ctx.Err() != nil:
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, ctx.Err())
		case hasDL && !time.Now().Before(dl):
			return fmt.Errorf("%w: %s: %w", ErrUnavailable, what, context.DeadlineExceeded)
		}
		return fmt.Errorf("%w: %s: %w: no answer within %s", ErrUnavailable, what, ErrTimeout, c.handshakeTimeout)
	}
	nc, err := c.dial(hctx)
	if err != nil {
		if hctx.Err() != nil {
			return nil, fmt.Errorf("%w (%v)", cutShort("dial"), err)
		}
		return nil, fmt.Errorf("%w: dial: %w", ErrUnavailable, err)
	}
	if dl, ok := hctx.Deadline(); ok {
		_ = nc.SetDeadline(dl)
	}
	stop := context.AfterFunc(hctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	peer, rd, err := handshake(nc, c.window)
	stopped := stop()
	if err != nil || !stopped || hctx.Err() != nil {
		_ = nc.Close()
		// A deadline on the socket means hctx ended (its timer may fire a moment after the socket's). Transports
		// report it their own way (os.ErrDeadlineExceeded, yamux's timeout error): any timeout counts.
		var ne net.Error
		timedOut := errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
		if hctx.Err() != nil || timedOut || !stopped {
			return nil, cutShort("handshake")
		}
		return nil, err
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("%w: clear deadline: %w", ErrUnavailable, err)
	}
	s := newSession(nc, rd, peer, c.window, c.dropSession)
	go s.readLoop()
	return s, nil
}

// dropSession forgets s once it is broken or drained, so that the next call dials again.
func (c *Client) dropSession(s *session) {
	c.mu.Lock()
	if c.sess == s {
		c.sess = nil
	}
	c.mu.Unlock()
}

// open sends one request and returns its stream. If the connection turns out to be broken before any byte of
// the request left, the request is sent again on a fresh connection: the agent cannot have seen it, so even an
// exec is safe to resend. A feature the agent does not list fails with ErrUnsupported before anything is sent.
func (c *Client) open(ctx context.Context, method string, params any, features ...string) (*stream, error) {
	req := protocol.Request{Method: method}
	if params != nil {
		raw, err := json.Marshal(params)
		if err != nil {
			return nil, fmt.Errorf("agent %s: encode params: %w", method, err)
		}
		req.Params = raw
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("agent %s: encode request: %w", method, err)
	}
	if len(body) > protocol.MaxPayloadSize {
		return nil, fmt.Errorf("agent %s: request of %d bytes exceeds the protocol's %d", method, len(body), protocol.MaxPayloadSize)
	}

	for attempt := 0; ; attempt++ {
		s, err := c.session(ctx)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", method, err)
		}
		for _, f := range features {
			if !slices.Contains(s.peer.Features, f) {
				return nil, fmt.Errorf("agent %s: %w: agent version %q lacks feature %q", method, ErrUnsupported, s.peer.AgentVersion, f)
			}
		}
		st, err := s.open()
		if err == nil {
			var sent bool
			if sent, err = s.write(ctx, protocol.FrameRequest, st.id, body); err == nil {
				return st, nil
			}
			s.remove(st.id)
			if sent {
				return nil, fmt.Errorf("agent %s: %w", method, err)
			}
		}
		// Nothing left: the session was already broken or out of stream ids. Once, try a fresh one.
		retryable := errors.Is(err, errDraining) || errors.Is(err, ErrUnavailable) && !errors.Is(err, ErrClosed)
		if attempt > 0 || ctx.Err() != nil || !retryable {
			return nil, fmt.Errorf("agent %s: %w", method, err)
		}
	}
}

// result turns a stream's end into the call's result or error.
func result(method string, resp *protocol.Response, err error) (json.RawMessage, error) {
	if err != nil {
		return nil, fmt.Errorf("agent %s: %w", method, err)
	}
	if resp.Error != nil {
		return nil, &Error{Method: method, Code: resp.Error.Code, Message: resp.Error.Message}
	}
	return resp.Result, nil
}

// call sends one request and waits for its response, passing its DATA to sink.
func (c *Client) call(ctx context.Context, method string, params any, sink func(protocol.Channel, []byte) error, features ...string) (raw json.RawMessage, err error) {
	if method != protocol.MethodHealth { // WaitReady polls health: its span is the caller's
		var span trace.Span
		ctx, span = tracing.Start(ctx, "agent "+method, trace.WithSpanKind(trace.SpanKindClient))
		defer func() { tracing.End(span, err) }()
	}
	st, err := c.open(ctx, method, params, features...)
	if err != nil {
		return nil, err
	}
	resp, err := st.wait(ctx, sink)
	return result(method, resp, err)
}

// callInto is call without DATA, decoding the result into out.
func (c *Client) callInto(ctx context.Context, method string, params, out any, features ...string) error {
	raw, err := c.call(ctx, method, params, nil, features...)
	if err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%w: agent %s: decode result: %w", ErrUnavailable, method, err)
	}
	return nil
}

// Features returns what the agent announced in its handshake (protocol.Feature* names).
func (c *Client) Features(ctx context.Context) ([]string, error) {
	s, err := c.session(ctx)
	if err != nil {
		return nil, err
	}
	return slices.Clone(s.peer.Features), nil
}

// Health asks the agent who it is.
func (c *Client) Health(ctx context.Context) (agent.Info, error) {
	raw, err := c.call(ctx, protocol.MethodHealth, nil, nil)
	if err != nil {
		return agent.Info{}, err
	}
	var h protocol.HealthResult
	if err := json.Unmarshal(raw, &h); err != nil {
		return agent.Info{}, fmt.Errorf("%w: agent health: decode result: %w", ErrUnavailable, err)
	}
	return agent.Info{Version: h.Version, ProtocolVersion: h.ProtocolVersion, Hostname: h.Hostname, PID1: h.PID1}, nil
}

// ExecStream runs a command and copies its stdout and stderr to the writers while it runs (nil discards).
// The writers are called from this goroutine only, one at a time. The result has no output in it. If a writer
// fails or ctx ends, the agent is told to kill the command (or, with KeepRunningOnDisconnect, to let it go on
// in the background) and the error is returned.
func (c *Client) ExecStream(ctx context.Context, req agent.ExecRequest, stdout, stderr io.Writer) (*agent.ExecResult, error) {
	return c.ExecInteractive(ctx, req, agent.ExecIO{Stdout: stdout, Stderr: stderr})
}

// ExecInteractive is ExecStream with input: eio.Stdin is copied to the command as it reads it, and its EOF
// closes the command's stdin (a terminal's has none: see agent.ExecIO). With req.Pty the output of the terminal
// arrives on eio.Stdout; resize it with Resize(req.ID, ...).
//
// It returns as soon as the command has ended, without waiting for a Read of eio.Stdin that is still blocked
// (a terminal, a network connection): that Read's goroutine ends when the Read returns, and its data is dropped.
// A Stdin that fails (other than io.EOF) ends the call with its error, and the command as for a cancel.
//
// With req.Timeout set, the call ends at Timeout plus the exec grace (WithExecGrace) on the host's own clock,
// whatever the agent does: an agent that neither answers nor ends the command in that time is told to cancel
// it, and the call fails with ErrUnavailable and ErrTimeout.
func (c *Client) ExecInteractive(ctx context.Context, req agent.ExecRequest, eio agent.ExecIO) (res *agent.ExecResult, err error) {
	ctx, span := tracing.Start(ctx, "agent exec", trace.WithSpanKind(trace.SpanKindClient))
	defer func() { tracing.End(span, err) }()
	if req.Timeout <= 0 {
		return c.execInteractive(ctx, req, eio)
	}
	limit := req.Timeout + c.execGrace
	overdue := &execOverdue{timeout: req.Timeout, grace: c.execGrace}
	dctx, cancel := context.WithTimeoutCause(ctx, limit, overdue)
	defer cancel()
	res, err = c.execInteractive(dctx, req, eio)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(dctx), overdue) {
		return nil, fmt.Errorf("agent exec: %w: %w", ErrUnavailable, overdue)
	}
	return res, err
}

// execOverdue is the cause of an exec cut short by its own deadline.
type execOverdue struct{ timeout, grace time.Duration }

func (e *execOverdue) Error() string {
	return fmt.Sprintf("no answer %s after the command's %s timeout: the agent is stuck or misbehaving "+
		"(the command, if it started, was cancelled)", e.grace, e.timeout)
}

func (e *execOverdue) Unwrap() error { return ErrTimeout }

func (c *Client) execInteractive(ctx context.Context, req agent.ExecRequest, eio agent.ExecIO) (*agent.ExecResult, error) {
	stdout, stderr := eio.Stdout, eio.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	params, features := execParams(req)
	if eio.Stdin != nil {
		params.Stdin = true
		features = append(features, protocol.FeatureStdin)
	}
	sink := func(ch protocol.Channel, data []byte) error {
		var err error
		switch ch {
		case protocol.ChannelStdout:
			_, err = stdout.Write(data)
		case protocol.ChannelStderr:
			_, err = stderr.Write(data)
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", ch, err)
		}
		return nil
	}
	st, err := c.open(ctx, protocol.MethodExec, params, features...)
	if err != nil {
		return nil, err
	}
	wctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	if eio.Stdin != nil {
		go pumpInput(wctx, stop, st, eio.Stdin)
	}
	resp, err := st.wait(wctx, sink)
	if err != nil && ctx.Err() == nil {
		if cause := context.Cause(wctx); cause != nil && !errors.Is(cause, context.Canceled) {
			err = cause // the input failed
		}
	}
	raw, err := result(protocol.MethodExec, resp, err)
	if err != nil {
		return nil, err
	}
	var r protocol.ExecResult
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("%w: agent exec: decode result: %w", ErrUnavailable, err)
	}
	return execResult(r), nil
}

// pumpInput copies r to the stream's channel 0 and ends it at EOF. It stops quietly when the stream is over
// (ctx ends or the agent answered); a failing r ends ctx with the failure as its cause.
func pumpInput(ctx context.Context, fail context.CancelCauseFunc, st *stream, r io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if serr := st.send(ctx, protocol.ChannelStdin, buf[:n]); serr != nil {
				return
			}
		}
		if errors.Is(err, io.EOF) {
			_ = st.sendEnd(ctx, protocol.ChannelStdin)
			return
		}
		if err != nil {
			fail(fmt.Errorf("reading stdin: %w", err))
			return
		}
	}
}

// execParams is the wire form of req, with the features it needs.
func execParams(req agent.ExecRequest) (protocol.ExecParams, []string) {
	p := protocol.ExecParams{
		Argv:        req.Argv,
		Env:         req.Env,
		WorkingDir:  req.WorkingDir,
		TimeoutNS:   int64(req.Timeout),
		Shell:       req.Shell,
		User:        req.User,
		ID:          req.ID,
		KeepRunning: req.KeepRunningOnDisconnect,
	}
	var features []string
	if req.Shell != "" || req.User != "" || req.ID != "" || req.KeepRunningOnDisconnect {
		features = append(features, protocol.FeatureExecExtras)
	}
	if req.Pty != nil {
		p.Pty = &protocol.PtyParams{Rows: req.Pty.Rows, Cols: req.Pty.Cols, Term: req.Pty.Term}
		features = append(features, protocol.FeaturePty)
	}
	return p, features
}

func execResult(r protocol.ExecResult) *agent.ExecResult {
	return &agent.ExecResult{
		ExitCode:     r.ExitCode,
		Signal:       r.Signal,
		TimedOut:     r.TimedOut,
		Duration:     time.Duration(r.DurationNS),
		StartedAt:    r.StartedAt,
		ID:           r.ID,
		PeakMemoryKB: r.PeakMemoryKB,
	}
}

// Signal sends sig ("SIGTERM", "TERM" or a number) to the process group of the process with this id: a
// streamed exec (ExecRequest.ID) or a background process.
func (c *Client) Signal(ctx context.Context, id, sig string) error {
	return c.callInto(ctx, protocol.MethodSignal, protocol.SignalParams{ID: id, Signal: sig}, nil, protocol.FeatureSignal)
}

// Resize changes the terminal size of a process started with a pty.
func (c *Client) Resize(ctx context.Context, id string, rows, cols uint16) error {
	return c.callInto(ctx, protocol.MethodResize, protocol.ResizeParams{ID: id, Rows: rows, Cols: cols}, nil, protocol.FeaturePty)
}

// PowerOff asks the agent to power the VM off. It returns once the agent has accepted; the VM then goes away,
// so the caller waits for that on the VMM's side. Agents not running as a VM's init do not offer it
// (ErrUnsupported).
func (c *Client) PowerOff(ctx context.Context) error {
	return c.callInto(ctx, protocol.MethodPowerOff, struct{}{}, nil, protocol.FeaturePowerOff)
}

// Exec runs a command and returns its output, each stream capped at req.MaxOutputBytes (or
// agent.DefaultMaxOutputBytes). Output past the cap is read and dropped, so the command never blocks on it, and
// the truncation is flagged.
func (c *Client) Exec(ctx context.Context, req agent.ExecRequest) (*agent.ExecResult, error) {
	limit := req.MaxOutputBytes
	if limit <= 0 {
		limit = agent.DefaultMaxOutputBytes
	}
	stdout, stderr := &capBuffer{max: limit}, &capBuffer{max: limit}
	res, err := c.ExecStream(ctx, req, stdout, stderr)
	if err != nil {
		return nil, err
	}
	res.Stdout, res.StdoutTruncated = stdout.bytes(), stdout.truncated
	res.Stderr, res.StderrTruncated = stderr.bytes(), stderr.truncated
	return res, nil
}

// capBuffer keeps the first max bytes written to it and counts the rest as truncated.
type capBuffer struct {
	max       int
	buf       []byte
	truncated bool
}

func (b *capBuffer) Write(p []byte) (int, error) {
	room := b.max - len(b.buf)
	if len(p) > room {
		b.buf = append(b.buf, p[:room]...)
		b.truncated = true
	} else {
		b.buf = append(b.buf, p...)
	}
	return len(p), nil
}

func (b *capBuffer) bytes() []byte {
	if b.buf == nil {
		return []byte{}
	}
	return b.buf
}

// Backoff bounds of WaitReady, and the longest one attempt may take (a dial that hangs, a frozen agent).
const (
	readyBackoffMin = 5 * time.Millisecond
	readyBackoffMax = 200 * time.Millisecond
	readyAttemptMax = 2 * time.Second
)

// WaitReady dials and asks for health until the agent answers or ctx ends. At the deadline its error says how
// long it waited and what the last failure was. A protocol mismatch or a closed client ends it at once.
func (c *Client) WaitReady(ctx context.Context) (agent.Info, error) {
	start := time.Now()
	backoff := readyBackoffMin
	var last error
	for attempt := 1; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, readyAttemptMax)
		info, err := c.Health(actx)
		cancel()
		if err == nil {
			return info, nil
		}
		if errors.Is(err, ErrProtocolMismatch) || errors.Is(err, ErrClosed) {
			return agent.Info{}, err
		}
		// An attempt cut short by ctx itself says less than the failure before it.
		if last == nil || ctx.Err() == nil {
			last = err
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return agent.Info{}, fmt.Errorf("%w: agent not ready after %v (%d attempts): %w; last error: %w",
				ErrUnavailable, time.Since(start).Round(time.Millisecond), attempt, ctx.Err(), last)
		case <-t.C:
		}
		backoff = min(2*backoff, readyBackoffMax)
	}
}
