package cli

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) integrationCommand() *cobra.Command {
	c := a.group("integration", "Link GitHub repositories (and other integrations' sources) to your account")
	c.AddCommand(a.integrationLink(), a.integrationLinks(), a.integrationUnlink())
	return c
}

func (a *app) integrationLink() *cobra.Command {
	var commands, runs, allowBots, draftPR bool
	var notify []string
	var onPR string
	var allowCmds []string
	cmd := &cobra.Command{
		Use:   "link INTEGRATION SOURCE",
		Short: "Let a source (github.com/org/repo, github.com/org/*) start work as you",
		Long: `Link a source of an integration to your account: its comments then start commands
(/aetherium run <command>) and agent runs (@aetherium <prompt>) as you, within what the link allows. For
GitHub the source is the repository, github.com/org/repo, or every repository of an organisation,
github.com/org/*; only commenters with write or admin permission on the repository trigger work.`,
		Example: "  aetherium integration link github github.com/acme/api\n  aetherium integration link github 'github.com/acme/*' --runs=false\n" +
			"  aetherium integration link github github.com/acme/api --on-pr 'make test'",
	}
	f := cmd.Flags()
	f.BoolVar(&commands, "commands", true, "allow commands (/aetherium run)")
	f.BoolVar(&runs, "runs", true, "allow agent runs (@aetherium)")
	f.BoolVar(&allowBots, "allow-bots", false, "let bots' comments trigger work too")
	f.BoolVar(&draftPR, "draft-pr", false, "open a draft pull request for an agent run's pushed branch")
	f.StringArrayVar(&allowCmds, "allow-command", nil, "the only commands the source may run (repeat; \"make test\" exactly, or \"make *\" for make with plain arguments); default: any")
	f.StringVar(&onPR, "on-pr", "", "GitHub: a command to run on every pull request opened, reopened or pushed to, reported as a check run")
	f.StringSliceVar(&notify, "notify", nil, "notification events sent to this source (run.finished, job.finished, ...)")
	return a.leaf(cmd, cobra.ExactArgs(2), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		l, err := c.CreateIntegrationLink(ctx, client.CreateIntegrationLinkRequest{Integration: args[0], Source: args[1],
			Commands: &commands, Runs: &runs, AllowBots: allowBots, DraftPR: draftPR, PRCommand: onPR, AllowedCommands: allowCmds, Notify: notify})
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, l)
		}
		fmt.Fprintf(a.streams.Out, "linked %s %s (%s)\n", l.Integration, l.Source, l.ID)
		return nil
	})
}

func (a *app) integrationLinks() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "links [INTEGRATION]",
		Aliases: []string{"ls"},
		Short:   "List your links",
	}
	return a.leaf(cmd, cobra.MaximumNArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		name := ""
		if len(args) == 1 {
			name = args[0]
		}
		l, err := c.ListIntegrationLinks(ctx, name)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, l)
		}
		if len(l.Links) == 0 {
			fmt.Fprintln(a.streams.ErrOut, "no links")
			return nil
		}
		now := time.Now()
		rows := make([][]string, len(l.Links))
		for i, x := range l.Links {
			var may []string
			for _, p := range []struct {
				on   bool
				name string
			}{{x.Commands, "commands"}, {x.Runs, "runs"}, {x.AllowBots, "bots"}, {x.DraftPR, "draft-pr"}} {
				if p.on {
					may = append(may, p.name)
				}
			}
			if x.PRCommand != "" {
				may = append(may, "on-pr")
			}
			rows[i] = []string{x.ID, x.Integration, x.Source, strings.Join(may, ","), fmtAge(x.CreatedAt, now)}
		}
		return printTable(a.streams.Out, []string{"ID", "INTEGRATION", "SOURCE", "ALLOWS", "AGE"}, rows)
	})
}

func (a *app) integrationUnlink() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "unlink ID",
		Short: "Remove one of your links",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		if err := c.DeleteIntegrationLink(ctx, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(a.streams.Out, "unlinked %s\n", args[0])
		return nil
	})
}
