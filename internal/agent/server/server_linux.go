//go:build linux

package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("agent server: closed")

// Config configures a Server. The zero value works.
type Config struct {
	// Version is the agent's software version, reported in HELLO and by "health".
	Version string
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Reaper, when set, starts every command so that the reaper never takes a command's exit status. Set it
	// when the process is PID 1 and runs Reaper.Run.
	Reaper *Reaper
	// HandshakeTimeout bounds how long a new connection may take to send its HELLO (default 10s).
	HandshakeTimeout time.Duration
	// PipeGrace is how long output is still read after a command's main process exits, for background
	// processes that keep its stdout or stderr open (default 1s).
	PipeGrace time.Duration
	// MaxStreams bounds the concurrent requests of one connection (default 1024).
	MaxStreams int
	// Window is the per-stream receive window announced to clients (0: protocol.DefaultWindow): how much input
	// (stdin, uploads) one stream may have in flight.
	Window uint32
	// PowerOff, when set, is called after the agent has answered a "poweroff" request; the agent main sets it
	// (guestinit.PowerOff or guestinit.Reboot) when it is PID 1 of a VM. When nil the request is unknown.
	PowerOff func() error
	// ProcessOutputBytes is how much of each output stream is kept for a background process (0:
	// agent.DefaultProcessOutputBytes).
	ProcessOutputBytes int
	// MaxProcesses bounds the processes kept in the background (running, or exited and not removed); when it is
	// reached the oldest exited ones are forgotten, and a new one is refused if all run (default 256).
	MaxProcesses int
	// FinishedProcessTTL is how long an exited background process is kept for its result and output (default 1h).
	FinishedProcessTTL time.Duration
	// PasswdFile and GroupFile are where user and group names are resolved (default /etc/passwd, /etc/group).
	PasswdFile string
	GroupFile  string
}

// Server serves the agent protocol.
type Server struct {
	cfg      Config
	log      *slog.Logger
	starter  starter
	handlers map[string]handler
	procs    *procTable

	// ctx is the parent of every connection; Close cancels it, which kills every running command.
	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	active    int // requests being served, for Shutdown
	connWG    sync.WaitGroup
}

// New returns a Server.
func New(cfg Config) *Server {
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 10 * time.Second
	}
	if cfg.PipeGrace <= 0 {
		cfg.PipeGrace = time.Second
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = 1024
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	if cfg.ProcessOutputBytes <= 0 {
		cfg.ProcessOutputBytes = agent.DefaultProcessOutputBytes
	}
	if cfg.MaxProcesses <= 0 {
		cfg.MaxProcesses = 256
	}
	if cfg.FinishedProcessTTL <= 0 {
		cfg.FinishedProcessTTL = time.Hour
	}
	if cfg.PasswdFile == "" {
		cfg.PasswdFile = defaultPasswdFile
	}
	if cfg.GroupFile == "" {
		cfg.GroupFile = defaultGroupFile
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		cfg:       cfg,
		log:       log,
		starter:   plainStarter{},
		ctx:       ctx,
		cancel:    cancel,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*conn]struct{}),
	}
	if cfg.Reaper != nil {
		s.starter = cfg.Reaper
	}
	s.handlers = s.buildHandlers()
	s.procs = newProcTable(cfg.MaxProcesses, cfg.FinishedProcessTTL)
	return s
}

// Serve accepts connections on l and serves each in its own goroutine until Shutdown or Close, then returns
// ErrServerClosed. It closes l when it returns.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = l.Close()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
		_ = l.Close()
	}()

	var backoff time.Duration
	for {
		nc, err := l.Accept()
		if err != nil {
			if s.isClosed() {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, os.ErrDeadlineExceeded) || isTemporary(err) {
				// Out of file descriptors and the like: back off instead of spinning, as net/http does.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("accept failed, retrying", "err", err, "backoff", backoff)
				select {
				case <-time.After(backoff):
				case <-s.ctx.Done():
				}
				continue
			}
			return fmt.Errorf("agent server: accept: %w", err)
		}
		backoff = 0
		go s.ServeConn(nc)
	}
}

// ServeConn serves one connection until it ends; it closes nc. Transports without a listener (a virtio-serial
// port) call it directly.
func (s *Server) ServeConn(nc net.Conn) {
	c := newConn(s, nc)
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	// Added under mu while not closed, so it always happens before Close's Wait.
	s.connWG.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.connWG.Done()
	}()
	c.serve()
}

// Shutdown stops accepting connections and new requests, waits for the requests being served to finish or for
// ctx to end, then closes everything like Close (killing the commands still running).
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopAccepting()
	// Polled, as net/http does: requests end rarely enough that a 10ms tick costs nothing.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var err error
	for n := s.activeRequests(); n > 0; n = s.activeRequests() {
		select {
		case <-tick.C:
			continue
		case <-ctx.Done():
			err = fmt.Errorf("agent server: shutdown with %d requests still running: %w", n, ctx.Err())
		}
		break
	}
	return errors.Join(err, s.Close())
}

func (s *Server) activeRequests() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.active
}

// Close closes the listeners and every connection and kills every running command, background processes
// included. It waits until the connection goroutines and the processes are done.
func (s *Server) Close() error {
	s.stopAccepting()
	s.cancel()
	s.mu.Lock()
	for c := range s.conns {
		_ = c.nc.Close()
	}
	s.mu.Unlock()
	s.connWG.Wait()
	s.procs.wait()
	return nil
}

func (s *Server) stopAccepting() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for l := range s.listeners {
		_ = l.Close()
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// beginRequest counts a request for Shutdown; it fails once the server is shutting down.
func (s *Server) beginRequest() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.active++
	return true
}

func (s *Server) endRequest() {
	s.mu.Lock()
	s.active--
	s.mu.Unlock()
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}
