package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// Agent runs: `run` starts one and follows its transcript; its subcommands inspect, list and cancel runs.

// maxPromptBytes is the longest prompt the server takes (internal/task.MaxPromptBytes).
const maxPromptBytes = 100_000

// Following a run's stream.
const (
	// maxStreamRetries is how many times in a row a broken stream is resumed without it delivering anything.
	maxStreamRetries = 5
	streamRetryDelay = 500 * time.Millisecond
	// logsQuiet is how long `run logs` (without --follow) waits for more of an unfinished run's transcript: the
	// server replays what is stored at once, then holds the stream open for what comes.
	logsQuiet = time.Second
)

// durationOrSeconds is a flag value given as a Go duration (30m) or a number of seconds (1800).
type durationOrSeconds struct{ d *time.Duration }

func (v durationOrSeconds) String() string {
	if v.d == nil || *v.d == 0 {
		return ""
	}
	return v.d.String()
}

func (v durationOrSeconds) Set(s string) error {
	if n, err := strconv.Atoi(s); err == nil {
		*v.d = time.Duration(n) * time.Second
		return nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is neither a duration (30m) nor a number of seconds", s)
	}
	*v.d = d
	return nil
}

func (v durationOrSeconds) Type() string { return "duration" }

// runFlags are the flags of `run`.
type runFlags struct {
	repo, ref, branch, agent, model, vmRef, credSecret, promptFile, priority string
	push, keepVM, detach, cancelOnInterrupt                                  bool
	maxTurns, memory, vcpus                                                  int
	timeout                                                                  time.Duration
	tools, env, secretEnv                                                    []string

	envMap, secretEnvMap map[string]string
}

func (a *app) runCommand() *cobra.Command {
	var o runFlags
	cmd := &cobra.Command{
		Use:   "run [flags] PROMPT",
		Short: "Run a coding agent on a repository in a new VM and follow what it does",
		Long: `Start an agent run: a VM is made (or --vm is used), the repository is cloned into it, and the agent (claude-code
unless --agent) works on the prompt there. The transcript is followed live and shown as readable lines (the
agent's words, "→" for each tool it calls and "←" for what the tool answered); --json prints the raw events as
JSON lines instead. At the end come the run's status, turns, usage, changes and where to find the diff.

The prompt is the argument, or --prompt-file FILE (- for stdin). A prompt that is exactly the name of a
subcommand (get, list, diff, cancel, logs, agents) must follow -- or come from --prompt-file. Here --timeout is
the agent's time limit (a duration or seconds), not the CLI's deadline as in the other commands.

The model key (secret ANTHROPIC_API_KEY) and git tokens (GITHUB_TOKEN for github.com) never enter the VM: the
worker's credential proxy uses them on the agent's behalf. --branch or --push push the work as a branch once the
agent has finished.

Ctrl-C stops following (the run goes on; cancel it with run cancel ID); with --cancel-on-interrupt it cancels
the run instead and waits for its end. Exit code: 0 when the run completed, 1 when it failed or was cancelled,
2 for bad usage, 130 when interrupted while following.`,
		Example: `  aetherium run --repo https://github.com/org/repo "fix the failing test"
  aetherium run --repo https://github.com/org/repo --branch fix-tests --prompt-file task.md
  git diff | aetherium run --repo https://github.com/org/repo --prompt-file - --detach
  aetherium run --repo https://github.com/org/repo -- list   # a prompt that is a subcommand's name`,
	}
	f := cmd.Flags()
	f.StringVar(&o.repo, "repo", "", "the repository, an https, ssh or git URL (required)")
	f.StringVar(&o.ref, "ref", "", "branch, tag or commit to start from (default: the repository's default branch)")
	f.StringVar(&o.branch, "branch", "", "push the agent's work as this branch once it has finished")
	f.BoolVar(&o.push, "push", false, "push the agent's work as a branch named aetherium/run-<id> (see --branch)")
	f.StringVar(&o.agent, "agent", "", "the agent to run (default claude-code; list them with: aetherium agents)")
	f.StringVar(&o.model, "model", "", "the model the agent uses (default: the agent's)")
	f.IntVar(&o.maxTurns, "max-turns", 0, "stop the agent after this many turns (0: the agent's default)")
	f.Var(durationOrSeconds{&o.timeout}, "timeout", "the agent's time limit, e.g. 45m or 2700 (default 30m; at most 24h)")
	f.StringVar(&o.vmRef, "vm", "", "run in this existing, running VM (id or name) instead of a new one")
	f.IntVar(&o.memory, "memory", 0, "memory in MiB of the run's new VM (default 2048)")
	f.IntVar(&o.vcpus, "vcpus", 0, "virtual CPUs of the run's new VM (default 2)")
	f.BoolVar(&o.keepVM, "keep-vm", false, "keep the run's new VM after the run (it is deleted otherwise)")
	f.StringArrayVar(&o.tools, "tool", nil, "a tool the VM must have besides the agent's own, `NAME[@VERSION]` (repeatable)")
	f.StringArrayVarP(&o.env, "env", "e", nil, "set an environment variable of the agent, as `KEY=VALUE` (repeatable)")
	f.StringArrayVar(&o.secretEnv, "secret-env", nil, "set an environment variable of the agent to one of your secrets, as `VAR=SECRET_NAME` (repeatable)")
	f.StringVar(&o.credSecret, "credentials-secret", "", "your secret holding the git token for this repository (default: the git host's, GITHUB_TOKEN for github.com)")
	f.StringVar(&o.promptFile, "prompt-file", "", "read the prompt from this file (- for stdin)")
	f.StringVar(&o.priority, "priority", "", "queue priority: critical, high, default or low")
	f.BoolVar(&o.detach, "detach", false, "print the run's id and exit instead of following it")
	f.BoolVar(&o.cancelOnInterrupt, "cancel-on-interrupt", false, "on Ctrl-C, cancel the run (and wait for its end) instead of only stopping to follow it")
	check := func(cmd *cobra.Command, args []string) (err error) {
		switch {
		case len(args) > 1:
			return fmt.Errorf("the prompt is one argument, got %d: quote it, or use --prompt-file", len(args))
		case len(args) == 1 && o.promptFile != "":
			return errors.New("the prompt is given both as an argument and with --prompt-file: give one")
		case len(args) == 0 && o.promptFile == "":
			return errors.New("want a PROMPT (or --prompt-file FILE)")
		case len(args) == 1 && strings.TrimSpace(args[0]) == "":
			return errors.New("the prompt is empty")
		case strings.TrimSpace(o.repo) == "":
			return errors.New("--repo is required")
		case o.maxTurns < 0:
			return errors.New("--max-turns must not be negative")
		case o.timeout < 0 || o.timeout%time.Second != 0:
			return errors.New("--timeout must be a whole, non-negative number of seconds")
		case o.memory < 0 || o.vcpus < 0:
			return errors.New("--memory and --vcpus must not be negative")
		case o.detach && o.cancelOnInterrupt:
			return errors.New("--cancel-on-interrupt needs a run that is followed, not --detach")
		}
		if o.vmRef != "" {
			for _, name := range []string{"memory", "vcpus", "keep-vm"} {
				if cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s is for the run's new VM, not with --vm (a VM given to a run is never deleted)", name)
				}
			}
		}
		if o.envMap, err = parseKV(o.env, "--env"); err != nil {
			return err
		}
		o.secretEnvMap, err = parseKV(o.secretEnv, "--secret-env")
		return err
	}
	helpless := func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 && cmd.Flags().NFlag() == 0 {
			return nil // bare `run`: its help
		}
		return check(cmd, args)
	}
	a.leaf(cmd, helpless, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		return a.startRun(ctx, c, &o, args)
	})
	leafRun := cmd.RunE
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if len(args) == 0 && cmd.Flags().NFlag() == 0 {
			return cmd.Help() // before the API key is looked for
		}
		return leafRun(cmd, args)
	}
	cmd.AddCommand(a.runGet(), a.runList(), a.runDiff(), a.runCancel(), a.runLogs(), a.agentsCommand())
	return cmd
}

// readPrompt reads the prompt from the argument, a file or stdin.
func (a *app) readPrompt(o *runFlags, args []string) (string, error) {
	if len(args) == 1 {
		return args[0], nil
	}
	var r io.Reader = a.streams.In
	if o.promptFile != "-" {
		f, err := os.Open(o.promptFile)
		if err != nil {
			return "", &userError{msg: fmt.Sprintf("read the prompt: %v", err)}
		}
		defer f.Close()
		r = f
	}
	b, err := io.ReadAll(io.LimitReader(r, maxPromptBytes+1))
	if err != nil {
		return "", &userError{msg: fmt.Sprintf("read the prompt: %v", err)}
	}
	switch {
	case len(b) > maxPromptBytes:
		return "", &userError{msg: fmt.Sprintf("the prompt is longer than %d bytes", maxPromptBytes)}
	case strings.TrimSpace(string(b)) == "":
		return "", &userError{msg: "the prompt is empty"}
	}
	return string(b), nil
}

// runRequest maps the flags to the API's request.
func (o *runFlags) request(prompt string) client.CreateRunRequest {
	req := client.CreateRunRequest{
		Repo:   client.RunRepo{URL: strings.TrimSpace(o.repo), Ref: o.ref, CredentialsSecret: o.credSecret},
		Prompt: prompt, Agent: o.agent, Model: o.model, MaxTurns: o.maxTurns, TimeoutSeconds: int(o.timeout / time.Second),
		Tools: o.tools, Env: o.envMap, SecretEnv: o.secretEnvMap, KeepVM: o.keepVM, Priority: o.priority,
	}
	if o.branch != "" || o.push {
		req.Push = &client.RunPush{Branch: o.branch}
	}
	if o.memory != 0 || o.vcpus != 0 {
		req.VM = &client.RunVM{CreateVMRequest: client.CreateVMRequest{MemoryMB: o.memory, VCPUs: o.vcpus}}
	}
	return req
}

func (a *app) startRun(ctx context.Context, c *client.Client, o *runFlags, args []string) error {
	prompt, err := a.readPrompt(o, args)
	if err != nil {
		return err
	}
	req := o.request(prompt)
	if o.vmRef != "" {
		id, _, err := resolveVM(ctx, c, o.vmRef)
		if err != nil {
			return err
		}
		req.VM = &client.RunVM{ID: id}
	}
	acc, err := c.CreateRun(ctx, req)
	if err != nil {
		return err
	}
	id := acc.Run.ID
	if o.detach {
		if a.jsonOut {
			return printJSON(a.streams.Out, acc)
		}
		fmt.Fprintln(a.streams.Out, id)
		fmt.Fprintf(a.streams.ErrOut, "started run %s; follow it with `%s run logs -f %s`\n", id, a.prog, id)
		return nil
	}
	if !a.jsonOut {
		fmt.Fprintf(a.streams.Out, "· run %s: %s on %s\n", id, acc.Run.Agent, acc.Run.Repo.URL)
	}
	end, err := a.follow(ctx, c, id, o.cancelOnInterrupt)
	if err != nil {
		return err
	}
	return a.finishRun(ctx, c, id, end)
}

// follow shows a run's transcript until its end, resuming a broken stream. On Ctrl-C it stops (the run goes on)
// or, with cancelOnInterrupt, cancels the run and goes on following until its end; a second Ctrl-C stops.
func (a *app) follow(ctx context.Context, c *client.Client, id string, cancelOnInterrupt bool) (*client.RunEnd, error) {
	fctx, stopFollowing := context.WithCancel(ctx)
	defer stopFollowing()
	sigs, stopSignals := a.interrupts()
	defer stopSignals()
	var (
		interrupted bool
		mu          sync.Mutex
		done        = make(chan struct{})
	)
	go func() {
		defer close(done)
		cancelled := false
		for {
			select {
			case <-fctx.Done():
				return
			case <-sigs:
			}
			if cancelOnInterrupt && !cancelled {
				cancelled = true
				fmt.Fprintf(a.streams.ErrOut, "cancelling run %s (Ctrl-C again to stop following)\n", id)
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
				_, err := c.CancelRun(cctx, id)
				cancel()
				if err == nil || client.IsCode(err, client.CodeConflict) { // conflict: it has just ended
					continue
				}
				fmt.Fprintf(a.streams.ErrOut, "warning: could not cancel run %s: %s\n", id, a.describe(err))
			}
			mu.Lock()
			interrupted = true
			mu.Unlock()
			stopFollowing()
			return
		}
	}()
	end, err := a.streamRun(fctx, c, id, a.eventPrinter())
	stopFollowing()
	<-done
	mu.Lock()
	defer mu.Unlock()
	if interrupted && ctx.Err() == nil {
		fmt.Fprintf(a.streams.ErrOut, "stopped following run %s; it goes on. Follow it again with `%s run logs -f %s`, "+
			"cancel it with `%s run cancel %s`\n", id, a.prog, id, a.prog, id)
		return nil, &ExitError{Code: exitInterrupted}
	}
	return end, err
}

// interrupts returns the channel Ctrl-C arrives on while a run is followed, and a function that stops listening.
func (a *app) interrupts() (<-chan os.Signal, func()) {
	if a.interrupt != nil {
		return a.interrupt, func() {}
	}
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt)
	return ch, func() { signal.Stop(ch) }
}

// eventPrinter prints events as JSON lines (--json), or rendered.
func (a *app) eventPrinter() func(client.RunEvent) error {
	if a.jsonOut {
		enc := json.NewEncoder(a.streams.Out)
		enc.SetEscapeHTML(false)
		return func(ev client.RunEvent) error {
			if err := enc.Encode(ev); err != nil {
				return fmt.Errorf("write event: %w", err)
			}
			return nil
		}
	}
	t := &transcript{w: a.streams.Out, dim: a.outIsTTY()}
	return func(ev client.RunEvent) error { t.event(ev); return nil }
}

// streamRun calls fn with every event of a run's transcript, once each and in order, until its end. A stream
// that breaks (a proxy's timeout, a server restart) is resumed after the last event seen (Last-Event-ID), up to
// maxStreamRetries times in a row without progress.
func (a *app) streamRun(ctx context.Context, c *client.Client, id string, fn func(client.RunEvent) error) (*client.RunEnd, error) {
	var last int64
	failures := 0
	for {
		progressed := false
		end, err := c.StreamRunFrom(ctx, id, last, func(ev client.RunEvent) error {
			if ev.Seq <= last {
				return nil // already shown: a server resuming sloppily must not show it twice
			}
			last, progressed = ev.Seq, true
			return fn(ev)
		})
		if err == nil {
			return end, nil
		}
		if ctx.Err() != nil || !resumable(err) {
			return nil, err
		}
		if progressed {
			failures = 0
		}
		if failures++; failures > maxStreamRetries {
			return nil, fmt.Errorf("gave up following run %s after %d broken streams (follow it again with `%s run logs -f %s`): %w",
				id, maxStreamRetries, a.prog, id, err)
		}
		// The first retry is at once (a stream cut by a proxy); later ones wait for a server coming back.
		t := time.NewTimer(time.Duration(failures-1) * streamRetryDelay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// resumable reports whether a stream's failure may pass: the stream broke, the server was unreachable for a
// moment, or a proxy in front of it answered for it.
func resumable(err error) bool {
	var (
		ae *client.APIError
		ne net.Error
	)
	switch {
	case errors.Is(err, client.ErrRunStreamEnded):
		return true
	case errors.As(err, &ae):
		return ae.Status == http.StatusBadGateway || ae.Status == http.StatusServiceUnavailable || ae.Status == http.StatusGatewayTimeout
	case errors.As(err, &ne):
		return true
	}
	return false
}

// finishRun prints the summary of an ended run and turns its end into the exit code.
func (a *app) finishRun(ctx context.Context, c *client.Client, id string, end *client.RunEnd) error {
	if !a.jsonOut {
		run, err := c.GetRun(ctx, id)
		if err != nil {
			fmt.Fprintf(a.streams.ErrOut, "warning: could not read the run's result: %s\n", a.describe(err))
		} else {
			fmt.Fprintln(a.streams.Out)
			_ = printFields(a.streams.Out, a.runSummary(run, true))
		}
	}
	return runOutcome(id, end)
}

// runOutcome is the error (and exit code) of a run's end: none when it completed.
func runOutcome(id string, end *client.RunEnd) error {
	why := end.Error
	if why == "" {
		why = "no reason given"
	}
	switch end.Status {
	case "completed":
		return nil
	case "cancelled":
		return &userError{msg: fmt.Sprintf("run %s was cancelled: %s", id, why)}
	case "failed":
		return &userError{msg: fmt.Sprintf("run %s failed: %s", id, why)}
	}
	return &userError{msg: fmt.Sprintf("run %s ended %s: %s", id, end.Status, why)}
}

// runSummary is a run as key: value lines; short leaves out what the transcript has just shown.
func (a *app) runSummary(r *client.Run, short bool) []field {
	res := r.Result
	if res == nil {
		res = &client.RunResult{}
	}
	fs := []field{{"Run", r.ID}, {"Status", r.Status}, {"Error", r.Error}}
	if !short {
		repo := r.Repo.URL
		if r.Repo.Ref != "" {
			repo += " at " + r.Repo.Ref
		}
		fs = append(fs, field{"Repo", repo}, field{"Agent", r.Agent}, field{"Model", r.Model},
			field{"Prompt", truncate(clean(r.Prompt), maxShownLine)}, field{"Task", r.TaskID}, field{"Worker", r.WorkerID},
			field{"Created", fmtTime(r.CreatedAt)}, field{"Started", fmtTimePtr(r.StartedAt)}, field{"Completed", fmtTimePtr(r.CompletedAt)})
		if res.Text != "" {
			fs = append(fs, field{"Result", truncate(clean(res.Text), 2*maxShownLine)})
		}
	}
	if r.StartedAt != nil && r.CompletedAt != nil {
		fs = append(fs, field{"Duration", r.CompletedAt.Sub(*r.StartedAt).Round(time.Second).String()})
	}
	exit := ""
	if res.ExitCode != nil {
		exit = strconv.Itoa(*res.ExitCode)
	}
	if res.TimedOut {
		exit += " (timed out)"
	}
	fs = append(fs, field{"Exit", strings.TrimSpace(exit)})
	if r.Result != nil {
		fs = append(fs, field{"Turns", strconv.Itoa(res.Turns)})
	}
	fs = append(fs, field{"Usage", fmtUsage(r.Usage)})
	if res.AgentCostUSD != nil {
		fs = append(fs, field{"Agent cost", fmt.Sprintf("$%.4f (as the agent reported it)", *res.AgentCostUSD)})
	}
	if r.Result != nil {
		changes := fmtDiffStat(res.DiffStat)
		if res.DiffTruncated {
			changes += " (the stored diff is cut)"
		}
		fs = append(fs, field{"Changes", changes})
	}
	var commits []string
	for _, cm := range res.Commits {
		commits = append(commits, shortSHA(cm.SHA)+" "+clean(cm.Subject))
	}
	fs = append(fs, field{"Commits", strings.Join(commits, "; ")})
	if res.PushedBranch != "" {
		fs = append(fs, field{"Pushed", "branch " + res.PushedBranch})
	} else if r.Push != nil && r.Push.Branch != "" {
		fs = append(fs, field{"Push", "branch " + r.Push.Branch + " (not pushed)"})
	}
	if r.VMID != "" && (r.KeepVM || !short) {
		vm := r.VMID
		if r.KeepVM {
			vm += fmt.Sprintf(" (kept: delete it with `%s vm delete %s`)", a.prog, r.VMID)
		}
		fs = append(fs, field{"VM", vm})
	}
	if r.Done() {
		fs = append(fs, field{"Diff", fmt.Sprintf("%s run diff %s", a.prog, r.ID)})
	}
	if short {
		fs = append(fs, field{"Details", fmt.Sprintf("%s run get %s", a.prog, r.ID)})
	} else if !r.Done() {
		fs = append(fs, field{"Follow", fmt.Sprintf("%s run logs -f %s", a.prog, r.ID)})
	}
	return fs
}

func fmtUsage(u client.RunUsage) string {
	if u.Requests == 0 && u.InputTokens == 0 && u.OutputTokens == 0 {
		return "none measured"
	}
	s := fmt.Sprintf("%d input + %d output tokens", u.InputTokens, u.OutputTokens)
	if u.CacheReadInputTokens > 0 || u.CacheCreationInputTokens > 0 {
		s += fmt.Sprintf(" (cache: %d read, %d written)", u.CacheReadInputTokens, u.CacheCreationInputTokens)
	}
	s += fmt.Sprintf(", %d requests", u.Requests)
	if u.CostUSD != nil {
		s += fmt.Sprintf(", $%.4f at list prices", *u.CostUSD)
	} else {
		s += ", cost unknown"
	}
	return s
}

// fmtDiffStat is git's summary: "3 files changed, +10 -2".
func fmtDiffStat(d *client.DiffStat) string {
	if d == nil {
		return "-"
	}
	if d.FilesChanged == 0 {
		return "no changes"
	}
	files := "files"
	if d.FilesChanged == 1 {
		files = "file"
	}
	return fmt.Sprintf("%d %s changed, +%d -%d", d.FilesChanged, files, d.Insertions, d.Deletions)
}

func shortSHA(s string) string {
	if len(s) > 12 {
		return s[:12]
	}
	return s
}

func (a *app) runGet() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "get ID",
		Short: "Show a run: its status, result, usage and changes",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		r, err := c.GetRun(ctx, args[0])
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, r)
		}
		return printFields(a.streams.Out, a.runSummary(r, false))
	})
}

func (a *app) runList() *cobra.Command {
	var (
		o     client.ListRunsOptions
		vmRef string
	)
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your runs, newest first",
	}
	f := cmd.Flags()
	f.StringSliceVar(&o.Status, "status", nil, "only runs in these states, comma-separated or repeated (pending, preparing, running, completed, failed, cancelled)")
	f.StringVar(&o.Repo, "repo", "", "only runs of this repository URL")
	f.StringVar(&vmRef, "vm", "", "only runs in this VM (id or name)")
	f.IntVar(&o.Limit, "limit", 0, "show at most this many runs (0: all)")
	check := func(*cobra.Command, []string) error {
		if o.Limit < 0 {
			return errors.New("--limit must not be negative")
		}
		return nil
	}
	return a.leaf(cmd, checks(cobra.NoArgs, check), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		if vmRef != "" {
			var err error
			if o.VMID, _, err = resolveVM(ctx, c, vmRef); err != nil {
				return err
			}
		}
		runs, err := listAllRuns(ctx, c, o)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, client.RunList{Runs: runs})
		}
		if len(runs) == 0 {
			fmt.Fprintln(a.streams.ErrOut, "no runs found")
			return nil
		}
		now := time.Now()
		rows := make([][]string, len(runs))
		for i, r := range runs {
			changes := "-"
			if r.Result != nil && r.Result.DiffStat != nil {
				changes = fmtDiffStat(r.Result.DiffStat)
			}
			rows[i] = []string{r.ID, r.Status, r.Agent, r.Repo.URL, fmtAge(r.CreatedAt, now), changes}
		}
		return printTable(a.streams.Out, []string{"ID", "STATUS", "AGENT", "REPO", "AGE", "CHANGES"}, rows)
	})
}

// listAllRuns follows the list's cursors until the end, or until o.Limit runs (0: no limit).
func listAllRuns(ctx context.Context, c *client.Client, o client.ListRunsOptions) ([]client.Run, error) {
	all := []client.Run{}
	limit := o.Limit
	for range maxListPages {
		if limit > 0 {
			o.Limit = min(limit-len(all), 500)
		}
		page, err := c.ListRuns(ctx, o)
		if err != nil {
			return nil, err
		}
		all = append(all, page.Runs...)
		if limit > 0 && len(all) >= limit {
			return all[:limit], nil
		}
		if page.NextCursor == "" || page.NextCursor == o.Cursor {
			return all, nil
		}
		o.Cursor = page.NextCursor
	}
	return all, nil
}

func (a *app) runDiff() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "diff ID",
		Short:   "Print a run's patch against the commit it started from (git's format; apply it with git apply)",
		Example: "  aetherium run diff $id | git apply\n  aetherium run diff $id | less",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		diff, err := c.RunDiff(ctx, args[0])
		if err != nil {
			return err
		}
		if len(diff) > 0 {
			_, err := a.streams.Out.Write(diff)
			return err
		}
		// Nothing: say why, on stderr, so that a pipe still gets an empty patch.
		r, err := c.GetRun(ctx, args[0])
		switch {
		case err != nil:
			return err
		case !r.Done():
			fmt.Fprintf(a.streams.ErrOut, "run %s is %s: its diff is recorded once the agent has finished\n", r.ID, r.Status)
		default:
			fmt.Fprintf(a.streams.ErrOut, "run %s changed nothing\n", r.ID)
		}
		return nil
	})
}

func (a *app) runCancel() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cancel ID",
		Short: "Cancel a run: its agent and every process it started are killed, nothing is pushed",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		r, err := c.CancelRun(ctx, args[0])
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, r)
		}
		if r.Status == "cancelled" {
			fmt.Fprintf(a.streams.Out, "run %s cancelled\n", r.ID)
		} else {
			fmt.Fprintf(a.streams.Out, "cancelling run %s (it was %s); `%s run get %s` shows when it has stopped\n", r.ID, r.Status, a.prog, r.ID)
		}
		return nil
	})
}

func (a *app) runLogs() *cobra.Command {
	var follow bool
	cmd := &cobra.Command{
		Use:   "logs ID",
		Short: "Print a run's transcript (-f: follow it until the run ends)",
		Long: `Print a run's transcript as readable lines (--json: the raw events, one JSON object a line). For a run that has
not ended, what it has written so far is printed; with -f the transcript is followed until the run ends, and the
exit code is then the run's (0 completed, 1 failed or cancelled).`,
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "follow the transcript until the run ends")
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		r, err := c.GetRun(ctx, args[0])
		if err != nil {
			return err
		}
		if follow {
			end, err := a.follow(ctx, c, r.ID, false)
			if err != nil {
				return err
			}
			return runOutcome(r.ID, end)
		}
		show := a.eventPrinter()
		if r.Done() {
			_, err := a.streamRun(ctx, c, r.ID, show)
			return err
		}
		// Not ended: the stored events come at once, then the stream waits for new ones. Stop once it is quiet.
		qctx, stop := context.WithCancel(ctx)
		defer stop()
		quiet := time.AfterFunc(logsQuiet, stop)
		_, err = a.streamRun(qctx, c, r.ID, func(ev client.RunEvent) error {
			quiet.Reset(logsQuiet)
			return show(ev)
		})
		quiet.Stop()
		if err != nil && ctx.Err() == nil && qctx.Err() != nil {
			fmt.Fprintf(a.streams.ErrOut, "run %s is still %s; follow it with `%s run logs -f %s`\n", r.ID, r.Status, a.prog, r.ID)
			return nil
		}
		return err
	})
}

// agentsCommand lists the agent catalog; it is mounted twice (`agents` and `run agents`).
func (a *app) agentsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "agents",
		Short: "List the agents a run can start (the server's agent catalog)",
	}
	return a.leaf(cmd, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		list, err := c.ListAgents(ctx)
		if err != nil {
			return err
		}
		if a.jsonOut {
			if list == nil {
				list = []client.Agent{}
			}
			return printJSON(a.streams.Out, struct {
				Agents []client.Agent `json:"agents"`
			}{list})
		}
		rows := make([][]string, len(list))
		for i, ag := range list {
			rows[i] = []string{ag.Name, orDash(strings.Join(ag.Proxy, ",")), orDash(strings.Join(ag.Tools, ",")), ag.Description}
		}
		return printTable(a.streams.Out, []string{"NAME", "MODEL APIS", "TOOLS", "DESCRIPTION"}, rows)
	})
}
