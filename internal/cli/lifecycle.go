package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// Pausing, resuming and keeping VMs alive (docs/architecture.md, "VM lifetimes").

func (a *app) vmPause() *cobra.Command {
	return a.vmPauseResume("pause", "Pause a VM (by id or name): its guest is frozen, keeps its state and uses no CPU",
		(*client.Client).PauseVM, "paused")
}

func (a *app) vmResume() *cobra.Command {
	return a.vmPauseResume("resume", "Resume a paused VM (by id or name)", (*client.Client).ResumeVM, "resumed")
}

func (a *app) vmPauseResume(verb, short string,
	op func(*client.Client, context.Context, string, time.Duration) (*client.TaskAccepted, bool, error), done string) *cobra.Command {
	var noWait bool
	cmd := &cobra.Command{Use: verb + " VM", Short: short}
	cmd.Flags().BoolVar(&noWait, "no-wait", false, "return once the request is accepted")
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		wait := 30 * time.Second
		if noWait {
			wait = 0
		}
		acc, finished, err := op(c, ctx, id, wait)
		if err != nil {
			return err
		}
		t := acc.Task
		if !noWait && !finished {
			stop := a.startProgress(verb + " vm " + args[0])
			t, err = c.WaitTask(ctx, acc.TaskID, 0)
			stop()
			var we *client.WaitError
			if errors.As(err, &we) {
				return &userError{msg: a.waitMessage(we, "the "+verb+" of vm "+id)}
			}
			if err != nil {
				return err
			}
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, client.TaskAccepted{TaskID: acc.TaskID, Task: t})
		}
		switch {
		case noWait:
			fmt.Fprintf(a.streams.Out, "%s vm %s (task %s)\n", map[string]string{"pause": "pausing", "resume": "resuming"}[verb], id, acc.TaskID)
		case t != nil && t.Status == "failed":
			return &userError{msg: fmt.Sprintf("could not %s vm %s: %s (task %s)", verb, args[0], t.Error, acc.TaskID)}
		default:
			fmt.Fprintf(a.streams.Out, "vm %s %s\n", id, done)
		}
		return nil
	})
}

func (a *app) vmKeepalive() *cobra.Command {
	var extend time.Duration
	cmd := &cobra.Command{
		Use:   "keepalive VM",
		Short: "Count as activity in a VM and push back its expiry",
		Long: `Count as activity in a VM (its idle timeout starts again) and push its hard expiry to at least --for from
now (default: the VM's own timeout). A paused VM stays paused: resume it with ` + "`vm resume`.",
		Example: "  aetherium vm keepalive scratch --for 2h",
	}
	cmd.Flags().DurationVar(&extend, "for", 0, "push the expiry to at least this far from now (whole seconds; 0: the VM's own timeout)")
	check := func(*cobra.Command, []string) error { _, err := wholeSeconds("--for", extend); return err }
	return a.leaf(cmd, checks(cobra.ExactArgs(1), check), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		secs, _ := wholeSeconds("--for", extend)
		vm, err := c.Keepalive(ctx, id, secs)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, vm)
		}
		if vm.ExpiresAt != nil {
			fmt.Fprintf(a.streams.Out, "vm %s kept alive; expires %s\n", vm.ID, fmtTime(*vm.ExpiresAt))
		} else {
			fmt.Fprintf(a.streams.Out, "vm %s kept alive\n", vm.ID)
		}
		return nil
	})
}

// wholeSeconds converts a duration flag to the API's seconds, refusing negative and fractional values.
func wholeSeconds(flag string, d time.Duration) (int, error) {
	if d < 0 || d%time.Second != 0 {
		return 0, &userError{msg: fmt.Sprintf("%s must be a positive whole number of seconds, such as 90s or 2h (got %s)", flag, d)}
	}
	return int(d / time.Second), nil
}

// lifetimeFlags adds --lifetime, --idle-timeout and --on-idle to a create command; apply fills req from them. The
// hard timeout is --lifetime because --timeout is the CLI's own (how long a command waits for the server).
func lifetimeFlags(cmd *cobra.Command, req *client.CreateVMRequest) (apply func() error) {
	var timeout, idle time.Duration
	f := cmd.Flags()
	f.DurationVar(&timeout, "lifetime", 0, "hard lifetime (timeout_seconds): delete the VM this long after its creation, busy or not (0: the server's default)")
	f.DurationVar(&idle, "idle-timeout", 0, "pause or delete the VM (--on-idle) after this long without activity (0: the server's default)")
	f.StringVar(&req.OnIdle, "on-idle", "", "what an idle timeout does: pause (the default) or delete")
	return func() (err error) {
		if req.TimeoutSeconds, err = wholeSeconds("--lifetime", timeout); err != nil {
			return err
		}
		req.IdleTimeoutSeconds, err = wholeSeconds("--idle-timeout", idle)
		return err
	}
}

// lifetimeFields are the lifetime lines of `vm get`.
func lifetimeFields(vm *client.VM) []field {
	var timeout, idle string
	if vm.TimeoutSeconds > 0 {
		timeout = (time.Duration(vm.TimeoutSeconds) * time.Second).String()
	}
	if vm.IdleTimeoutSeconds > 0 {
		idle = (time.Duration(vm.IdleTimeoutSeconds) * time.Second).String() + " (then " + vm.OnIdle + ")"
	}
	return []field{
		{"Timeout", timeout},
		{"Expires", fmtTimePtr(vm.ExpiresAt)},
		{"Idle timeout", idle},
		{"Last activity", fmtTimePtr(vm.LastActivityAt)},
	}
}
