package transport

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/aetherium/aetherium/internal/agent"
)

// A virtio-serial port is one byte stream per VM, so connections are multiplexed over it with yamux (host:
// client, guest: server). The port outlives any one host connection: QEMU lets the host disconnect from the
// port's chardev and connect again, and the guest may not even notice in between (its reader only sees EOF if
// it looks while the host is away). So the two ends must agree where a yamux session starts, and must not
// trust anything left in the pipe from an earlier one. Before each session:
//
//	host  -> guest: "AETHERIUM-MUX/1 SYNC <id>\n"   (resent every muxResend until answered)
//	guest -> host:  "AETHERIUM-MUX/1 ACK <id>\n"
//
// where id is 16 random bytes in hex, new for every session. Both sides discard whatever precedes the line
// they wait for (the tail of an old session, a line cut in half), even on the same line. A guest still running an old session reads
// the SYNC as a bad yamux frame (yamux frames start with a zero version byte), ends that session and goes
// back to waiting; the resend reaches it there. The guest drops repeated SYNCs of the session it already
// answered before it hands the stream to yamux.
const (
	muxMagic   = "AETHERIUM-MUX/1"
	muxSync    = muxMagic + " SYNC "
	muxAck     = muxMagic + " ACK "
	muxIDLen   = 16
	muxMaxLine = 128
	// muxResend is how often the host repeats its SYNC while it waits.
	muxResend = 250 * time.Millisecond
	// muxPingTimeout bounds the liveness check of an existing session in Dial. A session that cannot answer a
	// ping in this long is dead (its peer restarted, or the VM is gone): yamux answers pings itself, without
	// waiting for any application.
	muxPingTimeout = 5 * time.Second
)

var errResync = errors.New("the host started a new session")

func yamuxConfig(log *slog.Logger) *yamux.Config {
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = nil
	cfg.Logger = yamuxLogger{log}
	// Keepalive pings find a dead peer (a restarted agent, a frozen VM) that a byte stream to QEMU cannot
	// report by itself; a missed pong closes the session after ConnectionWriteTimeout.
	cfg.KeepAliveInterval = 15 * time.Second
	return cfg
}

// yamuxLogger sends yamux's own log lines to slog at debug level: every error it logs also reaches us as an
// error from the session.
type yamuxLogger struct{ log *slog.Logger }

func (l yamuxLogger) Print(v ...any)                 { l.log.Debug(fmt.Sprint(v...)) }
func (l yamuxLogger) Printf(format string, v ...any) { l.log.Debug(fmt.Sprintf(format, v...)) }
func (l yamuxLogger) Println(v ...any)               { l.log.Debug(fmt.Sprint(v...)) }

// lineScanner finds a line in a stream of arbitrary bytes. The line may come glued to garbage without a
// newline in between (the tail of a yamux frame of an earlier session, a ping the peer sent before it
// restarted), so it matches the last occurrence of the prefix within a line, looking at the last 2*muxMaxLine
// bytes of each line at most. It keeps its partial line between calls, so a read interrupted by a deadline
// loses nothing.
type lineScanner struct {
	line []byte
}

// next reads from br until it completes a line that contains prefix, and returns what follows the prefix.
func (s *lineScanner) next(br *bufio.Reader, prefix string) (string, error) {
	for {
		b, err := br.ReadByte()
		if err != nil {
			return "", err
		}
		if b != '\n' {
			if len(s.line) >= 2*muxMaxLine {
				s.line = append(s.line[:0], s.line[muxMaxLine:]...)
			}
			s.line = append(s.line, b)
			continue
		}
		line := s.line
		s.line = s.line[:0]
		if i := bytes.LastIndex(line, []byte(prefix)); i >= 0 {
			return string(line[i+len(prefix):]), nil
		}
	}
}

func validMuxID(id string) bool {
	_, ok := decodeHex(id, muxIDLen)
	return ok
}

// bufConn is a byte stream whose reads go through a bufio.Reader that already holds its first bytes.
type bufConn struct {
	br *bufio.Reader
	io.Writer
	io.Closer
}

func (c *bufConn) Read(p []byte) (int, error) { return c.br.Read(p) }

// Multiplexed returns a Dialer whose every Dial is a new yamux stream over one byte stream to the guest (a
// virtio-serial port, which QEMU exposes on the host as a Unix socket chardev), made by open. The session is
// made on first use and made again, with a new open, when the byte stream breaks or the guest stops
// answering. The io.Closer ends the session and every stream on it.
func Multiplexed(open func(ctx context.Context) (net.Conn, error)) (agent.Dialer, io.Closer) {
	m := newMuxDialer(open, nil)
	return m.Dial, m
}

// MultiplexedWithLogger is Multiplexed with the session's events logged to log.
func MultiplexedWithLogger(open func(ctx context.Context) (net.Conn, error), log *slog.Logger) (agent.Dialer, io.Closer) {
	m := newMuxDialer(open, log)
	return m.Dial, m
}

func newMuxDialer(open func(ctx context.Context) (net.Conn, error), log *slog.Logger) *muxDialer {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &muxDialer{open: open, log: log, sem: make(chan struct{}, 1), pingTimeout: muxPingTimeout}
}

type muxDialer struct {
	open        func(ctx context.Context) (net.Conn, error)
	log         *slog.Logger
	sem         chan struct{} // held while (re)connecting, so that concurrent Dials share one session
	pingTimeout time.Duration

	mu     sync.Mutex
	sess   *yamux.Session
	closed bool
}

// Dial opens a stream on the live session, or makes a session first.
func (m *muxDialer) Dial(ctx context.Context) (net.Conn, error) {
	for attempt := 0; ; attempt++ {
		sess, fresh, err := m.session(ctx)
		if err != nil {
			return nil, err
		}
		if !fresh {
			if err := m.ping(ctx, sess); err != nil {
				if cerr := ctx.Err(); cerr != nil {
					return nil, fmt.Errorf("multiplexed: check session: %w", cerr)
				}
				m.log.Info("multiplexed session is dead; reconnecting", "err", err)
				m.drop(sess)
				continue
			}
		}
		st, err := sess.OpenStream()
		if err != nil {
			m.drop(sess)
			if attempt == 0 {
				continue // the session died between the check and the open: one new session is worth a try
			}
			return nil, fmt.Errorf("multiplexed: open stream: %w", err)
		}
		return st, nil
	}
}

func (m *muxDialer) ping(ctx context.Context, sess *yamux.Session) error {
	errc := make(chan error, 1)
	go func() {
		_, err := sess.Ping()
		errc <- err
	}()
	t := time.NewTimer(m.pingTimeout)
	defer t.Stop()
	select {
	case err := <-errc:
		return err
	case <-t.C:
		return errors.New("no answer to a ping")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// session returns the live session, or connects; fresh says the session was made by this call.
func (m *muxDialer) session(ctx context.Context) (sess *yamux.Session, fresh bool, err error) {
	select {
	case m.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, false, fmt.Errorf("multiplexed: waiting for the session: %w", ctx.Err())
	}
	defer func() { <-m.sem }()
	m.mu.Lock()
	closed, cur := m.closed, m.sess
	m.mu.Unlock()
	if closed {
		return nil, false, fmt.Errorf("multiplexed: %w", net.ErrClosed)
	}
	if cur != nil && !cur.IsClosed() {
		return cur, false, nil
	}
	sess, err = m.connect(ctx)
	if err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		_ = sess.Close()
		return nil, false, fmt.Errorf("multiplexed: %w", net.ErrClosed)
	}
	m.sess = sess
	return sess, true, nil
}

func (m *muxDialer) connect(ctx context.Context) (*yamux.Session, error) {
	nc, err := m.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("multiplexed: open byte stream: %w", err)
	}
	br, err := hostSync(ctx, nc)
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("multiplexed: %w", err)
	}
	sess, err := yamux.Client(&bufConn{br: br, Writer: nc, Closer: nc}, yamuxConfig(m.log))
	if err != nil {
		_ = nc.Close()
		return nil, fmt.Errorf("multiplexed: %w", err)
	}
	m.log.Debug("multiplexed session up")
	return sess, nil
}

// hostSync sends SYNC lines on nc until the guest answers, bounded by ctx, and returns the reader to run yamux
// on (it may hold bytes read past the ACK).
func hostSync(ctx context.Context, nc net.Conn) (*bufio.Reader, error) {
	var raw [muxIDLen]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	id := hex.EncodeToString(raw[:])
	syncLine := []byte(muxSync + id + "\n")
	br := bufio.NewReader(nc)
	var sc lineScanner
	stop := context.AfterFunc(ctx, func() { _ = nc.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	for {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("no answer from the guest agent: %w", err)
		}
		round := time.Now().Add(muxResend)
		if dl, ok := ctx.Deadline(); ok && dl.Before(round) {
			round = dl
		}
		if err := nc.SetDeadline(round); err != nil {
			return nil, err
		}
		if _, err := nc.Write(syncLine); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				continue // the guest is not reading yet; its buffer filled up
			}
			return nil, fmt.Errorf("send SYNC: %w", err)
		}
		for {
			got, err := sc.next(br, muxAck)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break // resend
			}
			if err != nil {
				return nil, fmt.Errorf("wait for the guest's ACK: %w", err)
			}
			if got == id {
				if stop() {
					if err := nc.SetDeadline(time.Time{}); err != nil {
						return nil, err
					}
					return br, nil
				}
				return nil, fmt.Errorf("no answer from the guest agent: %w", context.Cause(ctx))
			}
			// An ACK of an earlier attempt: keep waiting for ours.
		}
	}
}

// Close ends the session; Dial fails from now on.
func (m *muxDialer) Close() error {
	m.mu.Lock()
	m.closed = true
	sess := m.sess
	m.sess = nil
	m.mu.Unlock()
	if sess != nil {
		return sess.Close()
	}
	return nil
}

func (m *muxDialer) drop(sess *yamux.Session) {
	m.mu.Lock()
	if m.sess == sess {
		m.sess = nil
	}
	m.mu.Unlock()
	_ = sess.Close()
}

// MuxAddr is the address of a MuxListener.
type MuxAddr struct{ Name string }

// Network returns "mux".
func (MuxAddr) Network() string { return "mux" }

func (a MuxAddr) String() string { return a.Name }

// MuxListener is the guest side of Multiplexed: a net.Listener of the yamux streams that the host opens over a
// byte stream, re-synchronised whenever the host reconnects. Serve it with server.Server.Serve.
type MuxListener struct {
	open    func(ctx context.Context) (io.ReadWriteCloser, error)
	onClose func() error // releases what open used, after the last session
	log     *slog.Logger
	addr    net.Addr

	ctx     context.Context
	cancel  context.CancelFunc
	streams chan net.Conn
	done    chan struct{}

	mu  sync.Mutex
	cur io.ReadWriteCloser // the byte stream in use, closed by Close to interrupt a read
}

// ServeMultiplexed runs the guest side of the multiplexed transport over the byte streams that open returns:
// one at a time, a new one whenever the last ended (EOF, a read error, a broken session). open may block until
// a stream is available, and should return when ctx ends. Reading EOF before the host's SYNC means that the
// host is not connected (virtio-serial reads 0 bytes at once then): the stream is closed and open is called
// again after a short back-off.
func ServeMultiplexed(open func(ctx context.Context) (io.ReadWriteCloser, error), name string, log *slog.Logger) *MuxListener {
	return serveMultiplexed(open, name, log, nil)
}

func serveMultiplexed(open func(ctx context.Context) (io.ReadWriteCloser, error), name string, log *slog.Logger, onClose func() error) *MuxListener {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	l := &MuxListener{
		open:    open,
		onClose: onClose,
		log:     log,
		addr:    MuxAddr{Name: name},
		ctx:     ctx,
		cancel:  cancel,
		streams: make(chan net.Conn),
		done:    make(chan struct{}),
	}
	go l.run()
	return l
}

// Accept returns the next stream the host opened.
func (l *MuxListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.streams:
		return c, nil
	case <-l.ctx.Done():
		return nil, net.ErrClosed
	}
}

// Addr names the byte stream.
func (l *MuxListener) Addr() net.Addr { return l.addr }

// Close stops serving: the session and the byte stream are closed, and so are the streams on them.
func (l *MuxListener) Close() error {
	l.cancel()
	l.mu.Lock()
	if l.cur != nil {
		_ = l.cur.Close()
	}
	l.mu.Unlock()
	<-l.done
	if l.onClose != nil {
		return l.onClose()
	}
	return nil
}

func (l *MuxListener) setCurrent(rwc io.ReadWriteCloser) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.ctx.Err() != nil {
		return false
	}
	l.cur = rwc
	return true
}

func (l *MuxListener) run() {
	defer close(l.done)
	const minBackoff, maxBackoff = 5 * time.Millisecond, 100 * time.Millisecond
	backoff := time.Duration(0)
	waiting := false  // logged "waiting for the host" already
	lastOpenErr := "" // the open error logged last
	for l.ctx.Err() == nil {
		if backoff > 0 {
			select {
			case <-time.After(backoff):
			case <-l.ctx.Done():
				return
			}
		}
		backoff = min(max(2*backoff, minBackoff), maxBackoff)

		rwc, err := l.open(l.ctx)
		if err != nil {
			if l.ctx.Err() == nil {
				// Said once at warning level: it is retried every second and would flood the console.
				level := slog.LevelDebug
				if msg := err.Error(); msg != lastOpenErr {
					level, lastOpenErr = slog.LevelWarn, msg
				}
				l.log.Log(l.ctx, level, "multiplexed transport: cannot open the byte stream; retrying", "addr", l.addr, "err", err)
				backoff = time.Second
			}
			continue
		}
		lastOpenErr = ""
		if !l.setCurrent(rwc) {
			_ = rwc.Close()
			return
		}
		br := bufio.NewReader(rwc)
		id, err := (&lineScanner{}).next(br, muxSync)
		for err == nil && !validMuxID(id) {
			id, err = (&lineScanner{}).next(br, muxSync)
		}
		if err != nil {
			_ = rwc.Close()
			if errors.Is(err, io.EOF) && !waiting {
				waiting = true
				l.log.Info("multiplexed transport: waiting for the host to connect", "addr", l.addr)
			} else if !errors.Is(err, io.EOF) && l.ctx.Err() == nil {
				l.log.Warn("multiplexed transport: read failed", "addr", l.addr, "err", err)
			}
			continue
		}
		waiting = false
		if _, err := rwc.Write([]byte(muxAck + id + "\n")); err != nil {
			_ = rwc.Close()
			l.log.Warn("multiplexed transport: cannot answer the host", "addr", l.addr, "err", err)
			continue
		}
		// A SYNC repeated by the host before it saw our ACK may still be in the pipe: guestReader drops it
		// before yamux sees it.
		conn := &struct {
			io.Reader
			io.Writer
			io.Closer
		}{&guestReader{br: br, id: id}, rwc, rwc}
		sess, err := yamux.Server(conn, yamuxConfig(l.log))
		if err != nil {
			_ = rwc.Close()
			l.log.Error("multiplexed transport: yamux", "err", err)
			return
		}
		err = l.serveSession(sess)
		_ = sess.Close()
		_ = rwc.Close()
		if l.ctx.Err() == nil {
			l.log.Info("multiplexed transport: session ended; waiting for the host", "addr", l.addr, "err", err)
			backoff = 0
		}
	}
}

// serveSession hands the session's streams to Accept until the session ends.
func (l *MuxListener) serveSession(sess *yamux.Session) error {
	l.log.Info("multiplexed transport: host connected", "addr", l.addr)
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			return err
		}
		select {
		case l.streams <- st:
		case <-l.ctx.Done():
			_ = st.Close()
			return l.ctx.Err()
		}
	}
}

// guestReader is the guest session's input: it drops the repeats of the SYNC it answered, which the host may
// have sent before our ACK reached it, then passes everything through to yamux. Any other line there is a new
// host session (the host reconnected at once): the session ends, and the host's next SYNC starts another.
type guestReader struct {
	br      *bufio.Reader
	id      string
	started bool
}

func (r *guestReader) Read(p []byte) (int, error) {
	for !r.started {
		b, err := r.br.Peek(1)
		if err != nil {
			return 0, err
		}
		if b[0] != muxMagic[0] { // a yamux frame starts with its version, 0
			r.started = true
			break
		}
		line, err := readLine(r.br, muxMaxLine)
		if err != nil {
			return 0, err
		}
		if line != muxSync+r.id {
			return 0, errResync
		}
	}
	return r.br.Read(p)
}
