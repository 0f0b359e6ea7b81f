package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// errDraining means a connection has used up its stream ids: it finishes its requests, and new ones go to a
// new connection.
var errDraining = errors.New("connection out of stream ids")

// cancelTimeout bounds the background write of a CANCEL frame.
const cancelTimeout = 5 * time.Second

// handshake sends the client's HELLO and reads the agent's.
func handshake(nc net.Conn, window uint32) (protocol.Hello, *protocol.Reader, error) {
	hello, err := json.Marshal(protocol.Hello{ProtocolVersion: protocol.Version, Role: protocol.RoleClient, Window: window})
	if err != nil {
		return protocol.Hello{}, nil, fmt.Errorf("encode HELLO: %w", err)
	}
	frame, err := protocol.AppendFrame(nil, protocol.FrameHello, 0, hello)
	if err != nil {
		return protocol.Hello{}, nil, err
	}
	if _, err := nc.Write(frame); err != nil {
		return protocol.Hello{}, nil, fmt.Errorf("%w: send HELLO: %w", ErrUnavailable, err)
	}
	rd := protocol.NewReader(bufio.NewReaderSize(nc, 64<<10))
	f, err := rd.ReadFrame()
	if err != nil {
		return protocol.Hello{}, nil, fmt.Errorf("%w: read agent HELLO: %w", ErrUnavailable, err)
	}
	if f.Type != protocol.FrameHello || f.Stream != 0 {
		return protocol.Hello{}, nil, fmt.Errorf("%w: agent sent %s on stream %d before HELLO", ErrUnavailable, f.Type, f.Stream)
	}
	var peer protocol.Hello
	if err := json.Unmarshal(f.Payload, &peer); err != nil {
		return protocol.Hello{}, nil, fmt.Errorf("%w: decode agent HELLO: %w", ErrUnavailable, err)
	}
	if peer.ProtocolVersion != protocol.Version {
		return protocol.Hello{}, nil, fmt.Errorf("%w: agent (version %q) speaks protocol version %d, this client speaks %d",
			ErrProtocolMismatch, peer.AgentVersion, peer.ProtocolVersion, protocol.Version)
	}
	if peer.Role != protocol.RoleAgent {
		return protocol.Hello{}, nil, fmt.Errorf("%w: peer says it is %q, not %q", ErrUnavailable, peer.Role, protocol.RoleAgent)
	}
	return peer, rd, nil
}

// session is one connection to the agent: a reader goroutine that routes frames to streams without ever
// blocking on one, and writers that take turns through wsem.
type session struct {
	nc     net.Conn
	rd     *protocol.Reader
	peer   protocol.Hello
	window uint32 // our per-stream receive window
	onDone func(*session)

	wsem chan struct{} // write turn; a channel rather than a mutex so that waiting honours ctx
	wbuf []byte        // guarded by wsem

	mu       sync.Mutex
	streams  map[uint32]*stream
	nextID   uint64
	draining bool
	err      error
	done     chan struct{} // closed when err is set
}

func newSession(nc net.Conn, rd *protocol.Reader, peer protocol.Hello, window uint32, onDone func(*session)) *session {
	return &session{
		nc:      nc,
		rd:      rd,
		peer:    peer,
		window:  window,
		onDone:  onDone,
		wsem:    make(chan struct{}, 1),
		streams: make(map[uint32]*stream),
		nextID:  1,
		done:    make(chan struct{}),
	}
}

func (s *session) usable() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err == nil && !s.draining
}

// fail ends the session with err (the first error wins): closes the connection and fails every open stream.
func (s *session) fail(err error) {
	s.mu.Lock()
	if s.err != nil {
		s.mu.Unlock()
		return
	}
	s.err = err
	streams := s.streams
	s.streams = make(map[uint32]*stream)
	s.mu.Unlock()
	close(s.done)
	_ = s.nc.Close()
	for _, st := range streams {
		st.abort(err)
	}
	s.onDone(s)
}

func (s *session) readLoop() {
	for {
		f, err := s.rd.ReadFrame()
		if err != nil {
			s.fail(fmt.Errorf("%w: connection lost: %w", ErrUnavailable, err))
			return
		}
		if err := s.dispatch(f); err != nil {
			s.fail(fmt.Errorf("%w: agent broke the protocol: %w", ErrUnavailable, err))
			return
		}
	}
}

func (s *session) dispatch(f protocol.Frame) error {
	switch f.Type {
	case protocol.FrameData:
		ch, data, err := protocol.ParseData(f.Payload)
		if err != nil {
			return err
		}
		if st := s.lookup(f.Stream); st != nil {
			return st.push(ch, data)
		}
	case protocol.FrameEnd:
		_, err := protocol.ParseEnd(f.Payload)
		return err
	case protocol.FrameResponse:
		var resp protocol.Response
		if err := json.Unmarshal(f.Payload, &resp); err != nil {
			return fmt.Errorf("decode RESPONSE on stream %d: %w", f.Stream, err)
		}
		if st := s.take(f.Stream); st != nil {
			st.finish(&resp)
		}
	case protocol.FrameWindow:
		// Credit for DATA we send (stdin, uploads).
		n, err := protocol.ParseWindow(f.Payload)
		if err != nil {
			return err
		}
		if st := s.lookup(f.Stream); st != nil {
			return st.addSendCredit(n)
		}
	case protocol.FrameHeader:
		if st := s.lookup(f.Stream); st != nil {
			return st.setHeader(f.Payload)
		}
	default:
		return fmt.Errorf("unexpected %s frame on stream %d", f.Type, f.Stream)
	}
	return nil
}

// open registers a new stream. Its error means nothing was sent, so the caller may use another session.
func (s *session) open() (*stream, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err != nil {
		return nil, s.err
	}
	if s.draining {
		return nil, errDraining
	}
	id := uint32(s.nextID)
	s.nextID += 2
	if s.nextID > math.MaxUint32 {
		s.draining = true
	}
	st := newStream(s, id, s.peer.EffectiveWindow())
	s.streams[id] = st
	return st, nil
}

func (s *session) lookup(id uint32) *stream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.streams[id]
}

// take removes and returns a stream.
func (s *session) take(id uint32) *stream {
	s.mu.Lock()
	st := s.streams[id]
	delete(s.streams, id)
	drained := s.draining && len(s.streams) == 0 && s.err == nil
	s.mu.Unlock()
	if drained {
		s.fail(fmt.Errorf("%w: %w", ErrUnavailable, errDraining))
	}
	return st
}

func (s *session) remove(id uint32) { s.take(id) }

// write sends one frame. sent reports whether any byte of it left, which tells a caller whether the agent may
// have seen it. A failed or timed-out write may have sent part of a frame, so it ends the session.
func (s *session) write(ctx context.Context, t protocol.FrameType, id uint32, parts ...[]byte) (sent bool, err error) {
	select {
	case s.wsem <- struct{}{}:
	case <-ctx.Done():
		return false, ctx.Err()
	case <-s.done:
		return false, s.failure()
	}
	defer func() { <-s.wsem }()
	if err := s.failure(); err != nil {
		return false, err
	}
	buf, err := protocol.AppendFrame(s.wbuf[:0], t, id, parts...)
	if err != nil {
		return false, err
	}
	// Under the write turn nobody else touches the deadline. A write blocked past ctx's deadline means the agent
	// stopped reading: the session is broken anyway.
	dl, _ := ctx.Deadline()
	_ = s.nc.SetWriteDeadline(dl)
	n, err := s.nc.Write(buf)
	if cap(buf) <= 64<<10 {
		s.wbuf = buf
	}
	if err != nil {
		s.fail(fmt.Errorf("%w: write %s: %w", ErrUnavailable, t, err))
		return n > 0, s.failure()
	}
	return true, nil
}

func (s *session) failure() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// chunk is one DATA frame's bytes waiting for the consumer.
type chunk struct {
	ch   protocol.Channel
	data []byte
}

// errStreamFinished means the agent answered while we were still sending on the stream (usually an error
// answer, for instance an upload refused before its end): the caller stops sending and reads the answer.
var errStreamFinished = errors.New("the agent answered before the input was complete")

// stream is the client's side of one request. The reader goroutine pushes into it without blocking (the window
// bounds what it can hold); the caller's goroutine consumes it with next or wait. Input (stdin, uploads) goes
// the other way with send, within the credit the agent grants.
type stream struct {
	id       uint32
	s        *session
	notify   chan struct{} // capacity 1: "something changed"
	finished chan struct{} // closed once the response (or a failure) is in

	mu       sync.Mutex
	queue    []chunk
	buffered int
	resp     *protocol.Response
	err      error
	closed   bool // finished is closed
	header   json.RawMessage
	gotData  bool
	consumed int // bytes consumed and not yet returned to the agent as credit
	pending  int // size of the chunk next returned last: consumed when next is called again

	sendCredit int64         // DATA bytes the agent still accepts from us on this stream
	sendWake   chan struct{} // closed (and replaced) when credit arrives
}

func newStream(s *session, id uint32, peerWindow uint32) *stream {
	return &stream{id: id, s: s, notify: make(chan struct{}, 1), finished: make(chan struct{}),
		sendCredit: int64(peerWindow), sendWake: make(chan struct{})}
}

func (st *stream) signal() {
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

func (st *stream) push(ch protocol.Channel, data []byte) error {
	st.mu.Lock()
	if st.buffered+len(data) > int(st.s.window) {
		st.mu.Unlock()
		return fmt.Errorf("stream %d: agent sent more than the %d-byte window", st.id, st.s.window)
	}
	st.queue = append(st.queue, chunk{ch: ch, data: data})
	st.buffered += len(data)
	st.gotData = true
	st.mu.Unlock()
	st.signal()
	return nil
}

// setHeader keeps the stream's HEADER: at most one, before any DATA.
func (st *stream) setHeader(payload []byte) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.header != nil || st.gotData {
		return fmt.Errorf("stream %d: HEADER after DATA or a second HEADER", st.id)
	}
	if len(payload) == 0 {
		payload = []byte("null")
	}
	st.header = payload
	st.signalLocked()
	return nil
}

func (st *stream) signalLocked() {
	select {
	case st.notify <- struct{}{}:
	default:
	}
}

func (st *stream) addSendCredit(n uint32) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.sendCredit += int64(n)
	if st.sendCredit > 2*protocol.MaxWindow {
		return fmt.Errorf("stream %d: agent granted %d bytes of credit, more than any window", st.id, st.sendCredit)
	}
	close(st.sendWake)
	st.sendWake = make(chan struct{})
	return nil
}

func (st *stream) closeFinishedLocked() {
	if !st.closed {
		st.closed = true
		close(st.finished)
	}
}

func (st *stream) finish(resp *protocol.Response) {
	st.mu.Lock()
	st.resp = resp
	st.closeFinishedLocked()
	st.mu.Unlock()
	st.signal()
}

func (st *stream) abort(err error) {
	st.mu.Lock()
	if st.resp == nil && st.err == nil {
		st.err = err
	}
	st.closeFinishedLocked()
	st.mu.Unlock()
	st.signal()
}

// send sends data as DATA frames on channel ch, waiting for credit as needed. It fails with errStreamFinished
// once the agent has answered, and with ctx's error.
func (st *stream) send(ctx context.Context, ch protocol.Channel, data []byte) error {
	chByte := []byte{byte(ch)}
	for len(data) > 0 {
		st.mu.Lock()
		for st.sendCredit <= 0 && !st.closed {
			wake := st.sendWake
			st.mu.Unlock()
			select {
			case <-wake:
			case <-st.finished:
			case <-ctx.Done():
				return ctx.Err()
			}
			st.mu.Lock()
		}
		if st.closed {
			st.mu.Unlock()
			return errStreamFinished
		}
		n := min(int64(len(data)), st.sendCredit, protocol.MaxDataSize)
		st.sendCredit -= n
		st.mu.Unlock()
		if _, err := st.s.write(ctx, protocol.FrameData, st.id, chByte, data[:n]); err != nil {
			return err
		}
		data = data[n:]
	}
	return nil
}

// sendEnd ends channel ch of our input.
func (st *stream) sendEnd(ctx context.Context, ch protocol.Channel) error {
	select {
	case <-st.finished:
		return errStreamFinished
	default:
	}
	_, err := st.s.write(ctx, protocol.FrameEnd, st.id, protocol.EndPayload(ch))
	return err
}

// next returns the stream's next chunk of data, or its response once every chunk has been consumed. The chunk
// returned by the previous call counts as consumed now, and credit for consumed data goes back to the agent in
// batches of a quarter window: fewer WINDOW frames, and the agent never starves. If ctx ends, the agent is told
// to stop.
func (st *stream) next(ctx context.Context) (chunk, *protocol.Response, error) {
	threshold := max(int(st.s.window)/4, 1)
	st.mu.Lock()
	st.consumed += st.pending
	st.pending = 0
	grant := 0
	if st.consumed >= threshold && st.resp == nil && st.err == nil {
		grant, st.consumed = st.consumed, 0
	}
	st.mu.Unlock()
	if grant > 0 {
		// A failure here fails the session, which aborts this stream: the loop below sees it.
		_, _ = st.s.write(ctx, protocol.FrameWindow, st.id, protocol.WindowPayload(uint32(grant)))
	}
	for {
		st.mu.Lock()
		if len(st.queue) > 0 {
			c := st.queue[0]
			st.queue[0] = chunk{}
			st.queue = st.queue[1:]
			st.buffered -= len(c.data)
			st.pending = len(c.data)
			st.mu.Unlock()
			return c, nil, nil
		}
		resp, err := st.resp, st.err
		st.mu.Unlock()
		if resp != nil {
			return chunk{}, resp, nil
		}
		if err != nil {
			return chunk{}, nil, err
		}
		select {
		case <-st.notify:
		case <-ctx.Done():
			st.cancel()
			return chunk{}, nil, ctx.Err()
		}
	}
}

// wait passes the stream's data to sink in order until the response. Every DATA frame precedes the RESPONSE
// on the wire, so the queue is empty when the response is returned. If ctx ends or sink fails, the agent is
// told to stop.
func (st *stream) wait(ctx context.Context, sink func(protocol.Channel, []byte) error) (*protocol.Response, error) {
	for {
		c, resp, err := st.next(ctx)
		if err != nil {
			return nil, err
		}
		if resp != nil {
			return resp, nil
		}
		if sink != nil {
			if err := sink(c.ch, c.data); err != nil {
				st.cancel()
				return nil, err
			}
		}
	}
}

// waitHeader waits for the stream's HEADER, or for its response if it ends without one (an error answer).
func (st *stream) waitHeader(ctx context.Context) (json.RawMessage, *protocol.Response, error) {
	for {
		st.mu.Lock()
		hdr, resp, err := st.header, st.resp, st.err
		st.mu.Unlock()
		switch {
		case hdr != nil:
			return hdr, nil, nil
		case resp != nil:
			return nil, resp, nil
		case err != nil:
			return nil, nil, err
		}
		select {
		case <-st.notify:
		case <-ctx.Done():
			st.cancel()
			return nil, nil, ctx.Err()
		}
	}
}

// cancel abandons the stream: the agent is told to stop its work, and whatever it still sends is ignored.
// The CANCEL is written in the background so that a caller whose ctx ended returns at once.
func (st *stream) cancel() {
	st.mu.Lock()
	finished := st.resp != nil || st.err != nil
	st.closeFinishedLocked() // stops our own senders
	st.mu.Unlock()
	st.s.remove(st.id)
	if finished {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), cancelTimeout)
		defer cancel()
		_, _ = st.s.write(ctx, protocol.FrameCancel, st.id)
	}()
}
