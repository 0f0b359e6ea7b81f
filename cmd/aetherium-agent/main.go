//go:build linux

// Command aetherium-agent is the guest agent: it runs inside every VM (and as the entrypoint of Docker
// sandboxes), listens for the host on a Unix socket, and runs commands for it over the protocol of
// internal/agent/protocol. Build it static (CGO_ENABLED=0) so that it runs in any guest image:
//
//	CGO_ENABLED=0 go build -ldflags "-X main.version=1.2.3" ./cmd/aetherium-agent
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const defaultListen = "unix:/run/aetherium/agent.sock"

func main() {
	// SIGTERM is how Docker (docker stop) and init systems ask us to go; as PID 1 we only get it because we
	// install a handler.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole agent; it returns the exit code. ctx ending is the request to shut down.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("aetherium-agent", flag.ContinueOnError)
	fl.SetOutput(stderr)
	listen := fl.String("listen", envOr("AETHERIUM_AGENT_LISTEN", defaultListen),
		`where to listen: "unix:/path" or, for loopback tests only, "tcp:127.0.0.1:port" (env AETHERIUM_AGENT_LISTEN)`)
	showVersion := fl.Bool("version", false, "print the version and exit")
	logLevel := fl.String("log-level", envOr("AETHERIUM_AGENT_LOG_LEVEL", "info"), "debug, info, warn or error (env AETHERIUM_AGENT_LOG_LEVEL)")
	grace := fl.Duration("shutdown-grace", 5*time.Second, "on SIGTERM, how long running commands may finish before they are killed")
	if err := fl.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "aetherium-agent: unexpected arguments %q\n", fl.Args())
		return 2
	}
	if *showVersion {
		fmt.Fprintln(stdout, "aetherium-agent", version)
		return 0
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		fmt.Fprintf(stderr, "aetherium-agent: bad --log-level: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	l, err := listenOn(*listen)
	if err != nil {
		log.Error("cannot listen", "listen", *listen, "err", err)
		return 1
	}

	pid1 := os.Getpid() == 1
	var reaper *server.Reaper
	reaperDone := make(chan struct{})
	rctx, stopReaper := context.WithCancel(context.Background())
	defer func() {
		stopReaper()
		<-reaperDone
	}()
	if pid1 {
		// Orphans of every command are re-parented to us; nobody else would reap them.
		reaper = server.NewReaper(log)
		go func() {
			defer close(reaperDone)
			_ = reaper.Run(rctx)
		}()
	} else {
		close(reaperDone)
	}

	srv := server.New(server.Config{Version: version, Logger: log, Reaper: reaper})
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	log.Info("agent listening", "listen", *listen, "version", version, "pid", os.Getpid(), "pid1", pid1)

	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", *grace)
		sctx, cancel := context.WithTimeout(context.Background(), *grace)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("commands killed at shutdown", "err", err)
		}
		<-served
		log.Info("agent stopped")
		return 0
	case err := <-served:
		_ = srv.Close()
		log.Error("serve failed", "err", err)
		return 1
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parseListen splits "unix:/path" or "tcp:host:port".
func parseListen(s string) (network, address string, err error) {
	scheme, addr, ok := strings.Cut(s, ":")
	if !ok {
		return "", "", fmt.Errorf("listen address %q: want unix:/path or tcp:127.0.0.1:port", s)
	}
	switch scheme {
	case "unix":
		if !filepath.IsAbs(addr) {
			return "", "", fmt.Errorf("listen address %q: the socket path must be absolute", s)
		}
		return "unix", filepath.Clean(addr), nil
	case "tcp":
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return "", "", fmt.Errorf("listen address %q: %w", s, err)
		}
		// The protocol has no authentication yet: whoever connects runs commands as the agent's user (root).
		// Over a Unix socket the file's mode guards it; over TCP nothing does, so TCP is only for tests on the
		// loopback interface. Host names are refused too: only an address literal says where we really listen.
		if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
			return "", "", fmt.Errorf("listen address %q: refusing TCP on a non-loopback address (TCP has no authentication; it is for loopback tests only)", s)
		}
		return "tcp", addr, nil
	}
	return "", "", fmt.Errorf("listen address %q: unknown scheme %q (want unix or tcp)", s, scheme)
}

func listenOn(s string) (net.Listener, error) {
	network, addr, err := parseListen(s)
	if err != nil {
		return nil, err
	}
	if network == "unix" {
		return listenUnix(addr)
	}
	return net.Listen(network, addr)
}

// listenUnix listens on a socket file only the owner can use. A stale socket left by a crashed agent is
// removed; a live one (another agent answers) or a file that is not a socket is left alone and is an error.
func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case err == nil && fi.Mode()&fs.ModeSocket == 0:
		return nil, fmt.Errorf("%s exists and is not a socket; not removing it", path)
	case err == nil:
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("%s: another process is listening on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	// Create the socket with mode 0600 from the start (the umask applies to bind), rather than chmod it after
	// and leave a moment in which anyone could connect. The umask is process-wide; nothing else runs yet.
	old := unix.Umask(0o177)
	l, err := net.Listen("unix", path)
	unix.Umask(old)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return l, nil
}
