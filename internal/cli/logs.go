package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// logPollEvery is how often --follow asks for new entries.
const logPollEvery = 2 * time.Second

// logFlags are the filters shared by `aetherium logs` and `aetherium vm logs VM`.
type logFlags struct {
	since, until string
	limit        int
	contains     string
	follow       bool
}

// register adds the flags; withFollow false leaves --follow to the command (vm logs has its own).
func (f *logFlags) register(cmd *cobra.Command, withFollow bool) {
	cmd.Flags().StringVar(&f.since, "since", "", "entries from then on: a duration back from now (1h, 30m) or an RFC 3339 time (default: the last hour)")
	cmd.Flags().StringVar(&f.until, "until", "", "entries before then: a duration back from now or an RFC 3339 time")
	cmd.Flags().IntVar(&f.limit, "limit", 0, "most entries per request, 1-5000 (default 100)")
	cmd.Flags().StringVarP(&f.contains, "query", "q", "", "only lines containing this text")
	if withFollow {
		cmd.Flags().BoolVarP(&f.follow, "follow", "f", false, "keep printing new entries (polls every 2 s) until interrupted")
	}
}

func (f *logFlags) query(now time.Time) (client.LogQuery, error) {
	q := client.LogQuery{Limit: f.limit, Contains: f.contains}
	var err error
	if q.Since, err = parseWhen("--since", f.since, now); err != nil {
		return q, err
	}
	if q.Until, err = parseWhen("--until", f.until, now); err != nil {
		return q, err
	}
	if f.follow && !q.Until.IsZero() {
		return q, usagef("--follow and --until do not go together")
	}
	return q, nil
}

func parseWhen(flag, v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, v); err == nil {
		return t, nil
	}
	return time.Time{}, usagef("%s must be a duration such as 1h or an RFC 3339 time such as 2026-01-02T15:04:05Z (got %q)", flag, v)
}

func (a *app) logsCommand() *cobra.Command {
	var (
		f                   logFlags
		vmArg, exec, runArg string
	)
	cmd := &cobra.Command{
		Use:   "logs",
		Short: "Print your log entries: executions' output, VM consoles, task outcomes",
		Long: `Print log entries that carry your ids, oldest first: executions' output lines, VMs' consoles, task outcomes.
The server answers from Loki (its setting loki_url); without one only --execution is answered, from the
execution's stored output.`,
	}
	f.register(cmd, true)
	cmd.Flags().StringVar(&vmArg, "vm", "", "only entries of this VM (id or name)")
	cmd.Flags().StringVar(&exec, "execution", "", "only the output of this execution")
	cmd.Flags().StringVar(&runArg, "run", "", "only entries of this agent run")
	return a.leaf(cmd, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		q, err := f.query(time.Now())
		if err != nil {
			return err
		}
		if vmArg != "" {
			if q.VMID, _, err = resolveVM(ctx, c, vmArg); err != nil {
				return err
			}
		}
		q.ExecutionID, q.RunID = exec, runArg
		return a.printLogs(ctx, q, f.follow, func(ctx context.Context, q client.LogQuery) (*client.LogList, error) {
			return c.Logs(ctx, q)
		})
	})
}

// vmConsoleLogs is `aetherium vm logs VM` (one argument): the VM's console, kept after the VM is gone.
func (a *app) vmConsoleLogs(ctx context.Context, c *client.Client, vmArg string, f *logFlags) error {
	q, err := f.query(time.Now())
	if err != nil {
		return err
	}
	id, _, err := resolveVM(ctx, c, vmArg)
	if err != nil {
		return err
	}
	return a.printLogs(ctx, q, f.follow, func(ctx context.Context, q client.LogQuery) (*client.LogList, error) {
		return c.VMLogs(ctx, id, q)
	})
}

// printLogs prints one answer oldest first, and with follow polls for what came after the newest entry seen,
// never printing an entry twice (the range's start is inclusive: entries at the boundary are remembered).
func (a *app) printLogs(ctx context.Context, q client.LogQuery, follow bool, fetch func(context.Context, client.LogQuery) (*client.LogList, error)) error {
	seen := map[string]bool{}
	var newest time.Time
	for {
		list, err := fetch(ctx, q)
		if err != nil {
			if follow && ctx.Err() != nil {
				return nil // interrupted: the normal end of --follow
			}
			return err
		}
		entries := list.Entries
		sort.SliceStable(entries, func(i, j int) bool { return entries[i].Time.Before(entries[j].Time) })
		for _, e := range entries {
			key := e.Time.Format(time.RFC3339Nano) + "\x00" + e.Line + "\x00" + e.Metadata["stream"] + e.Metadata["execution_id"]
			if seen[key] {
				continue
			}
			if e.Time.After(newest) {
				newest = e.Time
				clear(seen) // only entries at the newest instant can come back
			}
			seen[key] = true
			if err := a.printLogEntry(e); err != nil {
				return err
			}
		}
		if !follow {
			return nil
		}
		if !newest.IsZero() {
			q.Since = newest
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(logPollEvery):
		}
	}
}

func (a *app) printLogEntry(e client.LogEntry) error {
	if a.jsonOut {
		return printJSONLine(a.streams.Out, e)
	}
	where := e.Kind
	if s := e.Metadata["stream"]; s != "" && s != e.Kind {
		where += "/" + s
	}
	// The line is output of a guest or command: control characters are shown escaped, never sent to the terminal.
	_, err := fmt.Fprintf(a.streams.Out, "%s %-12s %s\n", e.Time.Local().Format("2006-01-02T15:04:05.000"), where, sanitizeLine(e.Line))
	return err
}

func sanitizeLine(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' {
			return r
		}
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, s)
}

// printJSONLine writes v as one line of JSON (a stream of entries for --follow --json).
func printJSONLine(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("write JSON: %w", err)
	}
	return nil
}
