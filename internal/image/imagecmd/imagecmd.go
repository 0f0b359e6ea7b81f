//go:build linux

// Package imagecmd is the `aetherium image` command: build, list and remove root filesystem templates.
package imagecmd

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	dockerclient "github.com/docker/docker/client"
	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/image"
	"github.com/aetherium/aetherium/internal/tools"
)

// newToolInstaller returns the installer of --tools: downloads are cached beside the template store
// (<data_dir>/cache/tools), so that rebuilds and VMs share them.
func newToolInstaller(store *image.Store, catalogFile, npmRegistry, mirror string) (*tools.Installer, error) {
	cat := tools.Default()
	if catalogFile != "" {
		var err error
		if cat, err = tools.LoadFile(catalogFile); err != nil {
			return nil, err
		}
	}
	return tools.NewInstaller(tools.Config{
		Catalog: cat, CacheDir: filepath.Join(filepath.Dir(store.Dir()), "cache", "tools"),
		NPMRegistry: npmRegistry, DebianMirror: mirror,
	})
}

// Resolver returns the data directory (templates live in <dataDir>/images) and the default agent binary ("" if
// none is configured; build then needs --agent).
type Resolver func() (dataDir, agentBinary string, err error)

// DefaultResolver reads AETHERIUM_DATA_DIR (default ~/.aetherium) and AETHERIUM_AGENT_BINARY (default an
// aetherium-agent next to the running executable, when there is one). The server binary plugs its real
// configuration in instead.
func DefaultResolver() (string, string, error) {
	dataDir := os.Getenv("AETHERIUM_DATA_DIR")
	if dataDir == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return "", "", fmt.Errorf("no AETHERIUM_DATA_DIR and no home directory: %w", err)
		}
		dataDir = filepath.Join(home, ".aetherium")
	}
	agent := os.Getenv("AETHERIUM_AGENT_BINARY")
	if agent == "" {
		if exe, err := os.Executable(); err == nil {
			if p := filepath.Join(filepath.Dir(exe), "aetherium-agent"); fileExists(p) {
				agent = p
			}
		}
	}
	return dataDir, agent, nil
}

func fileExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

// NewCommand returns `image` with its subcommands. A nil resolve means DefaultResolver.
func NewCommand(resolve Resolver) *cobra.Command {
	if resolve == nil {
		resolve = DefaultResolver
	}
	openStore := func() (*image.Store, string, error) {
		dataDir, agent, err := resolve()
		if err != nil {
			return nil, "", err
		}
		s, err := image.NewStore(filepath.Join(dataDir, "images"))
		return s, agent, err
	}

	cmd := &cobra.Command{
		Use:   "image",
		Short: "Manage guest root filesystem templates",
		Long: "Templates are read-only ext4 images with the agent at " + image.GuestInit + ". Boot them with\n" +
			"init=" + image.GuestInit + " and, before \"-- --init\", " + image.DefaultBoot.FirecrackerListenArg +
			" (Firecracker)\nor " + image.DefaultBoot.QEMUListenArg + " (QEMU) on the kernel command line.",
	}

	var opts image.BuildOptions
	var toolCatalog, npmRegistry string
	build := &cobra.Command{
		Use:   "build (--from-docker IMAGE | --from-debian[=SUITE]) --name NAME",
		Short: "Build a template from a local Docker image or a Debian base (debootstrap)",
		Long: "Build a template from a local Docker image (--from-docker, not pulled) or from a Debian suite bootstrapped\n" +
			"with debootstrap (--from-debian, needs root; variant minbase plus " + strings.Join(image.DefaultDebianPackages(), ", ") + " and --packages).\n" +
			"A build whose inputs match an existing version reuses it; --rebuild makes a new version regardless\n" +
			"(Debian updates its suites under the same name).",
		Example: "  aetherium image build --from-debian --tools git,node,npm,bun,claude-code,curl --name default\n" +
			"  aetherium image build --from-docker alpine:3.20 --name alpine\n" +
			"  aetherium image build --from-debian --packages git,curl --name debian\n" +
			"  aetherium image build --from-debian=trixie --mirror http://deb.debian.org/debian --name trixie",
		Args: func(c *cobra.Command, args []string) error {
			// --from-debian takes an optional value, so "--from-debian trixie" leaves trixie as an argument.
			if len(args) > 0 && c.Flags().Changed("from-debian") {
				return fmt.Errorf("unexpected argument %q: give the suite as --from-debian=%s (alone, --from-debian means %s)", args[0], args[0], image.DefaultDebianSuite)
			}
			return cobra.NoArgs(c, args)
		},
		RunE: func(c *cobra.Command, _ []string) error {
			switch {
			case opts.FromDocker != "" && opts.FromDebian != "":
				return errors.New("give exactly one source: --from-docker IMAGE or --from-debian[=SUITE], not both")
			case opts.FromDocker == "" && opts.FromDebian == "":
				return errors.New("give a source: --from-docker IMAGE or --from-debian[=SUITE]")
			case opts.FromDocker != "" && (c.Flags().Changed("mirror") || c.Flags().Changed("packages")):
				return errors.New("--mirror and --packages apply to --from-debian only")
			}
			store, agent, err := openStore()
			if err != nil {
				return err
			}
			if len(opts.Tools) > 0 {
				if opts.ToolInstaller, err = newToolInstaller(store, toolCatalog, npmRegistry, opts.Mirror); err != nil {
					return err
				}
			} else if c.Flags().Changed("tool-catalog") || c.Flags().Changed("npm-registry") {
				return errors.New("--tool-catalog and --npm-registry apply with --tools only")
			}
			if opts.AgentBinary == "" {
				opts.AgentBinary = agent
			}
			if opts.AgentBinary == "" {
				return errors.New("no agent binary: pass --agent PATH or set AETHERIUM_AGENT_BINARY")
			}
			var engine dockerclient.APIClient // a nil interface for Debian builds, which need no engine
			if opts.FromDocker != "" {
				cli, err := image.NewDockerClient()
				if err != nil {
					return err
				}
				defer cli.Close()
				engine = cli
			}
			// Ctrl-C or a TERM ends the build through its context, so that it removes its staging directory and
			// anything debootstrap mounted there; a second signal kills at once.
			ctx, stop := signal.NotifyContext(c.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			go func() { <-ctx.Done(); stop() }()
			opts.Progress = c.ErrOrStderr()
			start := time.Now()
			m, reused, err := image.NewBuilder(store, engine, slog.New(slog.DiscardHandler)).Build(ctx, opts)
			if err != nil {
				return err
			}
			if reused {
				fmt.Fprintf(c.ErrOrStderr(), "%s is up to date (--rebuild makes a new version)\n", m.Ref())
			} else {
				fmt.Fprintf(c.ErrOrStderr(), "built %s in %s\n", m.Ref(), time.Since(start).Round(time.Millisecond))
			}
			fmt.Fprintln(c.OutOrStdout(), m.Path)
			return nil
		},
	}
	build.Flags().StringVar(&opts.FromDocker, "from-docker", "", "local Docker image to build from (not pulled)")
	build.Flags().StringVar(&opts.FromDebian, "from-debian", "", "Debian suite to bootstrap with debootstrap (as root); alone it means "+image.DefaultDebianSuite)
	build.Flags().Lookup("from-debian").NoOptDefVal = image.DefaultDebianSuite
	build.Flags().StringVar(&opts.Mirror, "mirror", "", "Debian mirror for --from-debian (default "+image.DefaultDebianMirror+")")
	build.Flags().StringSliceVar(&opts.Packages, "packages", nil, "more Debian packages to install, comma-separated or repeated (--from-debian)")
	build.Flags().StringSliceVar(&opts.Tools, "tools", nil, "comma-separated `list` of tools to install and verify, NAME or NAME@VERSION (the catalog: aetherium image tools)")
	build.Flags().StringVar(&toolCatalog, "tool-catalog", "", "tool catalog file (YAML) instead of the built-in one")
	build.Flags().StringVar(&npmRegistry, "npm-registry", "", "npm registry for npm tools (default "+tools.DefaultNPMRegistry+")")
	build.Flags().StringVar(&opts.Name, "name", "", "template name")
	build.Flags().StringVar(&opts.Version, "version", "", "template version (default derived from the inputs' hash)")
	build.Flags().Int64Var(&opts.SizeMB, "size", 0, "image size in MiB (default content * 1.3 + 64 MiB)")
	build.Flags().StringVar(&opts.AgentBinary, "agent", "", "static aetherium-agent binary to install")
	build.Flags().BoolVar(&opts.Rebuild, "rebuild", false, "build a new version even if one from identical inputs exists")
	_ = build.MarkFlagRequired("name")

	list := &cobra.Command{
		Use:   "list",
		Short: "List templates",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			store, _, err := openStore()
			if err != nil {
				return err
			}
			ms, err := store.List()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tSIZE\tCREATED\tSOURCE\tAGENT\tTOOLS")
			for _, m := range ms {
				names := make([]string, 0, len(m.Tools))
				for n := range m.Tools {
					names = append(names, n)
				}
				sort.Strings(names)
				fmt.Fprintf(tw, "%s\t%s\t%d MiB\t%s\t%s\t%s\t%s\n", m.Name, m.Version, m.Size>>20,
					m.CreatedAt.Local().Format(time.DateTime), m.Source, m.AgentVersion, strings.Join(names, ","))
			}
			return tw.Flush()
		},
	}

	rm := &cobra.Command{
		Use:     "rm NAME@VERSION...",
		Aliases: []string{"remove"},
		Short:   "Remove template versions",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			store, _, err := openStore()
			if err != nil {
				return err
			}
			var errs []error
			for _, ref := range args {
				if err := store.Remove(ref); err != nil {
					errs = append(errs, err)
					continue
				}
				fmt.Fprintln(c.OutOrStdout(), "removed", ref)
			}
			return errors.Join(errs...)
		},
	}

	toolsCmd := &cobra.Command{
		Use:   "tools",
		Short: "List the tools that --tools can install",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cat := tools.Default()
			if toolCatalog != "" {
				var err error
				if cat, err = tools.LoadFile(toolCatalog); err != nil {
					return err
				}
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tDEFAULT\tCOMMANDS\tDESCRIPTION")
			for _, t := range cat.Tools() {
				def := t.Default
				if a, ok := t.Aliases[def]; ok {
					def += " (" + a + ")"
				}
				if t.Kind == tools.KindDebian {
					def = "(suite's)"
				}
				bins := make([]string, 0, len(t.Bins))
				for b := range t.Bins {
					bins = append(bins, b)
				}
				sort.Strings(bins)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", t.Name, t.Kind, def, strings.Join(bins, ","), t.Description)
			}
			return tw.Flush()
		},
	}
	toolsCmd.Flags().StringVar(&toolCatalog, "tool-catalog", "", "tool catalog file (YAML) instead of the built-in one")

	cmd.AddCommand(build, list, rm, toolsCmd)
	cmd.AddCommand(newKernelCommand(resolve))
	return cmd
}
