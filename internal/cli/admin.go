package cli

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// WorkerAdminCommands are `list`, `drain` and `undrain` of workers (admin keys), for `aetherium workers` and for
// the `aetherium worker` server command.
func (a *app) workerAdminCommands() []*cobra.Command {
	list := &cobra.Command{Use: "list", Short: "List the workers with their capacity and load (admin)"}
	list = a.leaf(list, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		l, err := c.ListWorkers(ctx)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, l)
		}
		now := time.Now()
		rows := make([][]string, len(l.Workers))
		for i, w := range l.Workers {
			vcpu, mem, vms := strconv.Itoa(w.Used.VCPUs), strconv.Itoa(w.Used.MemoryMB), strconv.Itoa(w.Used.VMs)
			if w.Capacity != nil {
				vcpu += "/" + strconv.Itoa(w.Capacity.VCPUs)
				mem += "/" + strconv.Itoa(w.Capacity.MemoryMB)
				if w.Capacity.VMs > 0 {
					vms += "/" + strconv.Itoa(w.Capacity.VMs)
				}
			}
			rows[i] = []string{w.ID, w.State, w.Backend, vcpu, mem, vms, fmtAge(w.LastHeartbeat, now)}
		}
		return printTable(a.streams.Out, []string{"ID", "STATE", "BACKEND", "VCPU", "MEMORY_MB", "VMS", "HEARTBEAT"}, rows)
	})
	drain := func(use, short string, drained bool) *cobra.Command {
		cmd := &cobra.Command{Use: use + " WORKER", Short: short}
		return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
			w, err := c.DrainWorker(ctx, args[0], drained)
			if err != nil {
				return err
			}
			if a.jsonOut {
				return printJSON(a.streams.Out, w)
			}
			fmt.Fprintf(a.streams.Out, "worker %s is %s (%d VMs)\n", w.ID, w.State, w.Used.VMs)
			return nil
		})
	}
	return []*cobra.Command{list,
		drain("drain", "Stop placing new VMs on a worker; its VMs stay until deleted (admin)", true),
		drain("undrain", "Let a drained worker take new VMs again (admin)", false)}
}

func (a *app) workersCommand() *cobra.Command {
	c := a.group("workers", "See and drain the workers (admin keys)")
	c.AddCommand(a.workerAdminCommands()...)
	return c
}

func (a *app) quotaCommand() *cobra.Command {
	c := a.group("quota", "Set owners' quotas: VMs, vCPUs and memory held at once (admin keys)")
	var q client.Quota
	set := &cobra.Command{Use: "set OWNER_ID", Short: "Set an owner's quota (0: no limit)",
		Example: "  aetherium quota set 0b58c028-... --vms 10 --vcpus 20 --memory-mb 40960"}
	set.Flags().IntVar(&q.MaxVMs, "vms", 0, "most VMs held at once (0: no limit)")
	set.Flags().IntVar(&q.MaxVCPUs, "vcpus", 0, "most vCPUs held at once (0: no limit)")
	set.Flags().IntVar(&q.MaxMemoryMB, "memory-mb", 0, "most memory held at once, in MB (0: no limit)")
	set = a.leaf(set, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		q.OwnerID = args[0]
		out, err := c.SetQuota(ctx, q)
		if err != nil {
			return err
		}
		return a.printQuota(out)
	})
	get := &cobra.Command{Use: "get OWNER_ID", Short: "Show an owner's quota"}
	get = a.leaf(get, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		out, err := c.GetQuota(ctx, args[0])
		if err != nil {
			return err
		}
		return a.printQuota(out)
	})
	rm := &cobra.Command{Use: "rm OWNER_ID", Short: "Remove an owner's quota (no limits)"}
	rm = a.leaf(rm, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		if err := c.DeleteQuota(ctx, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(a.streams.Out, "quota of %s removed\n", args[0])
		return nil
	})
	c.AddCommand(set, get, rm)
	return c
}

func (a *app) printQuota(q *client.Quota) error {
	if a.jsonOut {
		return printJSON(a.streams.Out, q)
	}
	lim := func(n int) string {
		if n == 0 {
			return "no limit"
		}
		return strconv.Itoa(n)
	}
	fmt.Fprintf(a.streams.Out, "owner %s: vms %s, vcpus %s, memory_mb %s\n", q.OwnerID, lim(q.MaxVMs), lim(q.MaxVCPUs), lim(q.MaxMemoryMB))
	return nil
}
