package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// eventsReconnectAfter is how long `events --follow` waits before it reconnects a stream that closed.
const eventsReconnectAfter = time.Second

func (a *app) eventsCommand() *cobra.Command {
	var (
		types  []string
		vmArg  string
		after  int64
		follow bool
	)
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Print your event log: VM states, task ends, executions, runs",
		Long: `Print your events, one line each: position, time, type and what changed. Without --follow, the events
the server keeps (after --after) are printed and the command ends. With --follow it keeps printing new events
until interrupted, from --after when given (else from now), reconnecting without gaps when the stream breaks.`,
		Example: `  aetherium events
  aetherium events --types vm.status,run.finished --follow
  aetherium events --vm web --after 1200 --json`,
	}
	cmd.Flags().StringSliceVar(&types, "types", nil, "only these event types (comma-separated): "+strings.Join(eventTypes, ", "))
	cmd.Flags().StringVar(&vmArg, "vm", "", "only the events of this VM (id or name)")
	cmd.Flags().Int64Var(&after, "after", -1, "start after this event position (0: from the oldest kept)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until interrupted")
	return a.leaf(cmd, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, cmd *cobra.Command, _ []string) error {
		for _, t := range types {
			if !slices.Contains(eventTypes, t) {
				return usagef("--types: %q is not an event type (one of %s)", t, strings.Join(eventTypes, ", "))
			}
		}
		opts := client.EventsOptions{Types: types, After: after, Resume: after >= 0}
		if !follow && !opts.Resume {
			opts.After, opts.Resume = 0, true // a one-off print is of what is kept
		}
		if vmArg != "" {
			var err error
			if opts.VMID, _, err = resolveVM(ctx, c, vmArg); err != nil {
				return err
			}
		}
		return a.followEvents(ctx, c, opts, follow)
	})
}

var eventTypes = []string{client.EventVMStatus, client.EventTaskFinished, client.EventExecutionStarted,
	client.EventExecutionFinished, client.EventRunStatus, client.EventRunFinished}

// errCaughtUp ends a one-off print at the stream's `live` event.
var errCaughtUp = errors.New("caught up")

// followEvents prints the stream; with follow it reconnects after the last position printed whenever the stream
// closes, so a restart of the server loses nothing. Interrupting it (ctx) is its normal end.
func (a *app) followEvents(ctx context.Context, c *client.Client, opts client.EventsOptions, follow bool) error {
	for {
		err := c.StreamEvents(ctx, opts, func(ev client.Event) error {
			switch ev.Type {
			case client.EventLive:
				if !follow {
					return errCaughtUp
				}
				return nil
			case client.EventReset:
				fmt.Fprintf(a.streams.ErrOut, "warning: events up to position %d were pruned by the server's retention; some were missed\n", ev.ID)
			}
			if ev.ID > 0 {
				opts.After, opts.Resume = ev.ID, true
			}
			if ev.Type == client.EventReset {
				return nil
			}
			return a.printEvent(ev)
		})
		switch {
		case errors.Is(err, errCaughtUp):
			return nil
		case ctx.Err() != nil:
			if follow {
				return nil // interrupted: the normal end of --follow
			}
			return ctx.Err()
		case follow && errors.Is(err, client.ErrEventStreamEnded):
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(eventsReconnectAfter):
			}
			continue
		}
		if err == nil || errors.Is(err, client.ErrEventStreamEnded) {
			return fmt.Errorf("the server closed the event stream before the replay ended")
		}
		return err
	}
}

func (a *app) printEvent(ev client.Event) error {
	if a.jsonOut {
		return printJSONLine(a.streams.Out, ev)
	}
	var d map[string]any
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		return fmt.Errorf("event %d: %w", ev.ID, err)
	}
	when := ""
	if s, ok := d["time"].(string); ok {
		if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			when = t.Local().Format("2006-01-02T15:04:05.000")
		}
	}
	str := func(k string) string { s, _ := d[k].(string); return sanitizeLine(s) }
	var what string
	switch ev.Type {
	case client.EventVMStatus, client.EventRunStatus, client.EventRunFinished:
		what = str("status")
		if p := str("previous"); p != "" {
			what = p + " -> " + what
		}
		if n := str("name"); n != "" {
			what = n + " " + what
		}
	case client.EventTaskFinished:
		what = str("type") + " " + str("status")
		if e := str("error"); e != "" {
			what += ": " + e
		}
	case client.EventExecutionStarted, client.EventExecutionFinished:
		what = "vm " + str("vm_id") + " " + str("status")
		if code, ok := d["exit_code"].(float64); ok {
			what += fmt.Sprintf(" exit %d", int(code))
		}
	default:
		keys := make([]string, 0, len(d))
		for k := range d {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		what = strings.Join(keys, ",")
	}
	_, err := fmt.Fprintf(a.streams.Out, "%d %s %-18s %s %s\n", ev.ID, when, ev.Type, str("id"), what)
	return err
}
