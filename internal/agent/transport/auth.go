package transport

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
)

// The authentication preamble that TCP connections run before the agent protocol. The agent speaks first:
//
//	agent -> host:  "AETHERIUM-AGENT-AUTH/1 <agent nonce>\n"
//	host  -> agent: "AUTH <host nonce> <host proof>\n"
//	agent -> host:  "OK <agent proof>\n"       (or "DENIED\n", and the agent closes the connection)
//
// Nonces are 32 random bytes, proofs HMAC-SHA256 under the VM's token, all in lower-case hex:
//
//	host proof  = HMAC(token, "aetherium agent auth v1 host\x00"  || agent nonce || host nonce)
//	agent proof = HMAC(token, "aetherium agent auth v1 agent\x00" || agent nonce || host nonce)
//
// Why this shape: the token itself never crosses the wire, so a recorded exchange is worth nothing later
// (the agent's nonce is fresh for every connection) and nothing to another VM (each VM has its own token).
// The agent's proof lets the host check that it reached the VM it meant to, not whatever took over the
// address (a recycled IP, a forwarded port left behind). The two proofs are domain-separated, so neither side
// can reflect the other's proof back at it.
const (
	authGreeting = "AETHERIUM-AGENT-AUTH/1"
	authNonceLen = 32
	// authMaxLine bounds every preamble line (the longest is "AUTH " + 2*64 hex digits + a space).
	authMaxLine = 256

	hostLabel  = "aetherium agent auth v1 host\x00"
	agentLabel = "aetherium agent auth v1 agent\x00"

	// MinTokenLen is the shortest token accepted: a token is a machine-made secret (32 random bytes in hex
	// is the intended form), never a password a person picks.
	MinTokenLen = 16
	// maxTokenLen bounds token files, so that a wrong path (a disk image) is refused rather than read.
	maxTokenLen = 4096
)

// ErrAuth is returned when authentication fails: the agent rejected the host's proof (wrong token), or the
// peer's own proof was wrong (not the agent this token belongs to).
var ErrAuth = errors.New("agent authentication failed")

// ErrHandshake is returned when the peer does not speak the expected preamble at all.
var ErrHandshake = errors.New("unexpected transport handshake")

// CheckToken reports whether token is usable as a per-VM secret.
func CheckToken(token string) error {
	switch {
	case len(token) < MinTokenLen:
		return fmt.Errorf("agent token too short: %d bytes, want at least %d (use 32 random bytes in hex)", len(token), MinTokenLen)
	case len(token) > maxTokenLen:
		return fmt.Errorf("agent token too long: %d bytes", len(token))
	case strings.ContainsAny(token, " \t\r\n"):
		return errors.New("agent token contains white space")
	}
	return nil
}

// LoadToken reads a token from a file, or from a block device that holds only the token (surrounding white
// space, such as a final newline, and NUL padding are dropped).
func LoadToken(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("agent token: %w", err)
	}
	defer f.Close()
	// Read one byte past the limit so that an oversized file is refused, not cut.
	b, err := io.ReadAll(io.LimitReader(f, maxTokenLen+64))
	if err != nil {
		return "", fmt.Errorf("agent token %s: %w", path, err)
	}
	// A token on a raw block device (a tiny read-only disk made for the VM) is followed by NUL padding.
	token := strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
	if err := CheckToken(token); err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	return token, nil
}

func proof(token, label string, agentNonce, hostNonce []byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(label))
	m.Write(agentNonce)
	m.Write(hostNonce)
	return m.Sum(nil)
}

func newNonce() ([]byte, error) {
	n := make([]byte, authNonceLen)
	if _, err := rand.Read(n); err != nil {
		return nil, fmt.Errorf("nonce: %w", err)
	}
	return n, nil
}

// decodeHex decodes a field of exactly n bytes.
func decodeHex(field string, n int) ([]byte, bool) {
	if len(field) != 2*n {
		return nil, false
	}
	b, err := hex.DecodeString(field)
	return b, err == nil
}

// AuthenticateHost runs the host's side of the preamble on a fresh connection to the agent, bounded by ctx.
// When it returns nil, the agent is proven to hold token and the connection carries the agent protocol.
func AuthenticateHost(ctx context.Context, nc net.Conn, token string) error {
	if err := CheckToken(token); err != nil {
		return err
	}
	return withDeadline(ctx, nc, func() error {
		line, err := readLine(nc, authMaxLine)
		if err != nil {
			return fmt.Errorf("%w: read agent greeting: %w", ErrHandshake, err)
		}
		greeting, nonceHex, _ := strings.Cut(line, " ")
		agentNonce, ok := decodeHex(nonceHex, authNonceLen)
		if greeting != authGreeting || !ok {
			return fmt.Errorf("%w: agent greeting %q, want %q and a nonce", ErrHandshake, truncate(line), authGreeting)
		}
		hostNonce, err := newNonce()
		if err != nil {
			return err
		}
		msg := "AUTH " + hex.EncodeToString(hostNonce) + " " +
			hex.EncodeToString(proof(token, hostLabel, agentNonce, hostNonce)) + "\n"
		if _, err := nc.Write([]byte(msg)); err != nil {
			return fmt.Errorf("send credentials: %w", err)
		}
		line, err = readLine(nc, authMaxLine)
		if err != nil {
			return fmt.Errorf("%w: read agent answer: %w", ErrHandshake, err)
		}
		if line == "DENIED" {
			return fmt.Errorf("%w: the agent rejected our proof (wrong token for this VM?)", ErrAuth)
		}
		word, proofHex, _ := strings.Cut(line, " ")
		got, ok := decodeHex(proofHex, sha256.Size)
		if word != "OK" || !ok {
			return fmt.Errorf("%w: agent answer %q", ErrHandshake, truncate(line))
		}
		if !hmac.Equal(got, proof(token, agentLabel, agentNonce, hostNonce)) {
			return fmt.Errorf("%w: the peer accepted us but cannot prove it holds the token: not the agent of this VM", ErrAuth)
		}
		return nil
	})
}

// AuthenticateAgent runs the agent's side of the preamble on an accepted connection within timeout. On failure
// it has told the peer DENIED (when it got that far); the caller closes the connection.
func AuthenticateAgent(nc net.Conn, token string, timeout time.Duration) error {
	if err := CheckToken(token); err != nil {
		return err
	}
	if err := nc.SetDeadline(time.Now().Add(timeout)); err != nil {
		return fmt.Errorf("set deadline: %w", err)
	}
	agentNonce, err := newNonce()
	if err != nil {
		return err
	}
	if _, err := nc.Write([]byte(authGreeting + " " + hex.EncodeToString(agentNonce) + "\n")); err != nil {
		return fmt.Errorf("send greeting: %w", err)
	}
	line, err := readLine(nc, authMaxLine)
	if err != nil {
		return fmt.Errorf("%w: read credentials: %w", ErrHandshake, err)
	}
	fields := strings.Split(line, " ")
	var hostNonce, got []byte
	ok := len(fields) == 3 && fields[0] == "AUTH"
	if ok {
		hostNonce, ok = decodeHex(fields[1], authNonceLen)
	}
	if ok {
		got, ok = decodeHex(fields[2], sha256.Size)
	}
	if !ok {
		_, _ = nc.Write([]byte("DENIED\n"))
		return fmt.Errorf("%w: credentials line %q", ErrHandshake, truncate(line))
	}
	if !hmac.Equal(got, proof(token, hostLabel, agentNonce, hostNonce)) {
		_, _ = nc.Write([]byte("DENIED\n"))
		return fmt.Errorf("%w: wrong proof", ErrAuth)
	}
	if _, err := nc.Write([]byte("OK " + hex.EncodeToString(proof(token, agentLabel, agentNonce, hostNonce)) + "\n")); err != nil {
		return fmt.Errorf("send OK: %w", err)
	}
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clear deadline: %w", err)
	}
	return nil
}

func truncate(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// TCPDialer dials the agent at addr over TCP and authenticates with token (see AuthenticateHost).
func TCPDialer(addr, token string) agent.Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		nc, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		if err := AuthenticateHost(ctx, nc, token); err != nil {
			_ = nc.Close()
			return nil, fmt.Errorf("agent at %s: %w", addr, err)
		}
		return nc, nil
	}
}

// AuthConfig configures an AuthListener. The zero value works.
type AuthConfig struct {
	// HandshakeTimeout bounds each connection's preamble (default 3s: it takes milliseconds between a host and
	// its guests, and a short bound limits how long a silent connection holds a slot).
	HandshakeTimeout time.Duration
	// MaxPending bounds the connections in the preamble at once (default 64); more are closed at once, so
	// that a flood of idle connections costs a bounded amount.
	MaxPending int
	// MaxPendingPerSource bounds the preambles in progress from one IP address (default 8), so that one peer
	// (another VM on the bridge, say) cannot take every slot and lock the host out.
	MaxPendingPerSource int
	// Logger receives failed attempts; nil discards them.
	Logger *slog.Logger
}

// AuthListener is a net.Listener whose Accept returns only connections that passed the preamble, with the
// agent protocol next on the wire. Each preamble runs in its own goroutine under a deadline, so a slow or
// silent client never holds up Accept.
type AuthListener struct {
	inner net.Listener
	token string
	cfg   AuthConfig
	log   *slog.Logger

	ready   chan net.Conn
	done    chan struct{}
	failed  chan struct{} // closed when inner.Accept fails for good; err says why
	err     error
	pending chan struct{} // a slot per preamble in progress

	mu       sync.Mutex
	conns    map[net.Conn]struct{} // in the preamble, closed by Close
	bySource map[string]int        // preambles in progress per remote IP
	wg       sync.WaitGroup
	once     sync.Once
}

// ListenTCPAuth listens on the TCP address addr and authenticates every connection with token.
func ListenTCPAuth(addr, token string, cfg AuthConfig) (*AuthListener, error) {
	if err := CheckToken(token); err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return NewAuthListener(l, token, cfg)
}

// NewAuthListener authenticates the connections of inner, which it owns from now on.
func NewAuthListener(inner net.Listener, token string, cfg AuthConfig) (*AuthListener, error) {
	if err := CheckToken(token); err != nil {
		_ = inner.Close()
		return nil, err
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 3 * time.Second
	}
	if cfg.MaxPendingPerSource <= 0 {
		cfg.MaxPendingPerSource = 8
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 64
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	l := &AuthListener{
		inner:   inner,
		token:   token,
		cfg:     cfg,
		log:     log,
		ready:   make(chan net.Conn),
		done:    make(chan struct{}),
		failed:  make(chan struct{}),
		pending: make(chan struct{}, cfg.MaxPending),
		conns:   make(map[net.Conn]struct{}),

		bySource: make(map[string]int),
	}
	l.wg.Add(1)
	go l.acceptLoop()
	return l, nil
}

func (l *AuthListener) acceptLoop() {
	defer l.wg.Done()
	var backoff time.Duration
	for {
		nc, err := l.inner.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				l.log.Warn("accept failed, retrying", "err", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
					continue
				case <-l.done:
					return
				}
			}
			l.err = err
			close(l.failed)
			return
		}
		backoff = 0
		select {
		case l.pending <- struct{}{}:
		default:
			l.log.Warn("too many connections in the auth preamble; dropping one", "remote", nc.RemoteAddr(), "max", l.cfg.MaxPending)
			_ = nc.Close()
			continue
		}
		tracked, overSource := l.track(nc)
		if !tracked {
			<-l.pending
			_ = nc.Close()
			if overSource {
				l.log.Warn("too many connections in the auth preamble from one source; dropping one",
					"remote", nc.RemoteAddr(), "max", l.cfg.MaxPendingPerSource)
				continue
			}
			return
		}
		l.wg.Add(1)
		go l.authenticate(nc)
	}
}

// track registers nc as in the preamble. It refuses it once the listener is closed (tracked and overSource
// false) or when its source already has MaxPendingPerSource preambles in progress (overSource true).
func (l *AuthListener) track(nc net.Conn) (tracked, overSource bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.conns == nil {
		return false, false
	}
	src := sourceOf(nc)
	if l.bySource[src] >= l.cfg.MaxPendingPerSource {
		return false, true
	}
	l.bySource[src]++
	l.conns[nc] = struct{}{}
	return true, false
}

func (l *AuthListener) untrack(nc net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, nc)
	src := sourceOf(nc)
	if l.bySource[src]--; l.bySource[src] <= 0 {
		delete(l.bySource, src)
	}
}

// sourceOf is the IP address a connection comes from (the whole address for other kinds of sockets).
func sourceOf(nc net.Conn) string {
	addr := nc.RemoteAddr()
	if addr == nil {
		return ""
	}
	if host, _, err := net.SplitHostPort(addr.String()); err == nil {
		return host
	}
	return addr.String()
}

func (l *AuthListener) authenticate(nc net.Conn) {
	defer l.wg.Done()
	err := AuthenticateAgent(nc, l.token, l.cfg.HandshakeTimeout)
	l.untrack(nc)
	<-l.pending
	if err != nil {
		select {
		case <-l.done: // closed under it: not worth a warning
		default:
			l.log.Warn("rejected an unauthenticated connection", "remote", nc.RemoteAddr(), "err", err)
		}
		_ = nc.Close()
		return
	}
	select {
	case l.ready <- nc:
	case <-l.done:
		_ = nc.Close()
	}
}

// Accept returns the next authenticated connection.
func (l *AuthListener) Accept() (net.Conn, error) {
	select {
	case nc := <-l.ready:
		return nc, nil
	case <-l.done:
		return nil, net.ErrClosed
	case <-l.failed:
		return nil, l.err
	}
}

// Close stops listening, closes the connections still in the preamble, and waits for its goroutines.
func (l *AuthListener) Close() error {
	var err error
	l.once.Do(func() {
		close(l.done)
		err = l.inner.Close()
		l.mu.Lock()
		for nc := range l.conns {
			_ = nc.Close()
		}
		l.conns = nil
		l.mu.Unlock()
		l.wg.Wait()
	})
	return err
}

// Addr is the listening address.
func (l *AuthListener) Addr() net.Addr { return l.inner.Addr() }

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
