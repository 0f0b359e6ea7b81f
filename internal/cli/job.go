package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) jobCommand() *cobra.Command {
	job := a.group("job", "Run several commands in one VM")
	job.AddCommand(a.jobRun())
	return job
}

func (a *app) jobRun() *cobra.Command {
	var (
		vmRef, create, image, priority, workdir string
		vcpus, memory, timeoutSeconds           int
		stopOnError, deleteAfter                bool
		env                                     []string
		secEnv                                  []string
	)
	cmd := &cobra.Command{
		Use:   "run (--vm VM | --create NAME) [flags] -- 'COMMAND' ['COMMAND'...]",
		Short: "Run shell commands one after another in a VM",
		Long: `Run shell commands one after another in an existing VM (--vm, by id or name) or in a new one (--create),
and print each one's output under a header. Each argument is one command, run as sh -c 'COMMAND'.

The exit code is that of the first command that failed (124 if its timeout killed it), 125 if the job itself
failed (its VM could not be created, say), and 0 when every command succeeded.`,
		Example: "  aetherium job run --vm web -- 'cd /src && make' 'make test'\n" +
			"  aetherium job run --create ci-1 --delete-after --stop-on-error -- 'git clone https://example.com/r.git' 'cd r && go test ./...'",
	}
	f := cmd.Flags()
	f.StringVar(&vmRef, "vm", "", "run in this existing VM (id or name)")
	f.StringVar(&create, "create", "", "create a VM with this name to run in")
	f.IntVar(&vcpus, "vcpus", 0, "virtual CPUs of the VM made by --create (0: the server's default)")
	f.IntVar(&memory, "memory", 0, "memory in MiB of the VM made by --create (0: the server's default)")
	f.StringVar(&image, "image", "", "root image of the VM made by --create")
	f.BoolVar(&stopOnError, "stop-on-error", false, "do not run the commands after one that fails")
	f.BoolVar(&deleteAfter, "delete-after", false, "delete the VM when the job ends")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable for every command, as `KEY=VALUE` (repeatable)")
	f.StringArrayVar(&secEnv, "secret-env", nil, "set an environment variable of every command to one of your secrets, as `VAR=SECRET_NAME` (repeatable)")
	f.StringVarP(&workdir, "workdir", "w", "", "working directory of every command")
	f.IntVar(&timeoutSeconds, "timeout-seconds", 0, "kill each command after this many seconds (0: the server's default)")
	f.StringVar(&priority, "priority", "", "queue priority: critical, high, default or low")
	var envMap, secEnvMap map[string]string
	check := func(cmd *cobra.Command, args []string) (err error) {
		if (vmRef == "") == (create == "") {
			return errors.New("give exactly one of --vm and --create")
		}
		if vmRef != "" {
			for _, name := range []string{"vcpus", "memory", "image"} {
				if cmd.Flags().Changed(name) {
					return fmt.Errorf("--%s only goes with --create", name)
				}
			}
		}
		if timeoutSeconds < 0 {
			return errors.New("--timeout-seconds must not be negative")
		}
		for _, s := range args {
			if strings.TrimSpace(s) == "" {
				return errors.New("empty command")
			}
		}
		if envMap, err = parseKV(env, "--env"); err != nil {
			return err
		}
		secEnvMap, err = parseKV(secEnv, "--secret-env")
		return err
	}
	return a.leaf(cmd, checks(cobra.MinimumNArgs(1), check), exitOwnFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		req := client.CreateJobRequest{StopOnError: stopOnError, DeleteVMAfter: deleteAfter, Priority: priority}
		for _, s := range args {
			req.Commands = append(req.Commands, client.JobCommand{Command: "sh", Args: []string{"-c", s}, Env: envMap, SecretEnv: secEnvMap, WorkingDir: workdir, TimeoutSeconds: timeoutSeconds})
		}
		where := create
		if vmRef != "" {
			var err error
			if req.VMID, _, err = resolveVM(ctx, c, vmRef); err != nil {
				return err
			}
			where = vmRef
		} else {
			req.VM = &client.CreateVMRequest{Name: create, VCPUs: vcpus, MemoryMB: memory, Image: image, Priority: priority}
		}

		stop := a.startProgress(fmt.Sprintf("running %d command(s) in vm %s", len(args), where))
		job, err := c.RunJobAndWait(ctx, req)
		stop()
		var we *client.WaitError
		if errors.As(err, &we) {
			return &userError{msg: a.waitMessage(we, "the job")}
		}
		if err != nil {
			return err
		}
		if a.jsonOut {
			if err := printJSON(a.streams.Out, job); err != nil {
				return err
			}
		} else {
			a.printJob(job, args)
		}
		return jobOutcome(job)
	})
}

// printJob writes each execution's output under a header; stderr goes to stderr.
func (a *app) printJob(job *client.Job, commands []string) {
	n := len(commands)
	for i, e := range job.Executions {
		fmt.Fprintf(a.streams.Out, "==> [%d/%d] %s (%s)\n", i+1, n, displayCommand(e.Command, e.Args), executionSummary(&e))
		writeLines(a.streams.Out, e.Stdout)
		writeLines(a.streams.ErrOut, e.Stderr)
		a.warnExecution(&e, fmt.Sprintf("[%d/%d] ", i+1, n))
	}
	for i := len(job.Executions); i < n; i++ {
		fmt.Fprintf(a.streams.Out, "==> [%d/%d] %s (not run)\n", i+1, n, commands[i])
	}
	fmt.Fprintf(a.streams.Out, "==> job %s %s", job.ID, job.Status)
	if job.VMID != "" {
		fmt.Fprintf(a.streams.Out, " in vm %s", job.VMID)
	}
	fmt.Fprintln(a.streams.Out)
}

// jobOutcome is the error (and so the exit code) a finished job gives: that of its first failed command, else a
// failure of the job itself.
func jobOutcome(job *client.Job) error {
	for _, e := range job.Executions {
		if code := exitCodeOf(&e); code != 0 {
			return &ExitError{Code: code}
		}
	}
	if job.Status == "failed" || job.Error != "" {
		msg := job.Error
		if msg == "" {
			msg = "no error message"
		}
		return &userError{msg: fmt.Sprintf("job %s failed: %s (task %s)", job.ID, msg, job.TaskID)}
	}
	return nil
}

func executionSummary(e *client.Execution) string {
	var s string
	switch {
	case e.Status == "failed":
		s = "failed: " + orDash(e.Error)
	case e.TimedOut:
		s = "timed out"
	case e.ExitCode != nil:
		s = fmt.Sprintf("exit %d", *e.ExitCode)
	default:
		s = e.Status
	}
	if d := fmtDurationMS(e.DurationMS); d != "" {
		s += ", " + d
	}
	return s
}

// displayCommand shows a command as the user wrote it: the script of sh -c, else the words.
func displayCommand(cmd string, args []string) string {
	if cmd == "sh" && len(args) == 2 && args[0] == "-c" {
		return args[1]
	}
	return strings.Join(append([]string{cmd}, args...), " ")
}

// writeLines writes s ending with a newline, so the next header starts on its own line.
func writeLines(w io.Writer, s string) {
	if s == "" {
		return
	}
	_, _ = io.WriteString(w, s)
	if !strings.HasSuffix(s, "\n") {
		_, _ = io.WriteString(w, "\n")
	}
}
