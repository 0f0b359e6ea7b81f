package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) vmCommand() *cobra.Command {
	vm := a.group("vm", "Create, list, inspect and delete VMs; run commands, shells and file copies in them")
	vm.AddCommand(a.vmCreate(), a.vmList(), a.vmGet(), a.vmDelete(), a.vmExec(),
		a.vmShell(), a.vmCp(), a.vmSpawn(), a.vmPs(), a.vmLogs(), a.vmKill(), a.vmTools(), a.vmPause(), a.vmResume(),
		a.vmKeepalive())
	return vm
}

func (a *app) vmTools() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "tools VM TOOL[@VERSION]...",
		Short:   "Install tools into a running VM (by id or name) and wait; prints every tool it has",
		Example: "  aetherium vm tools demo jq python3 node@22",
	}
	return a.leaf(cmd, cobra.MinimumNArgs(2), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		stop := a.startProgress("installing " + strings.Join(args[1:], ", ") + " in vm " + args[0])
		acc, _, err := c.AddTools(ctx, id, client.AddToolsRequest{Tools: args[1:]}, 0)
		if err == nil {
			acc.Task, err = c.WaitTask(ctx, acc.TaskID, 250*time.Millisecond)
		}
		stop()
		if err != nil {
			return err
		}
		if acc.Task.Status != "completed" {
			return &userError{msg: fmt.Sprintf("installing tools in vm %s failed: %s (task %s)", args[0], acc.Task.Error, acc.TaskID)}
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, acc.Task)
		}
		var res struct {
			InstalledTools map[string]string `json:"installed_tools"`
		}
		_ = json.Unmarshal(acc.Task.Result, &res)
		names := make([]string, 0, len(res.InstalledTools))
		for n := range res.InstalledTools {
			names = append(names, n)
		}
		sort.Strings(names)
		for _, n := range names {
			fmt.Fprintf(a.streams.Out, "%s\t%s\n", n, res.InstalledTools[n])
		}
		return nil
	})
}

func (a *app) vmCreate() *cobra.Command {
	var (
		req    client.CreateVMRequest
		meta   []string
		noWait bool
	)
	cmd := &cobra.Command{
		Use:   "create NAME",
		Short: "Create a VM and wait until it runs",
		Long: `Create a VM and wait until it runs, then print its id. With --no-wait, print the id as soon as the
server has accepted the request; the VM is then being created in the background.`,
		Example: "  aetherium vm create web --vcpus 2 --memory 1024\n  id=$(aetherium vm create scratch)\n" +
			"  aetherium vm create sandbox --lifetime 2h --idle-timeout 10m --on-idle delete",
	}
	f := cmd.Flags()
	f.IntVar(&req.VCPUs, "vcpus", 0, "virtual CPUs (0: the server's default)")
	f.IntVar(&req.MemoryMB, "memory", 0, "memory in MiB (0: the server's default)")
	f.StringVar(&req.Image, "image", "", "root image (empty: the server's default)")
	f.StringVar(&req.Priority, "priority", "", "queue priority: critical, high, default or low")
	f.StringArrayVar(&meta, "metadata", nil, "add metadata, as `KEY=VALUE` (repeatable)")
	f.StringSliceVar(&req.Tools, "tools", nil, "tools the VM must have, `NAME[@VERSION]`, comma-separated (installed at create when its template lacks them)")
	var egress client.EgressPolicy
	f.StringSliceVar(&egress.AllowDomains, "allow-domain", nil, "egress: only these domains (and their subdomains) resolve and can be reached (repeatable)")
	f.StringSliceVar(&egress.DenyDomains, "deny-domain", nil, "egress: never resolve these domains (repeatable)")
	f.StringSliceVar(&egress.AllowCIDRs, "allow-cidr", nil, "egress: IPv4 networks the VM may reach, private ones included (repeatable)")
	f.StringSliceVar(&egress.DenyCIDRs, "deny-cidr", nil, "egress: IPv4 networks the VM may not reach (repeatable)")
	f.BoolVar(&noWait, "no-wait", false, "return once the request is accepted")
	applyLifetime := lifetimeFlags(cmd, &req)
	check := func(*cobra.Command, []string) (err error) {
		if err := applyLifetime(); err != nil {
			return err
		}
		if len(egress.AllowDomains)+len(egress.DenyDomains)+len(egress.AllowCIDRs)+len(egress.DenyCIDRs) > 0 {
			req.Network = &client.NetworkRequest{Egress: egress}
		}
		req.Metadata, err = parseKV(meta, "--metadata")
		return err
	}
	return a.leaf(cmd, checks(cobra.ExactArgs(1), check), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		req.Name = args[0]
		if noWait {
			acc, err := c.CreateVM(ctx, req)
			if err != nil {
				return err
			}
			if a.jsonOut {
				return printJSON(a.streams.Out, acc)
			}
			fmt.Fprintln(a.streams.Out, acc.VM.ID)
			fmt.Fprintf(a.streams.ErrOut, "creating vm %s (task %s); follow it with `%s task get %s`\n", req.Name, acc.TaskID, a.prog, acc.TaskID)
			return nil
		}

		stop := a.startProgress("creating vm " + req.Name)
		vm, err := c.CreateVMAndWait(ctx, req)
		stop()
		var (
			te *client.TaskError
			we *client.WaitError
		)
		switch {
		case errors.As(err, &te):
			if a.jsonOut && vm != nil {
				_ = printJSON(a.streams.Out, vm)
			}
			return &userError{msg: fmt.Sprintf("creating vm %s failed: %s (task %s)", req.Name, te.Message, te.TaskID)}
		case errors.As(err, &we) && vm != nil:
			return &userError{msg: a.waitMessage(we, fmt.Sprintf("vm %s (%s)", req.Name, vm.ID))}
		case err != nil:
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, vm)
		}
		fmt.Fprintln(a.streams.Out, vm.ID)
		return nil
	})
}

func (a *app) vmList() *cobra.Command {
	var (
		status []string
		limit  int
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List VMs",
	}
	f := cmd.Flags()
	f.StringSliceVar(&status, "status", nil, "only VMs in these states, comma-separated or repeated (pending, creating, running, stopping, stopped, deleted, failed)")
	f.IntVar(&limit, "limit", 0, "show at most this many VMs (0: all)")
	check := func(*cobra.Command, []string) error {
		if limit < 0 {
			return errors.New("--limit must not be negative")
		}
		return nil
	}
	return a.leaf(cmd, checks(cobra.NoArgs, check), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		vms, err := listAllVMs(ctx, c, status, limit)
		if err != nil {
			return err
		}
		if a.jsonOut {
			if vms == nil {
				vms = []client.VM{}
			}
			return printJSON(a.streams.Out, client.VMList{VMs: vms})
		}
		if len(vms) == 0 {
			fmt.Fprintln(a.streams.ErrOut, "no VMs found")
			return nil
		}
		now := time.Now()
		rows := make([][]string, len(vms))
		for i, vm := range vms {
			rows[i] = []string{vm.ID, vm.Name, vm.Status, fmt.Sprint(vm.VCPUs), fmt.Sprintf("%dMiB", vm.MemoryMB), orDash(vm.Image), fmtAge(vm.CreatedAt, now)}
		}
		return printTable(a.streams.Out, []string{"ID", "NAME", "STATUS", "VCPUS", "MEMORY", "IMAGE", "AGE"}, rows)
	})
}

func (a *app) vmGet() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get VM",
		Short: "Show a VM (by id or name)",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, vm, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		if vm == nil {
			if vm, err = c.GetVM(ctx, id); err != nil {
				return err
			}
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, vm)
		}
		return printFields(a.streams.Out, append([]field{
			{"ID", vm.ID},
			{"Name", vm.Name},
			{"Status", vm.Status},
			{"Error", vm.Error},
			{"vCPUs", fmt.Sprint(vm.VCPUs)},
			{"Memory", fmt.Sprintf("%d MiB", vm.MemoryMB)},
			{"Image", vm.Image},
			{"Worker", vm.WorkerID},
			{"Address", fmtNetwork(vm.Network)},
			{"Egress", fmtEgress(vm.Network)},
			{"Tools", fmtMap(vm.InstalledTools)},
			{"Metadata", fmtMap(vm.Metadata)},
			{"Created", fmtTime(vm.CreatedAt)},
			{"Started", fmtTimePtr(vm.StartedAt)},
			{"Stopped", fmtTimePtr(vm.StoppedAt)},
			{"Updated", fmtTime(vm.UpdatedAt)},
		}, lifetimeFields(vm)...))
	})
}

func (a *app) vmDelete() *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{
		Use:     "delete VM",
		Aliases: []string{"rm"},
		Short:   "Delete a VM (by id or name) and wait until it is gone",
	}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the request is accepted")
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		if noWait {
			acc, err := c.DeleteVM(ctx, id)
			if err != nil {
				return err
			}
			if a.jsonOut {
				return printJSON(a.streams.Out, acc)
			}
			fmt.Fprintf(a.streams.Out, "deleting vm %s (task %s)\n", id, acc.TaskID)
			return nil
		}
		stop := a.startProgress("deleting vm " + args[0])
		task, err := c.DeleteVMAndWait(ctx, id)
		stop()
		var (
			te *client.TaskError
			we *client.WaitError
		)
		switch {
		case errors.As(err, &te):
			return &userError{msg: fmt.Sprintf("deleting vm %s failed: %s (task %s)", args[0], te.Message, te.TaskID)}
		case errors.As(err, &we):
			return &userError{msg: a.waitMessage(we, "the deletion of vm "+id)}
		case err != nil:
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, task)
		}
		fmt.Fprintf(a.streams.Out, "vm %s deleted\n", id)
		return nil
	})
}

func (a *app) vmExec() *cobra.Command {
	var (
		env      []string
		secEnv   []string
		req      client.ExecuteRequest
		priority string
		noStream bool
	)
	cmd := &cobra.Command{
		Use:   "exec VM -- COMMAND [ARGS...]",
		Short: "Run a command in a VM and print its output as it runs",
		Long: `Run a command in a VM (by id or name) and wait for it. Its stdout goes to stdout and its stderr to stderr as the
command writes them, and the exit code is the command's own: 124 means the command was killed by its timeout, 125
that it could not be run at all (the error says why). Put the command after -- so its flags are not taken for ours.

With --no-stream (implied by --json) the output is printed once the command has ended, from the stored copy
(which the server cuts at its output cap).

The command is run as is, without a shell: use sh -c '...' for pipes and variables.`,
		Example: "  aetherium vm exec web -- uname -a\n  aetherium vm exec --env GREETING=hi web -- sh -c 'echo $GREETING'",
	}
	f := cmd.Flags()
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable, as `KEY=VALUE` (repeatable)")
	f.StringArrayVar(&secEnv, "secret-env", nil, "set an environment variable to one of your secrets, as `VAR=SECRET_NAME` (repeatable; see aetherium secret)")
	f.StringVarP(&req.WorkingDir, "workdir", "w", "", "working directory in the VM")
	f.StringVarP(&req.User, "user", "u", "", "guest user to run as: a name or uid[:gid] (default root)")
	f.IntVar(&req.TimeoutSeconds, "timeout-seconds", 0, "kill the command after this many seconds (0: the server's default)")
	f.StringVar(&priority, "priority", "", "queue priority: critical, high, default or low")
	f.BoolVar(&noStream, "no-stream", false, "print the output once the command has ended instead of as it runs")
	execArgs := func(cmd *cobra.Command, args []string) error {
		dash := cmd.ArgsLenAtDash()
		switch {
		case dash == 0:
			return errors.New("the VM comes before --: vm exec VM -- COMMAND [ARGS...]")
		case dash > 1:
			return fmt.Errorf("unexpected argument %q before --", args[1])
		case len(args) < 2:
			return errors.New("want a VM and a command: vm exec VM -- COMMAND [ARGS...]")
		case req.TimeoutSeconds < 0:
			return errors.New("--timeout-seconds must not be negative")
		}
		var err error
		if req.Env, err = parseKV(env, "--env"); err != nil {
			return err
		}
		req.SecretEnv, err = parseKV(secEnv, "--secret-env")
		return err
	}
	return a.leaf(cmd, execArgs, exitOwnFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		req.Command, req.Args, req.Priority = args[1], args[2:], priority
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		if noStream || a.jsonOut {
			stop := a.startProgress("running " + req.Command + " in vm " + args[0])
			exec, err := c.ExecAndWait(ctx, id, req)
			stop()
			return a.execResult(exec, err, args[0], execPrinted{})
		}
		return a.streamExec(ctx, c, id, args[0], req)
	})
}

// execPrinted is how much of each stream a streaming vm exec has printed, and what it learnt on the way.
type execPrinted struct {
	next  [2]int64 // offset after the last byte printed
	got   [2]int64 // bytes printed
	holes [2]bool  // output was lost in transit (an offset jumped)
}

// streamExec runs a command and prints its output as it comes (GET /executions/{id}/stream). If the stream breaks
// or the server has none, it falls back to waiting for the command and prints the rest from the stored copy.
func (a *app) streamExec(ctx context.Context, c *client.Client, vmID, vmArg string, req client.ExecuteRequest) error {
	acc, err := c.Execute(ctx, vmID, req)
	if err != nil {
		return err
	}
	var p execPrinted
	outs := [2]io.Writer{a.streams.Out, a.streams.ErrOut}
	end, err := c.StreamExecution(ctx, acc.ExecutionID, func(ch client.Chunk) error {
		i := 0
		if ch.Stream == "stderr" {
			i = 1
		}
		data := ch.Data
		if skip := p.next[i] - ch.Offset; skip > 0 { // never sent twice by the server; cheap to be sure
			data = data[min(skip, int64(len(data))):]
		} else if skip < 0 {
			p.holes[i] = true
		}
		p.next[i] = max(p.next[i], ch.Offset+int64(len(ch.Data)))
		p.got[i] += int64(len(data))
		if _, err := outs[i].Write(data); err != nil {
			return fmt.Errorf("write the command's %s: %w", ch.Stream, err)
		}
		return nil
	})
	var ae *client.APIError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		return &userError{msg: a.waitMessage(&client.WaitError{TaskID: acc.TaskID, Err: ctx.Err()}, "the command")}
	case errors.Is(err, client.ErrStreamEnded),
		errors.As(err, &ae) && (ae.Status == http.StatusNotFound || ae.Status == http.StatusMethodNotAllowed):
		// A server restart, a proxy that cut the stream, or a server without streams: wait for the end instead.
		exec, err := c.WaitExecution(ctx, acc)
		return a.execResult(exec, err, vmArg, p)
	default:
		return err
	}
	exec := &client.Execution{
		Status: end.Status, ExitCode: end.ExitCode, TimedOut: end.TimedOut, Error: end.Error,
		StdoutTruncated: end.StdoutTruncated, StderrTruncated: end.StderrTruncated,
	}
	if end.Status == "failed" {
		return &userError{msg: fmt.Sprintf("could not run the command in vm %s: %s (task %s)", vmArg, end.Error, acc.TaskID)}
	}
	// The stored copy's truncation does not matter to a client that saw the stream: what it missed does.
	for i, total := range [2]*int64{end.StdoutBytes, end.StderrBytes} {
		if total == nil {
			p.holes[i] = p.holes[i] || [2]bool{end.StdoutTruncated, end.StderrTruncated}[i]
			continue
		}
		p.holes[i] = p.holes[i] || p.got[i] < *total
	}
	exec.StdoutTruncated, exec.StderrTruncated = p.holes[0], p.holes[1]
	a.warnExecution(exec, "")
	if code := exitCodeOf(exec); code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// execResult prints a finished execution (the part of its output not printed yet) and turns it into the exit code.
func (a *app) execResult(exec *client.Execution, err error, vmArg string, p execPrinted) error {
	var (
		te *client.TaskError
		we *client.WaitError
	)
	switch {
	case errors.As(err, &te):
		if a.jsonOut && exec != nil {
			_ = printJSON(a.streams.Out, exec)
		}
		return &userError{msg: fmt.Sprintf("could not run the command in vm %s: %s (task %s)", vmArg, te.Message, te.TaskID)}
	case errors.As(err, &we):
		return &userError{msg: a.waitMessage(we, "the command")}
	case err != nil:
		return err
	}
	if a.jsonOut {
		if err := printJSON(a.streams.Out, exec); err != nil {
			return err
		}
	} else {
		_, _ = io.WriteString(a.streams.Out, rest(exec.Stdout, p.next[0]))
		_, _ = io.WriteString(a.streams.ErrOut, rest(exec.Stderr, p.next[1]))
	}
	a.warnExecution(exec, "")
	if code := exitCodeOf(exec); code != 0 {
		return &ExitError{Code: code}
	}
	return nil
}

// rest is what s holds past offset.
func rest(s string, offset int64) string {
	if offset >= int64(len(s)) {
		return ""
	}
	return s[offset:]
}

// warnExecution points out on stderr what the output alone does not show: truncation and timeouts.
func (a *app) warnExecution(e *client.Execution, prefix string) {
	if e.StdoutTruncated {
		fmt.Fprintf(a.streams.ErrOut, "warning: %sstdout was truncated by the server\n", prefix)
	}
	if e.StderrTruncated {
		fmt.Fprintf(a.streams.ErrOut, "warning: %sstderr was truncated by the server\n", prefix)
	}
	if e.TimedOut {
		fmt.Fprintf(a.streams.ErrOut, "warning: %sthe command was killed by its timeout\n", prefix)
	}
	if e.Error != "" && e.Status != "failed" {
		fmt.Fprintf(a.streams.ErrOut, "warning: %s%s\n", prefix, e.Error)
	}
}

// exitCodeOf maps an execution to a process exit code: its own, 124 when its timeout killed it, and 125 when it
// has none. Codes outside 0-255 are folded like a shell would, never to 0.
func exitCodeOf(e *client.Execution) int {
	switch {
	case e.TimedOut:
		return exitTimeout
	case e.ExitCode == nil:
		return exitOwnFailure
	case *e.ExitCode == 0:
		return 0
	}
	if c := *e.ExitCode & 0xff; c != 0 {
		return c
	}
	return exitFailure
}

// parseKV parses repeated KEY=VALUE flags.
func parseKV(list []string, flag string) (map[string]string, error) {
	if len(list) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(list))
	for _, kv := range list {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, usagef("%s %q: want KEY=VALUE", flag, kv)
		}
		m[k] = v
	}
	return m, nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// fmtNetwork shows a VM's address and gateway ("" when it has none).
func fmtNetwork(n *client.VMNetwork) string {
	if n == nil || n.IP == "" {
		return ""
	}
	return fmt.Sprintf("%s (gateway %s, mac %s)", n.IP, n.Gateway, n.MAC)
}

// fmtEgress shows a VM's egress policy ("" for the default).
func fmtEgress(n *client.VMNetwork) string {
	if n == nil {
		return ""
	}
	var parts []string
	for _, p := range []struct {
		what string
		list []string
	}{{"allow", n.Egress.AllowCIDRs}, {"deny", n.Egress.DenyCIDRs}, {"allow", n.Egress.AllowDomains}, {"deny", n.Egress.DenyDomains}} {
		if len(p.list) > 0 {
			parts = append(parts, p.what+" "+strings.Join(p.list, ","))
		}
	}
	return strings.Join(parts, "; ")
}
