package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) vmSpawn() *cobra.Command {
	var (
		env  []string
		req  client.StartProcessRequest
		name string
	)
	cmd := &cobra.Command{
		Use:   "spawn VM -- COMMAND [ARGS...]",
		Short: "Start a background process in a VM and print its id",
		Long: `Start COMMAND in the background in a VM and print the process's id at once. Follow it with
vm logs VM ID (-f to follow), stop it with vm kill, list processes with vm ps. The VM keeps the last 1 MiB of
each output stream.`,
		Example: "  id=$(aetherium vm spawn web -- python3 -m http.server)\n  aetherium vm logs -f web $id",
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable, as `KEY=VALUE` (repeatable)")
	f.StringVarP(&req.WorkingDir, "workdir", "w", "", "working directory in the VM")
	f.StringVarP(&req.User, "user", "u", "", "run as this user of the VM, `USER[:GROUP]`")
	f.IntVar(&req.TimeoutSeconds, "timeout-seconds", 0, "kill the process after this many seconds (0: never)")
	f.StringVar(&name, "name", "", "the process's id (default: one is picked)")
	spawnArgs := func(cmd *cobra.Command, args []string) error {
		if dash := cmd.ArgsLenAtDash(); dash != 1 || len(args) < 2 {
			return errors.New("want a VM and a command: vm spawn VM -- COMMAND [ARGS...]")
		}
		var err error
		req.Env, err = parseKV(env, "--env")
		return err
	}
	return a.leaf(cmd, spawnArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		req.Command, req.Args, req.ID = args[1], args[2:], name
		p, err := c.StartProcess(ctx, id, req)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, p)
		}
		fmt.Fprintln(a.streams.Out, p.ID)
		return nil
	})
}

func (a *app) vmPs() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ps VM",
		Short: "List the background processes and shell sessions of a VM",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		procs, err := c.ListProcesses(ctx, id)
		if err != nil {
			return err
		}
		if a.jsonOut {
			if procs == nil {
				procs = []client.Process{}
			}
			return printJSON(a.streams.Out, client.ProcessList{Processes: procs})
		}
		if len(procs) == 0 {
			fmt.Fprintln(a.streams.ErrOut, "no processes")
			return nil
		}
		now := time.Now()
		rows := make([][]string, len(procs))
		for i, p := range procs {
			state := p.State
			if p.ExitCode != nil {
				state = fmt.Sprintf("exited (%d)", *p.ExitCode)
				if p.Signal != "" {
					state = "killed (" + p.Signal + ")"
				}
			}
			if p.Attached {
				state += ", attached"
			}
			rows[i] = []string{p.ID, fmt.Sprint(p.PID), state, fmtAge(p.StartedAt, now), p.Command}
		}
		return printTable(a.streams.Out, []string{"ID", "PID", "STATE", "AGE", "COMMAND"}, rows)
	})
}

func (a *app) vmLogs() *cobra.Command {
	var (
		follow bool
		stderr bool
	)
	cmd := &cobra.Command{
		Use:   "logs VM [ID]",
		Short: "Print a VM's console log, or the output of one of its background processes",
		Long: `With a process ID: print what a background process of a VM has written to stdout (or with --stderr, to
stderr) and the VM still keeps (the last 1 MiB). With -f, keep printing until the process exits.

With the VM only: print what the VM printed on its console, kept by the server's Loki (setting loki_url) after
the VM is gone; --since, --until, --limit and -q filter it, and -f keeps polling for more.`,
	}
	var console logFlags
	console.register(cmd, false)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the process exits")
	cmd.Flags().BoolVar(&stderr, "stderr", false, "print stderr instead of stdout")
	return a.leaf(cmd, cobra.RangeArgs(1, 2), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		if len(args) == 1 {
			console.follow = follow
			return a.vmConsoleLogs(ctx, c, args[0], &console)
		}
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		stream := "stdout"
		out := a.streams.Out
		if stderr {
			stream, out = "stderr", a.streams.ErrOut
		}
		var offset int64
		for {
			o, err := c.ReadProcessOutput(ctx, id, args[1], stream, offset, 0)
			if err != nil {
				return err
			}
			b, err := o.Bytes()
			if err != nil {
				return err
			}
			if o.Offset > offset {
				fmt.Fprintf(a.streams.ErrOut, "[%d bytes no longer kept]\n", o.Offset-offset)
			}
			if _, err := out.Write(b); err != nil {
				return err
			}
			offset = o.NextOffset
			if !follow || o.EOF {
				return nil
			}
			if len(b) == 0 {
				// Nothing new: let the server hold the request until the process exits or a moment passes.
				if _, err := c.WaitProcess(ctx, id, args[1], 250*time.Millisecond); err != nil {
					return err
				}
			}
		}
	})
}

func (a *app) vmKill() *cobra.Command {
	var sig string
	cmd := &cobra.Command{
		Use:   "kill VM ID",
		Short: "Send a signal to a background process (TERM by default)",
	}
	cmd.Flags().StringVarP(&sig, "signal", "s", "TERM", "the signal, by name (TERM, KILL, INT...) or number")
	return a.leaf(cmd, cobra.ExactArgs(2), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		return c.SignalProcess(ctx, id, args[1], sig)
	})
}
