//go:build linux

package imagecmd

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/internal/image"
)

// newKernelCommand returns `kernel` with build, import, list and rm; kernels live in <dataDir>/kernels.
func newKernelCommand(resolve Resolver) *cobra.Command {
	if resolve == nil {
		resolve = DefaultResolver
	}
	openStore := func() (*image.KernelStore, error) {
		dataDir, _, err := resolve()
		if err != nil {
			return nil, err
		}
		return image.NewKernelStore(filepath.Join(dataDir, "kernels"))
	}

	cmd := &cobra.Command{
		Use:   "kernel",
		Short: "Manage guest kernels (uncompressed x86-64 vmlinux)",
		Long: "Guest kernels are uncompressed x86-64 vmlinux files, kept as NAME@VERSION. `build` compiles\n" +
			"Debian's linux-source-6.1 with the embedded Firecracker guest config (about 20 minutes on 2 cores) into a\n" +
			"cache outside the data directory (AETHERIUM_CACHE_DIR, default /var/cache/aetherium for root, else\n" +
			"~/.cache/aetherium), so that it is built once per machine, and installs it as NAME@<cache key>.",
	}

	var (
		name string
		opts image.KernelBuildOptions
	)
	build := &cobra.Command{
		Use:   "build [--name default] [--source PATH] [--config PATH] [--jobs N] [--cache-dir DIR]",
		Short: "Build the guest kernel (or take it from the cache) and install it",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			store, err := openStore()
			if err != nil {
				return err
			}
			opts.Progress = c.ErrOrStderr()
			start := time.Now()
			b, err := image.BuildKernel(c.Context(), opts)
			if err != nil {
				return err
			}
			m, installed, err := store.InstallBuild(name, b)
			if err != nil {
				return err
			}
			how := "built"
			if b.Cached {
				how = "taken from the cache"
			}
			state := "installed as"
			if !installed {
				state = "already installed as"
			}
			fmt.Fprintf(c.ErrOrStderr(), "kernel (Linux %s) %s in %s, %s %s\n", m.Release, how,
				time.Since(start).Round(time.Millisecond), state, m.Ref())
			fmt.Fprintln(c.OutOrStdout(), m.Path)
			return nil
		},
	}
	build.Flags().StringVar(&name, "name", image.DefaultKernelName, "kernel name to install the result as")
	build.Flags().StringVar(&opts.Source, "source", image.DefaultKernelSource, "Linux source tarball (.tar.xz)")
	build.Flags().StringVar(&opts.Config, "config", "", "kernel .config (default the embedded Firecracker 6.1 guest config)")
	build.Flags().IntVar(&opts.Jobs, "jobs", 0, "parallel make jobs (default the number of CPUs)")
	build.Flags().StringVar(&opts.CacheDir, "cache-dir", "", "build cache (default $AETHERIUM_CACHE_DIR, /var/cache/aetherium for root, else ~/.cache/aetherium)")

	var importName string
	imp := &cobra.Command{
		Use:   "import --name NAME PATH",
		Short: "Install an uncompressed x86-64 vmlinux you built elsewhere",
		Args:  cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			store, err := openStore()
			if err != nil {
				return err
			}
			m, installed, err := store.Import(importName, args[0])
			if err != nil {
				return err
			}
			if installed {
				fmt.Fprintf(c.ErrOrStderr(), "imported Linux %s as %s\n", m.Release, m.Ref())
			} else {
				fmt.Fprintf(c.ErrOrStderr(), "Linux %s is already installed as %s\n", m.Release, m.Ref())
			}
			fmt.Fprintln(c.OutOrStdout(), m.Path)
			return nil
		},
	}
	imp.Flags().StringVar(&importName, "name", image.DefaultKernelName, "kernel name")

	list := &cobra.Command{
		Use:   "list",
		Short: "List guest kernels",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			store, err := openStore()
			if err != nil {
				return err
			}
			ms, err := store.List()
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(c.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tVERSION\tRELEASE\tSIZE\tSOURCE\tCREATED")
			for _, m := range ms {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.Name, m.Version, m.Release, kernelSize(m.Size), m.Source,
					m.InstalledAt.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}

	rm := &cobra.Command{
		Use:     "rm NAME@VERSION...",
		Aliases: []string{"remove"},
		Short:   "Remove guest kernels (the build cache keeps built ones)",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			store, err := openStore()
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

	cmd.AddCommand(build, imp, list, rm)
	return cmd
}

// kernelSize shows a size in MiB with one decimal: kernels are tens of MiB, where whole MiB hide real differences.
func kernelSize(n int64) string {
	return strings.TrimSuffix(fmt.Sprintf("%.1f", float64(n)/(1<<20)), ".0") + " MiB"
}
