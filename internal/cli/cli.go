// Package cli implements Aetherium's client commands (vm, task, job, secret, run, agents, mcp...) as cobra commands over the Go SDK in
// pkg/client. cmd/aetherium mounts them under its root command:
//
//	for _, c := range cli.NewClientCommands(cli.StdStreams()) {
//		root.AddCommand(c)
//	}
//	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
//	err := root.ExecuteContext(ctx)
//	stop()
//	os.Exit(cli.ExitCode(err))
//
// Contract with main: these commands print their own errors (one line on stderr, "error: ...") and then return an
// *ExitError carrying the process's exit code; main must exit with that code (cli.ExitCode does it) and must not
// print the error again. os.Exit is only ever called by main. Any other error (from main's own commands) gets
// code 1 from ExitCode.
//
// Exit codes: 0 success; 1 an error (API, network, failed task); 2 bad usage (flags, arguments). `vm exec` and
// `job run` pass the command's own exit code through, so their own failures use 125 (as docker does) to stand apart
// from the command's, and a command killed by its timeout gives 124 (as timeout(1) does). `run` gives 1 for a run
// that failed or was cancelled, and 130 when Ctrl-C stopped following it (the run goes on).
//
// Settings come from persistent flags, then the environment: --server (AETHERIUM_SERVER, default
// http://127.0.0.1:8080), --api-key (AETHERIUM_API_KEY), --api-key-file (AETHERIUM_API_KEY_FILE), --json (print
// the API's JSON instead of tables and key: value lines), --timeout (give up after this long; 0: never) and
// --idempotency-key (sent with the command's mutating call, so that re-running the command gets the first answer).
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/aetherium/aetherium/pkg/client"
)

// DefaultServer is the server used when neither --server nor AETHERIUM_SERVER is set.
const DefaultServer = "http://127.0.0.1:8080"

// Environment variables read by the client commands.
const (
	EnvServer     = "AETHERIUM_SERVER"
	EnvAPIKey     = "AETHERIUM_API_KEY"
	EnvAPIKeyFile = "AETHERIUM_API_KEY_FILE"
)

// IOStreams are where the commands read and write.
type IOStreams struct {
	In     io.Reader
	Out    io.Writer
	ErrOut io.Writer
}

// StdStreams returns the process's standard streams.
func StdStreams() IOStreams { return IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr} }

// Option configures the client commands.
type Option func(*app)

// WithGetenv replaces os.Getenv, e.g. in tests.
func WithGetenv(f func(string) string) Option { return func(a *app) { a.getenv = f } }

// WithVersion sets the version the mcp command reports to MCP clients.
func WithVersion(v string) Option { return func(a *app) { a.version = v } }

// WithUserAgent sets the User-Agent of API requests (e.g. "aetherium-cli/1.2.3").
func WithUserAgent(ua string) Option { return func(a *app) { a.userAgent = ua } }

// WithHTTPClient sets the http.Client of API requests.
func WithHTTPClient(h *http.Client) Option { return func(a *app) { a.httpClient = h } }

// WithAPIKeyHint replaces the sentence that tells a user without a key how to get one.
func WithAPIKeyHint(s string) Option { return func(a *app) { a.keyHint = s } }

// WithTerminal forces whether stderr counts as a terminal (progress display); by default it is detected.
func WithTerminal(isTTY bool) Option { return func(a *app) { a.tty = &isTTY } }

// WithInterrupt replaces the process's SIGINT, which `run` listens to while it follows a run, e.g. in tests.
func WithInterrupt(ch <-chan os.Signal) Option { return func(a *app) { a.interrupt = ch } }

// WithClientOptions adds options to the SDK client the commands build.
func WithClientOptions(opts ...client.Option) Option {
	return func(a *app) { a.clientOpts = append(a.clientOpts, opts...) }
}

// app holds what every command shares: streams, settings and the flag values.
type app struct {
	streams    IOStreams
	getenv     func(string) string
	userAgent  string
	version    string
	httpClient *http.Client
	keyHint    string
	tty        *bool
	clientOpts []client.Option
	interrupt  <-chan os.Signal // Ctrl-C while a run is followed; nil: the process's SIGINT

	server     string
	apiKey     string
	apiKeyFile string
	jsonOut    bool
	timeout    time.Duration
	idemKey    string

	// set per run
	serverURL string
	prog      string
}

// NewClientCommands returns the client commands: vm, task, job, secret, run, agents, logs, integration, notify
// and mcp.
func NewClientCommands(streams IOStreams, opts ...Option) []*cobra.Command {
	a := &app{
		streams:   streams,
		getenv:    os.Getenv,
		userAgent: "aetherium-cli",
		keyHint:   "set " + EnvAPIKey + " or pass --api-key-file FILE (ask the server's administrator for a key)",
	}
	for _, o := range opts {
		o(a)
	}
	if a.streams.In == nil {
		a.streams.In = strings.NewReader("")
	}
	if a.streams.Out == nil {
		a.streams.Out = io.Discard
	}
	if a.streams.ErrOut == nil {
		a.streams.ErrOut = io.Discard
	}
	if a.httpClient == nil {
		a.httpClient = defaultHTTPClient()
	}
	cmds := []*cobra.Command{a.vmCommand(), a.taskCommand(), a.jobCommand(), a.secretCommand(), a.runCommand(), a.agentsCommand(), a.logsCommand(),
		a.integrationCommand(), a.notifyCommand(), a.mcpCommand(), a.eventsCommand(), a.workersCommand(), a.quotaCommand()}
	for _, c := range cmds {
		a.addPersistentFlags(c)
		c.SetIn(a.streams.In)
		c.SetOut(a.streams.Out)
		c.SetErr(a.streams.ErrOut)
		c.SetFlagErrorFunc(a.flagError)
	}
	return cmds
}

// NewWorkerAdminCommands are `list`, `drain` and `undrain` for the `aetherium worker` server command, with the
// client's flags of their own (the server command's flags are its configuration).
func NewWorkerAdminCommands(streams IOStreams, opts ...Option) []*cobra.Command {
	var out []*cobra.Command
	for _, top := range NewClientCommands(streams, opts...) {
		if top.Name() != "workers" {
			continue
		}
		for _, c := range top.Commands() {
			top.RemoveCommand(c)
			a := top.PersistentFlags()
			c.PersistentFlags().AddFlagSet(a)
			out = append(out, c)
		}
	}
	return out
}

// defaultHTTPClient bounds connecting, not answering: answers may legitimately take as long as a ?wait=.
func defaultHTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	tr.TLSHandshakeTimeout = 10 * time.Second
	return &http.Client{Transport: tr}
}

func (a *app) addPersistentFlags(c *cobra.Command) {
	f := c.PersistentFlags()
	f.StringVar(&a.server, "server", "", "API server URL (env "+EnvServer+"; default "+DefaultServer+")")
	f.StringVar(&a.apiKey, "api-key", "", "API key (env "+EnvAPIKey+"; prefer the env or --api-key-file: flags show in the process list)")
	f.StringVar(&a.apiKeyFile, "api-key-file", "", "read the API key from this file (env "+EnvAPIKeyFile+")")
	f.BoolVar(&a.jsonOut, "json", false, "print the API's JSON instead of human-readable output")
	f.DurationVar(&a.timeout, "timeout", 0, "give up after this long, e.g. 30s or 10m (0: no limit)")
	f.StringVar(&a.idemKey, "idempotency-key", "", "send this Idempotency-Key with the command's change (create, delete, exec, "+
		"job run...): running the same command again with the same key within 24 h prints the first answer instead "+
		"of doing it twice")
}

// group makes a parent command (vm, task, job): without a subcommand it shows its help, with an unknown one it
// fails as a usage error instead of cobra's default of printing help and succeeding.
func (a *app) group(use, short string) *cobra.Command {
	return &cobra.Command{
		Use:           use,
		Short:         short,
		SilenceErrors: true,
		SilenceUsage:  true,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return a.usageError(cmd, fmt.Errorf("unknown command %q for %q", args[0], cmd.CommandPath()))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
}

// runFunc is the body of a leaf command: it gets a context bounded by --timeout and an API client.
type runFunc func(ctx context.Context, c *client.Client, cmd *cobra.Command, args []string) error

// leaf makes a leaf command whose errors are reported here (see the package comment) with exit code failCode.
func (a *app) leaf(cmd *cobra.Command, args cobra.PositionalArgs, failCode int, run runFunc) *cobra.Command {
	cmd.SilenceErrors = true
	cmd.SilenceUsage = true
	if args != nil {
		cmd.Args = func(c *cobra.Command, as []string) error {
			if err := args(c, as); err != nil {
				var ue *usageErr
				if errors.As(err, &ue) {
					err = ue.err
				}
				return a.usageError(c, err)
			}
			return nil
		}
	}
	cmd.RunE = func(c *cobra.Command, as []string) error {
		a.prog = c.Root().Name()
		ctx := c.Context()
		if ctx == nil {
			ctx = context.Background()
		}
		if a.timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, a.timeout)
			defer cancel()
		}
		if a.idemKey != "" {
			ctx = client.WithIdempotencyKey(ctx, a.idemKey)
		}
		cl, err := a.client()
		if err == nil {
			err = run(ctx, cl, c, as)
		}
		return a.report(c, err, failCode)
	}
	return cmd
}

// client builds the API client from flags, then environment, then defaults.
func (a *app) client() (*client.Client, error) {
	a.serverURL = firstNonEmpty(a.server, a.getenv(EnvServer), DefaultServer)
	key, err := a.resolveKey()
	if err != nil {
		return nil, err
	}
	opts := append([]client.Option{client.WithHTTPClient(a.httpClient), client.WithUserAgent(a.userAgent)}, a.clientOpts...)
	c, err := client.New(a.serverURL, key, opts...)
	if err != nil {
		// New's errors never hold the key; they start with the package name, which means nothing to a user.
		return nil, &usageErr{err: errors.New(strings.TrimPrefix(err.Error(), "client: "))}
	}
	return c, nil
}

// errNoKey is reported when no API key is configured.
var errNoKey = errors.New("no API key")

func (a *app) resolveKey() (string, error) {
	if a.apiKey != "" && a.apiKeyFile != "" {
		return "", &usageErr{err: errors.New("--api-key and --api-key-file are mutually exclusive")}
	}
	switch {
	case a.apiKey != "":
		return strings.TrimSpace(a.apiKey), nil
	case a.apiKeyFile != "":
		return a.readKeyFile(a.apiKeyFile)
	case a.getenv(EnvAPIKey) != "":
		return strings.TrimSpace(a.getenv(EnvAPIKey)), nil
	case a.getenv(EnvAPIKeyFile) != "":
		return a.readKeyFile(a.getenv(EnvAPIKeyFile))
	}
	return "", errNoKey
}

func (a *app) readKeyFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read API key file: %w", err)
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return "", fmt.Errorf("API key file %s is empty", path)
	}
	// Like ssh with private keys, point out a secret others can read; warn rather than refuse, as the file may sit
	// on a volume whose modes mean nothing (a mounted secret, say).
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(a.streams.ErrOut, "warning: API key file %s is readable by other users (mode %#o); chmod 600 it\n", path, fi.Mode().Perm())
	}
	return key, nil
}

func (a *app) isTTY() bool { return a.isTerminal(a.streams.ErrOut) }

// outIsTTY reports whether stdout is a terminal (a run's transcript dims its lesser lines there).
func (a *app) outIsTTY() bool { return a.isTerminal(a.streams.Out) }

func (a *app) isTerminal(w io.Writer) bool {
	if a.tty != nil {
		return *a.tty
	}
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}

// checks runs argument and flag checks in order. Flag checks belong here, not in the run function, so that bad
// usage is reported as such before anything else (a missing API key, say). Cobra's own flag groups are avoided:
// their errors would bypass the reporting in leaf.
func checks(fs ...cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		for _, f := range fs {
			if err := f(cmd, args); err != nil {
				return err
			}
		}
		return nil
	}
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
