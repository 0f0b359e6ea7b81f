package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/aetherium/aetherium/pkg/client"
)

// Exit codes other than a command's own.
const (
	exitFailure     = 1
	exitUsage       = 2
	exitTimeout     = 124 // a command killed by its timeout, as timeout(1) reports it
	exitOwnFailure  = 125 // vm exec / job run failed themselves, as docker run reports it
	exitInterrupted = 130 // Ctrl-C while following a run, as a shell reports a command ended by SIGINT
)

// ExitError asks main to exit with Code. The commands have already printed whatever the user needs to see (their
// error message, or the output of a remote command that exited non-zero), so main prints nothing more.
type ExitError struct {
	Code int
}

func (e *ExitError) Error() string { return "exit status " + strconv.Itoa(e.Code) }

// ExitCode is the process exit code for the error a command returned: 0 for nil, Code for an *ExitError, 1 for any
// other error.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee.Code
	}
	return exitFailure
}

// usageErr is bad input on the command line: exit code 2 and a pointer to --help.
type usageErr struct{ err error }

func (e *usageErr) Error() string { return e.err.Error() }
func (e *usageErr) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return &usageErr{err: fmt.Errorf(format, args...)} }

// userError is a message composed for the user by a command, optionally with its own exit code.
type userError struct {
	msg  string
	code int // 0: the command's failure code
}

func (e *userError) Error() string { return e.msg }

// usageError prints a usage error at once: cobra's own printing is silenced (see leaf).
func (a *app) usageError(cmd *cobra.Command, err error) error {
	fmt.Fprintf(a.streams.ErrOut, "error: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
	return &ExitError{Code: exitUsage}
}

// flagError reports a flag that does not parse. An unknown flag after the VM of `vm exec` is most likely the
// remote command's own flag, hence the hint.
func (a *app) flagError(cmd *cobra.Command, err error) error {
	n := cmd.Name()
	if n == "run" && cmd.HasParent() && cmd.Parent().Name() != "job" {
		n = "" // the agent run takes no remote command
	}
	if p := cmd.Parent(); p != nil && p.Name() == "run" && p.HasParent() && p.Parent().Name() != "job" &&
		strings.Contains(err.Error(), "unknown flag") && p.Flags().Lookup(strings.TrimPrefix(flagName(err), "--")) != nil {
		// `run --repo URL get`: the prompt was taken for the subcommand.
		err = fmt.Errorf("%w (a prompt that is a subcommand's name goes after --: %s --repo URL -- %s)", err, p.CommandPath(), cmd.Name())
	}
	if n == "exec" || n == "run" || n == "shell" || n == "spawn" {
		err = fmt.Errorf("%w (put the remote command after --)", err)
	}
	return a.usageError(cmd, err)
}

// flagName is the flag an "unknown flag: --x" error names.
func flagName(err error) string {
	_, name, _ := strings.Cut(err.Error(), "unknown flag: ")
	name, _, _ = strings.Cut(name, " ")
	return name
}

// report prints err as one line and turns it into the *ExitError main honours.
func (a *app) report(cmd *cobra.Command, err error, failCode int) error {
	if err == nil {
		return nil
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		return ee
	}
	var ue *usageErr
	if errors.As(err, &ue) {
		return a.usageError(cmd, ue.err)
	}
	code := failCode
	var me *userError
	if errors.As(err, &me) && me.code != 0 {
		code = me.code
	}
	fmt.Fprintln(a.streams.ErrOut, "error: "+a.describe(err))
	return &ExitError{Code: code}
}

// describe is the one-line message for err.
func (a *app) describe(err error) string {
	var (
		me *userError
		ae *client.APIError
		we *client.WaitError
		oe *net.OpError
	)
	switch {
	case errors.As(err, &me):
		return me.msg
	case errors.Is(err, errNoKey):
		return "no API key: " + a.keyHint
	case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
		return fmt.Sprintf("the server at %s rejected the API key: %v; %s", a.serverURL, ae, a.keyHint)
	case errors.As(err, &ae):
		return ae.Error()
	case errors.As(err, &we):
		return a.waitMessage(we, "")
	case errors.As(err, &oe) && oe.Op == "dial":
		var dns *net.DNSError
		if errors.As(oe, &dns) {
			return fmt.Sprintf("cannot reach the Aetherium server at %s (cannot resolve %s); check --server / %s", a.serverURL, dns.Name, EnvServer)
		}
		return fmt.Sprintf("cannot reach the Aetherium server at %s (%s); is it running? Start one with `%s serve`, or point --server / %s at it",
			a.serverURL, dialCause(oe), a.prog, EnvServer)
	case errors.Is(err, context.DeadlineExceeded) && a.timeout > 0:
		return fmt.Sprintf("timed out after %v (--timeout)", a.timeout)
	case errors.Is(err, context.DeadlineExceeded):
		return "timed out"
	case errors.Is(err, context.Canceled):
		return "interrupted"
	}
	return err.Error()
}

// waitMessage explains a wait that ended early: the work goes on server-side, and how to follow it.
func (a *app) waitMessage(we *client.WaitError, what string) string {
	why := "interrupted"
	if errors.Is(we.Err, context.DeadlineExceeded) {
		why = "gave up waiting: deadline exceeded"
		if a.timeout > 0 {
			why = fmt.Sprintf("gave up waiting after %v (--timeout)", a.timeout)
		}
	}
	if what == "" {
		what = "task " + we.TaskID
	}
	return fmt.Sprintf("%s: %s is still in progress; follow it with `%s task get %s`", why, what, a.prog, we.TaskID)
}

func dialCause(oe *net.OpError) string {
	switch {
	case errors.Is(oe, syscall.ECONNREFUSED):
		return "connection refused"
	case oe.Timeout():
		return "connection timed out"
	}
	return oe.Err.Error()
}
