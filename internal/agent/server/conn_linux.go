//go:build linux

package server

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// conn is one client connection: a reader goroutine (serve) that never blocks on a stream's work, and one
// goroutine per request.
type conn struct {
	s      *Server
	nc     net.Conn
	w      *protocol.Writer
	log    *slog.Logger
	ctx    context.Context // cancelled when the connection ends: kills its commands
	cancel context.CancelFunc

	// window is the client's per-stream receive window: the initial credit of every stream.
	window uint32
	// inWindow is our own per-stream receive window (what we announced): the most input one stream may hold.
	inWindow uint32

	mu      sync.Mutex
	streams map[uint32]*stream
	wg      sync.WaitGroup
}

func newConn(s *Server, nc net.Conn) *conn {
	ctx, cancel := context.WithCancel(s.ctx)
	return &conn{
		s:       s,
		nc:      nc,
		w:       protocol.NewWriter(nc),
		log:     s.log.With("remote", nc.RemoteAddr().String()),
		ctx:     ctx,
		cancel:  cancel,
		streams: make(map[uint32]*stream),
	}
}

func (c *conn) serve() {
	defer func() {
		// Order matters: cancel kills the commands, closing the socket unblocks writers, then wait for handlers.
		c.cancel()
		_ = c.nc.Close()
		c.wg.Wait()
	}()
	rd := protocol.NewReader(bufio.NewReaderSize(c.nc, 64<<10))
	if err := c.handshake(rd); err != nil {
		c.log.Warn("handshake failed", "err", err)
		return
	}
	c.log.Debug("client connected", "window", c.window)
	for {
		f, err := rd.ReadFrame()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || c.ctx.Err() != nil {
				c.log.Debug("connection closed", "err", err)
			} else {
				c.log.Warn("connection failed", "err", err)
			}
			return
		}
		if err := c.dispatch(f); err != nil {
			c.log.Warn("protocol error, closing connection", "err", err)
			return
		}
	}
}

func (c *conn) handshake(rd *protocol.Reader) error {
	_ = c.nc.SetReadDeadline(time.Now().Add(c.s.cfg.HandshakeTimeout))
	f, err := rd.ReadFrame()
	if err != nil {
		return fmt.Errorf("read HELLO: %w", err)
	}
	if f.Type != protocol.FrameHello || f.Stream != 0 {
		return fmt.Errorf("expected HELLO on stream 0, got %s on stream %d", f.Type, f.Stream)
	}
	var h protocol.Hello
	if err := json.Unmarshal(f.Payload, &h); err != nil {
		return fmt.Errorf("decode HELLO: %w", err)
	}
	// Answer even on a mismatch, so that the client can name both versions in its error.
	reply, err := json.Marshal(protocol.Hello{
		ProtocolVersion: protocol.Version,
		AgentVersion:    c.s.cfg.Version,
		Role:            protocol.RoleAgent,
		Window:          c.s.cfg.Window,
		Features:        c.s.features(),
	})
	if err != nil {
		return fmt.Errorf("encode HELLO: %w", err)
	}
	if err := c.w.WriteFrame(protocol.FrameHello, 0, reply); err != nil {
		return err
	}
	if h.ProtocolVersion != protocol.Version {
		return fmt.Errorf("client speaks protocol version %d, this agent speaks %d", h.ProtocolVersion, protocol.Version)
	}
	if h.Role != protocol.RoleClient {
		return fmt.Errorf("peer says it is %q, want %q", h.Role, protocol.RoleClient)
	}
	c.window = h.EffectiveWindow()
	c.inWindow = protocol.Hello{Window: c.s.cfg.Window}.EffectiveWindow()
	return c.nc.SetReadDeadline(time.Time{})
}

// dispatch handles one frame. It never waits for a request's work, so that CANCEL and WINDOW frames are always
// read promptly. An error means the client broke the protocol and the connection is closed.
func (c *conn) dispatch(f protocol.Frame) error {
	switch f.Type {
	case protocol.FrameRequest:
		return c.openStream(f)
	case protocol.FrameCancel:
		if st := c.lookup(f.Stream); st != nil {
			c.log.Debug("request cancelled by client", "stream", f.Stream)
			st.cancel()
		}
	case protocol.FrameWindow:
		n, err := protocol.ParseWindow(f.Payload)
		if err != nil {
			return err
		}
		if st := c.lookup(f.Stream); st != nil {
			return st.addCredit(n)
		}
	case protocol.FrameData:
		ch, data, err := protocol.ParseData(f.Payload)
		if err != nil {
			return err
		}
		if ch != protocol.ChannelStdin {
			c.log.Debug("ignoring DATA from client on an output channel", "stream", f.Stream, "channel", ch)
			return nil
		}
		// Input is queued for whichever handler reads it (exec stdin, file.write); a stream that reads none
		// holds at most a window of it until it ends. Input for an unknown stream (one that just ended) is dropped.
		if st := c.lookup(f.Stream); st != nil {
			return st.pushIn(data)
		}
	case protocol.FrameEnd:
		ch, err := protocol.ParseEnd(f.Payload)
		if err != nil {
			return err
		}
		if st := c.lookup(f.Stream); st != nil && ch == protocol.ChannelStdin {
			st.endIn()
		}
	default:
		return fmt.Errorf("unexpected %s frame from client", f.Type)
	}
	return nil
}

func (c *conn) openStream(f protocol.Frame) error {
	id := f.Stream
	if id == 0 || id%2 == 0 {
		return fmt.Errorf("REQUEST on stream %d: client streams have odd ids", id)
	}
	var req protocol.Request
	if err := json.Unmarshal(f.Payload, &req); err != nil {
		// The frame was whole, so the connection is fine; only this request is bad.
		return c.respond(id, nil, badRequest("decode request: %v", err))
	}
	c.mu.Lock()
	if _, dup := c.streams[id]; dup {
		c.mu.Unlock()
		return fmt.Errorf("REQUEST on stream %d, which is still open", id)
	}
	if len(c.streams) >= c.s.cfg.MaxStreams {
		c.mu.Unlock()
		return c.respond(id, nil, &protocol.Error{Code: protocol.CodeTooManyStreams,
			Message: fmt.Sprintf("more than %d concurrent requests on one connection", c.s.cfg.MaxStreams)})
	}
	if !c.s.beginRequest() {
		c.mu.Unlock()
		return c.respond(id, nil, &protocol.Error{Code: protocol.CodeShuttingDown, Message: "agent is shutting down"})
	}
	st := newStream(c, id)
	c.streams[id] = st
	c.wg.Add(1)
	c.mu.Unlock()
	go c.handle(st, req)
	return nil
}

func (c *conn) lookup(id uint32) *stream {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

func (c *conn) handle(st *stream, req protocol.Request) {
	defer c.wg.Done()
	defer c.s.endRequest()
	defer func() {
		st.cancel()
		c.mu.Lock()
		delete(c.streams, st.id)
		c.mu.Unlock()
	}()

	h, ok := c.s.handlers[req.Method]
	if !ok {
		perr := &protocol.Error{Code: protocol.CodeUnknownMethod, Message: fmt.Sprintf("unknown method %q", req.Method)}
		if err := c.respond(st.id, nil, perr); err != nil {
			c.log.Debug("could not send response", "stream", st.id, "method", req.Method, "err", err)
		}
		return
	}
	result, perr, after := h(c, st, req.Params)
	err := c.respond(st.id, result, perr)
	if err != nil {
		c.log.Debug("could not send response", "stream", st.id, "method", req.Method, "err", err)
	}
	if after != nil {
		after(err == nil && st.ctx.Err() == nil)
	}
}

// handler serves one method. after, when not nil, runs once the response was written (power-off must answer
// first), told whether it went out to a client still waiting for it.
type handler func(c *conn, st *stream, params json.RawMessage) (result any, perr *protocol.Error, after func(delivered bool))

// method adapts a typed handler: it decodes the params strictly (see protocol.DecodeParams).
func method[P any, R any](name string, fn func(c *conn, st *stream, p P) (R, *protocol.Error)) handler {
	return func(c *conn, st *stream, raw json.RawMessage) (any, *protocol.Error, func(bool)) {
		var p P
		if err := protocol.DecodeParams(raw, &p); err != nil {
			return nil, badRequest("%s params: %v", name, err), nil
		}
		r, perr := fn(c, st, p)
		if perr != nil {
			return nil, perr, nil
		}
		return r, nil, nil
	}
}

// handlers maps every method to its handler.
func (s *Server) buildHandlers() map[string]handler {
	hs := map[string]handler{
		protocol.MethodHealth: func(c *conn, _ *stream, _ json.RawMessage) (any, *protocol.Error, func(bool)) {
			return c.s.health(), nil, nil
		},
		protocol.MethodExec:          (*conn).execMethod,
		protocol.MethodSignal:        method(protocol.MethodSignal, (*conn).signal),
		protocol.MethodResize:        method(protocol.MethodResize, (*conn).resize),
		protocol.MethodProcessStart:  method(protocol.MethodProcessStart, (*conn).processStart),
		protocol.MethodProcessList:   method(protocol.MethodProcessList, (*conn).processList),
		protocol.MethodProcessOutput: method(protocol.MethodProcessOutput, (*conn).processOutput),
		protocol.MethodProcessWait:   method(protocol.MethodProcessWait, (*conn).processWait),
		protocol.MethodProcessRemove: method(protocol.MethodProcessRemove, (*conn).processRemove),
		protocol.MethodFileWrite:     method(protocol.MethodFileWrite, (*conn).fileWrite),
		protocol.MethodFileRead:      method(protocol.MethodFileRead, (*conn).fileRead),
		protocol.MethodFileStat:      method(protocol.MethodFileStat, (*conn).fileStat),
		protocol.MethodFileList:      method(protocol.MethodFileList, (*conn).fileList),
		protocol.MethodFileMkdir:     method(protocol.MethodFileMkdir, (*conn).fileMkdir),
		protocol.MethodFileRemove:    method(protocol.MethodFileRemove, (*conn).fileRemove),
	}
	if s.cfg.PowerOff != nil {
		hs[protocol.MethodPowerOff] = (*conn).powerOff
	}
	return hs
}

// features lists what this agent announces in its HELLO.
func (s *Server) features() []string {
	f := []string{protocol.FeatureHealth, protocol.FeatureExec, protocol.FeatureExecExtras, protocol.FeatureStdin,
		protocol.FeaturePty, protocol.FeatureSignal, protocol.FeatureProcess, protocol.FeatureFiles}
	if s.cfg.PowerOff != nil {
		f = append(f, protocol.FeaturePowerOff)
	}
	return f
}

// powerOff answers, then calls the power-off handler (which normally does not return).
func (c *conn) powerOff(_ *stream, raw json.RawMessage) (any, *protocol.Error, func(bool)) {
	if len(raw) > 0 && string(raw) != "null" && string(raw) != "{}" {
		return nil, badRequest("poweroff takes no params"), nil
	}
	c.log.Info("power-off requested by the host")
	return struct{}{}, nil, func(bool) {
		if err := c.s.cfg.PowerOff(); err != nil {
			c.log.Error("power-off failed", "err", err)
		}
	}
}

func (c *conn) respond(id uint32, result any, perr *protocol.Error) error {
	resp := protocol.Response{Error: perr}
	if perr == nil {
		raw, err := json.Marshal(result)
		if err != nil {
			resp.Error = &protocol.Error{Code: protocol.CodeInternal, Message: fmt.Sprintf("encode result: %v", err)}
		} else {
			resp.Result = raw
		}
	}
	payload, err := json.Marshal(resp)
	if err != nil {
		return fmt.Errorf("encode response: %w", err)
	}
	return c.w.WriteFrame(protocol.FrameResponse, id, payload)
}

func badRequest(format string, args ...any) *protocol.Error {
	return &protocol.Error{Code: protocol.CodeBadRequest, Message: fmt.Sprintf(format, args...)}
}

func (s *Server) health() protocol.HealthResult {
	host, err := os.Hostname()
	if err != nil {
		host = ""
	}
	return protocol.HealthResult{
		Version:         s.cfg.Version,
		ProtocolVersion: protocol.Version,
		Hostname:        host,
		PID1:            os.Getpid() == 1,
	}
}

// stream is the agent's side of one request.
type stream struct {
	id     uint32
	c      *conn
	ctx    context.Context // cancelled by CANCEL, by the connection's end, or when the request is done
	cancel context.CancelFunc

	mu     sync.Mutex
	credit int64         // DATA bytes the client still accepts on this stream
	wake   chan struct{} // closed (and replaced) whenever credit arrives, to wake every waiting sender

	// Input (channel 0) from the client, queued by the connection's reader and consumed by readIn.
	inMu       sync.Mutex
	in         [][]byte
	inBuffered int
	inEnded    bool
	inNotify   chan struct{} // capacity 1: "input changed"
	inConsumed int           // bytes consumed and not yet returned to the client as credit
	inPending  int           // size of the chunk readIn returned last, consumed once readIn is called again
}

func newStream(c *conn, id uint32) *stream {
	ctx, cancel := context.WithCancel(c.ctx)
	return &stream{id: id, c: c, ctx: ctx, cancel: cancel, credit: int64(c.window), wake: make(chan struct{}),
		inNotify: make(chan struct{}, 1)}
}

// pushIn queues input from the client. More than our window outstanding means the client ignores flow
// control: a protocol error.
func (st *stream) pushIn(data []byte) error {
	st.inMu.Lock()
	if st.inEnded {
		st.inMu.Unlock()
		return fmt.Errorf("stream %d: DATA on channel 0 after its END", st.id)
	}
	if st.inBuffered+len(data) > int(st.c.inWindow) {
		st.inMu.Unlock()
		return fmt.Errorf("stream %d: client sent more than the %d-byte window", st.id, st.c.inWindow)
	}
	st.in = append(st.in, data)
	st.inBuffered += len(data)
	st.inMu.Unlock()
	select {
	case st.inNotify <- struct{}{}:
	default:
	}
	return nil
}

func (st *stream) endIn() {
	st.inMu.Lock()
	st.inEnded = true
	st.inMu.Unlock()
	select {
	case st.inNotify <- struct{}{}:
	default:
	}
}

// readIn returns the next chunk of input, io.EOF after the client's END, or the stream's context error. The
// chunk returned last counts as consumed when readIn is called again: only then is its credit returned to the
// client (in batches of a quarter window), so that input waits in the client, not here, while the consumer
// (a command's stdin, a file) is slow.
func (st *stream) readIn() ([]byte, error) {
	st.inMu.Lock()
	st.inConsumed += st.inPending
	st.inPending = 0
	if grant := st.inConsumed; grant >= max(int(st.c.inWindow)/4, 1) {
		st.inConsumed = 0
		st.inMu.Unlock()
		if err := st.c.w.WriteFrame(protocol.FrameWindow, st.id, protocol.WindowPayload(uint32(grant))); err != nil {
			return nil, err
		}
		st.inMu.Lock()
	}
	for {
		if len(st.in) > 0 {
			data := st.in[0]
			st.in[0] = nil
			st.in = st.in[1:]
			st.inBuffered -= len(data)
			st.inPending = len(data)
			st.inMu.Unlock()
			return data, nil
		}
		if st.inEnded {
			st.inMu.Unlock()
			return nil, io.EOF
		}
		st.inMu.Unlock()
		select {
		case <-st.inNotify:
		case <-st.ctx.Done():
			return nil, st.ctx.Err()
		}
		st.inMu.Lock()
	}
}

// header sends the stream's HEADER frame.
func (st *stream) header(v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode header: %w", err)
	}
	return st.c.w.WriteFrame(protocol.FrameHeader, st.id, raw)
}

func (st *stream) addCredit(n uint32) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.credit += int64(n)
	if st.credit > 2*protocol.MaxWindow {
		return fmt.Errorf("stream %d: client granted %d bytes of credit, more than any window", st.id, st.credit)
	}
	close(st.wake)
	st.wake = make(chan struct{})
	return nil
}

// sendData sends data on the stream as DATA frames, waiting for credit as needed: this wait is what pushes
// back on a command whose output is not being consumed. chByte is a one-byte slice holding the channel.
func (st *stream) sendData(chByte, data []byte) error {
	for len(data) > 0 {
		// A stream given up on sends nothing more, even with credit left: its RESPONSE may be on the way.
		if err := st.ctx.Err(); err != nil {
			return err
		}
		st.mu.Lock()
		for st.credit <= 0 {
			wake := st.wake
			st.mu.Unlock()
			select {
			case <-wake:
			case <-st.ctx.Done():
				return st.ctx.Err()
			}
			st.mu.Lock()
		}
		n := min(int64(len(data)), st.credit, protocol.MaxDataSize)
		st.credit -= n
		st.mu.Unlock()
		if err := st.c.w.WriteFrame(protocol.FrameData, st.id, chByte, data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

func (st *stream) end(ch protocol.Channel) error {
	return st.c.w.WriteFrame(protocol.FrameEnd, st.id, protocol.EndPayload(ch))
}
