package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) notifyCommand() *cobra.Command {
	c := a.group("notify", "Manage notifications: rules sending your events to Slack or Discord, and what was sent")
	rule := a.group("rule", "Manage notification rules")
	rule.AddCommand(a.notifyRuleAdd(), a.notifyRuleList(), a.notifyRuleRm())
	c.AddCommand(rule, a.notifyList(), a.notifyRetry())
	return c
}

func (a *app) notifyRuleAdd() *cobra.Command {
	var events string
	cmd := &cobra.Command{
		Use:     "add INTEGRATION DESTINATION --events vm.failed,run.finished",
		Short:   "Send events of some kinds to a Slack channel id or a Discord webhook URL",
		Example: "  aetherium notify rule add slack C0123456789 --events run.finished,vm.failed\n  aetherium notify rule add discord \"$DISCORD_WEBHOOK_URL\" --events task.failed",
	}
	cmd.Flags().StringVar(&events, "events", "", "comma-separated: vm.failed, run.finished, job.finished, task.failed")
	return a.leaf(cmd, cobra.ExactArgs(2), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		var evs []string
		for _, e := range strings.Split(events, ",") {
			if e = strings.TrimSpace(e); e != "" {
				evs = append(evs, e)
			}
		}
		r, err := c.CreateNotificationRule(ctx, client.CreateNotificationRuleRequest{Events: evs, Integration: args[0], Destination: args[1]})
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, r)
		}
		fmt.Fprintf(a.streams.Out, "created rule %s\n", r.ID)
		return nil
	})
}

func (a *app) notifyRuleList() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List your notification rules"}
	return a.leaf(cmd, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		l, err := c.ListNotificationRules(ctx)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, l)
		}
		if len(l.Rules) == 0 {
			fmt.Fprintln(a.streams.ErrOut, "no rules")
			return nil
		}
		now := time.Now()
		rows := make([][]string, len(l.Rules))
		for i, r := range l.Rules {
			dest := r.Destination
			if r.Integration == "discord" {
				dest = "(webhook URL)" // a credential: shown with --json only
			}
			rows[i] = []string{r.ID, r.Integration, dest, strings.Join(r.Events, ","), fmtAge(r.CreatedAt, now)}
		}
		return printTable(a.streams.Out, []string{"ID", "INTEGRATION", "DESTINATION", "EVENTS", "AGE"}, rows)
	})
}

func (a *app) notifyRuleRm() *cobra.Command {
	cmd := &cobra.Command{Use: "rm ID", Aliases: []string{"delete"}, Short: "Delete a notification rule"}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		if err := c.DeleteNotificationRule(ctx, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(a.streams.Out, "deleted rule %s\n", args[0])
		return nil
	})
}

func (a *app) notifyList() *cobra.Command {
	var status string
	cmd := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List your notifications (--status dead: the dead letters)"}
	cmd.Flags().StringVar(&status, "status", "", "pending, sent or dead")
	return a.leaf(cmd, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		l, err := c.ListNotifications(ctx, status)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, l)
		}
		now := time.Now()
		rows := make([][]string, len(l.Notifications))
		for i, n := range l.Notifications {
			rows[i] = []string{strconv.FormatInt(n.Seq, 10), n.Integration, n.Event, n.Status, strconv.Itoa(n.Attempts), fmtAge(n.CreatedAt, now), n.LastError}
		}
		return printTable(a.streams.Out, []string{"SEQ", "INTEGRATION", "EVENT", "STATUS", "ATTEMPTS", "AGE", "LAST ERROR"}, rows)
	})
}

func (a *app) notifyRetry() *cobra.Command {
	cmd := &cobra.Command{Use: "retry SEQ", Short: "Send a dead notification again"}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		seq, err := strconv.ParseInt(args[0], 10, 64)
		if err != nil {
			return &userError{msg: "SEQ is a number (see `aetherium notify list --status dead`)"}
		}
		if err := c.RetryNotification(ctx, seq); err != nil {
			return err
		}
		fmt.Fprintf(a.streams.Out, "notification %d is pending again\n", seq)
		return nil
	})
}
