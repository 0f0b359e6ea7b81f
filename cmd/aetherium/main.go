// Command aetherium runs Aetherium's server roles (serve, gateway, worker, migrate), manages API keys, and is the
// command-line client of the REST API (vm, task, job, secret; secret rotate-key works on the store directly).
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/aetherium/aetherium/internal/cli"
	"github.com/aetherium/aetherium/internal/config"
	"github.com/aetherium/aetherium/internal/image/imagecmd"
	"github.com/aetherium/aetherium/internal/server"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := &cobra.Command{
		Use:           "aetherium",
		Short:         "Run AI coding agents and commands in isolated VMs",
		Version:       version,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetArgs(args)
	root.SetIn(stdin)
	root.SetOut(stdout)
	root.SetErr(stderr)
	workerCmd := roleCommand("worker", "Run a worker that owns the VMs of this host (production: PostgreSQL and Redis); "+
		"`worker list|drain|undrain` manage the workers (admin keys)", server.Roles{Worker: true})
	root.AddCommand(
		roleCommand("serve", "Run the API and a worker in one process on embedded defaults (SQLite, in-process queue)",
			server.Roles{API: true, Worker: true, Bootstrap: true}),
		roleCommand("gateway", "Run the REST API (production: PostgreSQL and Redis)", server.Roles{API: true}),
		workerCmd,
		migrateCommand(),
		apikeyCommand(),
		authCommand(),
		doctorCommand(),
		healthcheckCommand(),
		imagecmd.NewCommand(imageResolver),
	)
	clientCmds := cli.NewClientCommands(cli.IOStreams{In: stdin, Out: stdout, ErrOut: stderr},
		cli.WithUserAgent("aetherium-cli/"+version), cli.WithVersion(version),
		cli.WithAPIKeyHint("create one with `aetherium apikey create --name NAME` on the server host, or use the key "+
			"`aetherium serve` printed (kept in ~/.aetherium/admin-api-key)"))
	addSecretAdmin(clientCmds)
	workerCmd.AddCommand(cli.NewWorkerAdminCommands(cli.IOStreams{In: stdin, Out: stdout, ErrOut: stderr},
		cli.WithUserAgent("aetherium-cli/"+version), cli.WithVersion(version))...)
	root.AddCommand(clientCmds...)
	err := root.Execute()
	var exit *cli.ExitError
	if err != nil && !errors.As(err, &exit) {
		// The client commands print their own errors and return *cli.ExitError; the server commands do not.
		fmt.Fprintln(stderr, "error:", err)
	}
	return cli.ExitCode(err)
}

func loadConfig(cmd *cobra.Command) (config.Config, *slog.Logger, error) {
	cfg, err := config.Load(cmd.Flags(), os.Getenv)
	if err != nil {
		return cfg, nil, fmt.Errorf("configuration:\n%w", err)
	}
	return cfg, newLogger(cfg, cmd.ErrOrStderr()), nil
}

func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel))
	opts := &slog.HandlerOptions{Level: level}
	if cfg.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// imageResolver gives `aetherium image` the data directory and agent binary of the server configuration (defaults,
// YAML file from AETHERIUM_CONFIG, and environment).
func imageResolver() (string, string, error) {
	cfg, err := config.Load(pflag.NewFlagSet("image", pflag.ContinueOnError), os.Getenv)
	if err != nil {
		return "", "", fmt.Errorf("configuration:\n%w", err)
	}
	return cfg.DataDir, cfg.AgentBinary, nil
}

func roleCommand(name, short string, roles server.Roles) *cobra.Command {
	cmd := &cobra.Command{
		Use:   name,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			// After the first signal, restore the default handling: a second Ctrl-C ends a slow drain at once.
			go func() { <-ctx.Done(); stop() }()
			log.Info("starting", "role", name, "version", version, "worker_id", cfg.WorkerID, "data_dir", cfg.DataDir)
			log.Debug("configuration", "config", cfg.Redacted())
			return server.Run(ctx, cfg, roles, version, log, cmd.OutOrStdout())
		},
	}
	config.Flags(cmd.Flags())
	return cmd
}

func doctorCommand() *cobra.Command {
	var role string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this host can run a role (serve, gateway or worker) and say how to fix what is missing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			roles, ok := map[string]server.Roles{
				"serve": {API: true, Worker: true}, "gateway": {API: true}, "worker": {Worker: true},
			}[role]
			if !ok {
				return fmt.Errorf("--role must be serve, gateway or worker (got %q)", role)
			}
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			checks := server.Doctor(cmd.Context(), cfg, roles, log.With("component", "doctor"))
			failed := 0
			for _, c := range checks {
				if c.Status == server.CheckFail {
					failed++
				}
			}
			out := cmd.OutOrStdout()
			if asJSON {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(checks); err != nil {
					return err
				}
			} else {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				for _, c := range checks {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", strings.ToUpper(string(c.Status)), c.Name, c.Detail)
					if c.Fix != "" {
						fmt.Fprintf(tw, "\t\tfix: %s\n", c.Fix)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d of %d checks failed", failed, len(checks))
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&role, "role", "serve", "role to check for: serve, gateway or worker")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the checks as JSON")
	config.Flags(cmd.Flags())
	return cmd
}

func migrateCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "migrate",
		Short: "Apply database migrations to the configured store",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cmd)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 5*time.Minute)
			defer cancel()
			st, err := server.OpenStore(ctx, cfg, true)
			if err != nil {
				return err
			}
			log.Info("database is up to date")
			return st.Close()
		},
	}
	config.Flags(cmd.Flags())
	return cmd
}
