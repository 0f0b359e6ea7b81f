//go:build linux

// Command aetherium-agent is the guest agent: it runs inside every VM (and as the entrypoint of Docker
// sandboxes), listens for the host, and runs commands for it over the protocol of internal/agent/protocol.
// Build it static (CGO_ENABLED=0) so that it runs in any guest image:
//
//	CGO_ENABLED=0 go build -ldflags "-X main.version=1.2.3" ./cmd/aetherium-agent
//
// # Where it listens
//
// --listen may be given several times (or AETHERIUM_AGENT_LISTEN, comma-separated); each is one of
//
//	unix:/run/aetherium/agent.sock  a Unix socket, mode 0600 (the default; the Docker backend uses it)
//	vsock[:PORT]                     AF_VSOCK in a VM, port 9999 by default (Firecracker, QEMU with vhost-vsock)
//	virtio-serial:NAME               the virtio-serial port QEMU named NAME, multiplexed (see internal/agent/transport)
//	tcp:ADDR                         TCP; on an address other than loopback only with a token (below)
//
// Whoever reaches the agent runs commands as its user (root). A Unix socket is guarded by its mode and vsock
// and virtio-serial are reachable only from the VM's own host; TCP is reachable from a network, so off
// loopback it needs a per-VM token (--token-file, AETHERIUM_AGENT_TOKEN_FILE), and with a token every TCP
// connection must pass a challenge-response preamble in which the token itself never crosses the wire.
//
// # As PID 1 of a VM
//
// With --init (the QEMU and Firecracker backends boot the kernel with "init=/path/to/aetherium-agent -- --init";
// Docker does not pass it) the agent first does what an init system would (internal/agent/guestinit: mount
// /proc, /sys, /dev..., bring up loopback), then reads its settings from the kernel command line
// (/proc/cmdline), where a flag given on its own command line wins:
//
//	aetherium.listen=SPEC[,SPEC...]  as --listen (default AETHERIUM_AGENT_LISTEN, else vsock:9999)
//	aetherium.token_file=PATH        as --token-file
//	aetherium.token=TOKEN            the token itself (discouraged, see below)
//	aetherium.hostname=NAME          the hostname
//	aetherium.dns=IP[,IP...]         the nameservers written to /etc/resolv.conf
//	aetherium.log_level=LEVEL        as --log-level
//
// and on SIGTERM, or when the host asks for it, powers the VM off instead of exiting (PID 1 cannot exit).
//
// Where the token comes from matters. On the kernel command line it is readable by every process in the guest
// (/proc/cmdline is world-readable, so an unprivileged user in the VM could connect as root), and on the host
// QEMU's -append shows in every user's `ps` (Firecracker takes boot arguments through its API socket, so there
// only the guest side applies). A file is better: aetherium.token_file may name a file in a per-VM initramfs
// appended to the shared one, or a tiny read-only disk that holds nothing but the token, e.g.
// aetherium.token_file=/dev/vdb (trailing NUL padding is ignored), which only root in the guest can read and
// which appears in no process list. aetherium.token is accepted, with a warning, for guests that run nothing
// unprivileged on a single-tenant host.
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
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/aetherium/aetherium/internal/agent/guestinit"
	"github.com/aetherium/aetherium/internal/agent/server"
	"github.com/aetherium/aetherium/internal/agent/transport"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const (
	defaultListen     = "unix:/run/aetherium/agent.sock"
	defaultInitListen = "vsock:9999"
)

func main() {
	// SIGTERM is how Docker (docker stop) and init systems ask us to go; as PID 1 we only get it because we
	// install a handler.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// system is what the agent needs from the machine beyond listening: PID-1 duties, so that tests can run the
// --init path without being PID 1 of a VM.
type system struct {
	pid1       func() bool
	initGuest  func(guestinit.Options) error
	readFile   func(string) ([]byte, error)
	powerOffBy func(cmdline string) func() error
}

func realSystem() system {
	return system{
		pid1:       func() bool { return os.Getpid() == 1 },
		initGuest:  guestinit.Init,
		readFile:   os.ReadFile,
		powerOffBy: guestinit.ShutdownFunc,
	}
}

// run is the whole agent; it returns the exit code. ctx ending is the request to shut down.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	return runWith(ctx, realSystem(), args, stdout, stderr)
}

// listFlag collects a repeatable flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

func runWith(ctx context.Context, sys system, args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("aetherium-agent", flag.ContinueOnError)
	fl.SetOutput(stderr)
	var listens listFlag
	fl.Var(&listens, "listen", `where to listen, may be repeated: unix:/path, vsock[:port], virtio-serial:name or tcp:addr (env AETHERIUM_AGENT_LISTEN, comma-separated; default `+defaultListen+`)`)
	tokenFile := fl.String("token-file", os.Getenv("AETHERIUM_AGENT_TOKEN_FILE"), "file holding the per-VM token that TCP connections must prove (env AETHERIUM_AGENT_TOKEN_FILE)")
	initMode := fl.Bool("init", false, "run as PID 1 of a VM: mount the kernel filesystems, read aetherium.* options from /proc/cmdline, power off at the end")
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
	set := map[string]bool{}
	fl.Visit(func(f *flag.Flag) { set[f.Name] = true })
	level, err := parseLevel(*logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "aetherium-agent: bad --log-level: %v\n", err)
		return 2
	}
	logLevelVar := new(slog.LevelVar)
	logLevelVar.Set(level)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevelVar}))

	var (
		token    string
		cmdline  string
		powerOff func() error
	)
	// fail ends the agent on an error. As PID 1 it must not exit (the kernel would panic): it ends the VM,
	// after logging why on the console, where the host sees it.
	fail := func(msg string, args ...any) int {
		log.Error(msg, args...)
		if *initMode && powerOff != nil {
			if err := powerOff(); err != nil {
				log.Error("power off failed", "err", err)
			}
		}
		return 1
	}
	if *initMode {
		if !sys.pid1() {
			log.Warn("--init given but this process is not PID 1; doing the PID-1 duties anyway")
		}
		if err := sys.initGuest(guestinit.Options{Logger: log}); err != nil {
			// Keep going: a guest without /dev/shm can still run commands, and the host can see these logs.
			log.Error("guest init incomplete", "err", err)
		}
		b, err := sys.readFile("/proc/cmdline")
		if err != nil {
			log.Error("cannot read the kernel command line", "err", err)
		}
		cmdline = string(b)
		powerOff = sys.powerOffBy(cmdline)
		opts := kernelOptions(cmdline)
		if v, ok := opts["log_level"]; ok && !set["log-level"] {
			if l, err := parseLevel(v); err != nil {
				log.Warn("bad aetherium.log_level", "value", v, "err", err)
			} else {
				logLevelVar.Set(l)
			}
		}
		if v, ok := opts["hostname"]; ok {
			if err := sys.initGuest(guestinit.Options{Hostname: v, Logger: log}); err != nil {
				log.Error("cannot set the hostname", "hostname", v, "err", err)
			}
		}
		// Growing a small template's filesystem to a disk of gigabytes takes a few hundred milliseconds under
		// emulation: do it beside the start-up rather than before readiness (online resize is safe while in use).
		go func() {
			if before, after, err := guestinit.GrowRootFS("/"); err != nil {
				log.Warn("cannot grow the root filesystem to its disk", "err", err)
			} else if after > before {
				log.Info("root filesystem grown to its disk", "from_mib", before>>20, "to_mib", after>>20)
			}
		}()
		if v, ok := opts["dns"]; ok {
			if err := guestinit.WriteResolvConf("/", splitList(v)); err != nil {
				log.Error("cannot write /etc/resolv.conf", "dns", v, "err", err)
			}
		}
		if v, ok := opts["listen"]; ok && !set["listen"] {
			listens = splitList(v)
		}
		if len(listens) == 0 {
			// The kernel hands init the KEY=VALUE words of its command line that have no dot as environment
			// variables, so AETHERIUM_AGENT_LISTEN may come from there too.
			listens = splitList(envOr("AETHERIUM_AGENT_LISTEN", defaultInitListen))
		}
		if v, ok := opts["token_file"]; ok && !set["token-file"] {
			*tokenFile = v
		}
		if v, ok := opts["token"]; ok && *tokenFile == "" {
			log.Warn("the agent token is on the kernel command line: every process in this VM can read it; prefer aetherium.token_file")
			if err := transport.CheckToken(v); err != nil {
				return fail("bad aetherium.token", "err", err)
			}
			token = v
		}
	}
	if len(listens) == 0 {
		listens = splitList(envOr("AETHERIUM_AGENT_LISTEN", defaultListen))
	}
	if *tokenFile != "" {
		token, err = transport.LoadToken(*tokenFile)
		if err != nil {
			return fail("cannot read the agent token", "err", err)
		}
	}

	var specs []listenSpec
	for _, s := range listens {
		spec, err := parseListen(s, token != "")
		if err != nil {
			return fail("cannot listen", "listen", s, "err", err)
		}
		specs = append(specs, spec)
	}

	var reaper *server.Reaper
	reaperDone := make(chan struct{})
	rctx, stopReaper := context.WithCancel(context.Background())
	defer func() {
		stopReaper()
		<-reaperDone
	}()
	pid1 := sys.pid1()
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

	cfg := server.Config{Version: version, Logger: log, Reaper: reaper}
	if powerOff != nil {
		cfg.PowerOff = func() error {
			log.Info("powering off on the host's request")
			return powerOff()
		}
	}
	srv := server.New(cfg)

	var listeners []net.Listener
	closeAll := func() {
		for _, l := range listeners {
			_ = l.Close()
		}
	}
	for _, spec := range specs {
		l, err := spec.listen(token, log)
		if err != nil {
			closeAll()
			return fail("cannot listen", "listen", spec.raw, "err", err)
		}
		listeners = append(listeners, l)
	}
	served := make(chan error, len(listeners))
	for _, l := range listeners {
		go func() { served <- srv.Serve(l) }()
	}
	log.Info("agent listening", "listen", strings.Join(listens, ","), "version", version, "pid", os.Getpid(), "pid1", pid1, "init", *initMode)

	code := 0
	select {
	case <-ctx.Done():
		log.Info("shutting down", "grace", *grace)
		sctx, cancel := context.WithTimeout(context.Background(), *grace)
		if err := srv.Shutdown(sctx); err != nil {
			log.Warn("commands killed at shutdown", "err", err)
		}
		cancel()
	case err := <-served:
		served <- err
		_ = srv.Close()
		code = 1
	}
	for range listeners {
		if err := <-served; err != nil && !errors.Is(err, server.ErrServerClosed) {
			log.Error("serve failed", "err", err)
		}
	}
	log.Info("agent stopped")
	if *initMode && powerOff != nil {
		// PID 1 must not exit (the kernel panics): end the VM instead.
		log.Info("powering off")
		if err := powerOff(); err != nil {
			log.Error("power off failed", "err", err)
			return 1
		}
	}
	return code
}

func parseLevel(s string) (slog.Level, error) {
	var level slog.Level
	err := level.UnmarshalText([]byte(s))
	return level, err
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func splitList(s string) listFlag {
	var out listFlag
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// kernelOptions returns the aetherium.KEY=VALUE options of a kernel command line, without the prefix. What
// follows "--" belongs to init's argv, not to the kernel, and is ignored. A value may be double-quoted, as the
// kernel allows.
func kernelOptions(cmdline string) map[string]string {
	opts := map[string]string{}
	for _, f := range splitCmdline(cmdline) {
		if f == "--" {
			break
		}
		kv, ok := strings.CutPrefix(f, "aetherium.")
		if !ok {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			continue
		}
		opts[k] = v
	}
	return opts
}

// splitCmdline splits at spaces outside double quotes and drops the quotes, like the kernel's next_arg.
func splitCmdline(s string) []string {
	var out []string
	var cur strings.Builder
	inQuote, have := false, false
	for _, r := range s {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have {
		out = append(out, cur.String())
	}
	return out
}

// listenSpec is one parsed --listen value.
type listenSpec struct {
	raw     string
	kind    string // unix, tcp, vsock, virtio-serial
	address string // path, host:port or port name
	port    uint32 // vsock
	auth    bool   // tcp: run the token preamble
}

// parseListen parses one --listen value. haveToken says whether a token was configured: TCP off loopback is
// refused without one, and with one every TCP listener authenticates, loopback too.
func parseListen(s string, haveToken bool) (listenSpec, error) {
	scheme, addr, _ := strings.Cut(s, ":")
	spec := listenSpec{raw: s, kind: scheme}
	switch scheme {
	case "unix":
		if !filepath.IsAbs(addr) {
			return spec, fmt.Errorf("listen address %q: the socket path must be absolute", s)
		}
		spec.address = filepath.Clean(addr)
		return spec, nil
	case "vsock":
		spec.port = transport.DefaultVsockPort
		if addr != "" {
			p, err := strconv.ParseUint(addr, 10, 32)
			if err != nil {
				return spec, fmt.Errorf("listen address %q: want vsock:PORT (a number; the guest listens on all its CIDs)", s)
			}
			spec.port = uint32(p)
		}
		return spec, nil
	case "virtio-serial":
		if addr == "" || strings.ContainsAny(addr, "/ ") {
			return spec, fmt.Errorf("listen address %q: want virtio-serial:NAME, the name given to QEMU's virtserialport", s)
		}
		spec.address = addr
		return spec, nil
	case "tcp":
		host, _, err := net.SplitHostPort(addr)
		if err != nil {
			return spec, fmt.Errorf("listen address %q: %w", s, err)
		}
		spec.address = addr
		spec.auth = haveToken
		// Host names are refused: only an address literal says where we really listen. An empty host means
		// every interface.
		ip := net.ParseIP(host)
		if host != "" && ip == nil {
			return spec, fmt.Errorf("listen address %q: want an IP address, not a host name", s)
		}
		if haveToken || ip != nil && ip.IsLoopback() {
			return spec, nil
		}
		// Whoever connects runs commands as root: over TCP without a token nothing would stop them.
		return spec, fmt.Errorf("listen address %q: refusing TCP on a non-loopback address without a token "+
			"(give --token-file or AETHERIUM_AGENT_TOKEN_FILE; without one TCP is for loopback tests only)", s)
	}
	return spec, fmt.Errorf("listen address %q: unknown scheme %q (want unix, vsock, virtio-serial or tcp)", s, scheme)
}

func (spec listenSpec) listen(token string, log *slog.Logger) (net.Listener, error) {
	switch spec.kind {
	case "unix":
		return listenUnix(spec.address)
	case "vsock":
		return transport.ListenVsock(spec.port)
	case "virtio-serial":
		return transport.ListenVirtioSerial(spec.address, log)
	case "tcp":
		if spec.auth {
			return transport.ListenTCPAuth(spec.address, token, transport.AuthConfig{Logger: log})
		}
		return net.Listen("tcp", spec.address)
	}
	return nil, fmt.Errorf("unknown listener kind %q", spec.kind)
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
