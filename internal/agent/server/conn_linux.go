//go:build linux

package server

import (
	"bufio"
	"bytes"
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
		Features:        []string{protocol.FeatureHealth, protocol.FeatureExec},
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
		if _, _, err := protocol.ParseData(f.Payload); err != nil {
			return err
		}
		// No method of version 1 reads stdin; stray input is dropped, as for an unknown stream.
		c.log.Debug("ignoring DATA from client", "stream", f.Stream)
	case protocol.FrameEnd:
		if _, err := protocol.ParseEnd(f.Payload); err != nil {
			return err
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

	var (
		result any
		perr   *protocol.Error
	)
	switch req.Method {
	case protocol.MethodHealth:
		result = c.s.health()
	case protocol.MethodExec:
		var p protocol.ExecParams
		if err := decodeStrict(req.Params, &p); err != nil {
			perr = badRequest("exec params: %v", err)
			break
		}
		result, perr = c.exec(st, p)
	default:
		perr = &protocol.Error{Code: protocol.CodeUnknownMethod, Message: fmt.Sprintf("unknown method %q", req.Method)}
	}
	if err := c.respond(st.id, result, perr); err != nil {
		c.log.Debug("could not send response", "stream", st.id, "method", req.Method, "err", err)
	}
}

// decodeStrict rejects unknown fields: a client asking for something this agent does not do (a later
// version's "stdin": true) must get an error, not a command run without it.
func decodeStrict(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return errors.New("missing")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
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
}

func newStream(c *conn, id uint32) *stream {
	ctx, cancel := context.WithCancel(c.ctx)
	return &stream{id: id, c: c, ctx: ctx, cancel: cancel, credit: int64(c.window), wake: make(chan struct{})}
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
