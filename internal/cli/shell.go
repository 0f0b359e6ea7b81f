package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/aetherium/aetherium/pkg/client"
)

func (a *app) vmShell() *cobra.Command {
	var (
		env          []string
		opts         client.ShellOptions
		tty, noTTY   bool
		workdir, usr string
	)
	cmd := &cobra.Command{
		Use:   "shell VM [-- COMMAND [ARGS...]]",
		Short: "Open an interactive shell in a VM, or run a command on a terminal there",
		Long: `Open an interactive shell in a VM (by id or name), or run COMMAND there, connected to this terminal. The
exit code is the remote command's own (128+n when signal n ended it); 125 means the session could not be opened.

When stdin is a terminal the command runs on a pseudo-terminal of the same size (resized with this one) and the
local terminal is put in raw mode until the session ends: ^C, ^D and ^Z go to the remote command. Otherwise (a
pipe, a file) stdin and stdout/stderr are passed as they are, and the end of stdin closes the command's stdin.
--tty and --no-tty override the choice; with --tty and piped input, the command must end by itself (send exit).`,
		Example: "  aetherium vm shell web\n  aetherium vm shell web -- top\n  echo 'uname -a' | aetherium vm shell web -- sh",
	}
	f := cmd.Flags()
	f.BoolVarP(&tty, "tty", "t", false, "run on a pseudo-terminal even when stdin is not a terminal")
	f.BoolVarP(&noTTY, "no-tty", "T", false, "run without a pseudo-terminal even when stdin is a terminal")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable, as `KEY=VALUE` (repeatable)")
	f.StringVarP(&workdir, "workdir", "w", "", "working directory in the VM")
	f.StringVarP(&usr, "user", "u", "", "run as this user of the VM, `USER[:GROUP]`")
	shellArgs := func(cmd *cobra.Command, args []string) error {
		dash := cmd.ArgsLenAtDash()
		switch {
		case len(args) == 0 || dash == 0:
			return errors.New("want a VM: vm shell VM [-- COMMAND [ARGS...]]")
		case dash < 0 && len(args) > 1, dash > 1:
			return fmt.Errorf("unexpected argument %q: put the command after --", args[1])
		case tty && noTTY:
			return errors.New("--tty and --no-tty are mutually exclusive")
		}
		var err error
		opts.Env, err = parseKV(env, "--env")
		return err
	}
	return a.leaf(cmd, shellArgs, exitOwnFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		id, _, err := resolveVM(ctx, c, args[0])
		if err != nil {
			return err
		}
		opts.Command, opts.WorkingDir, opts.User = args[1:], workdir, usr
		inFd, inTerm := a.terminalFd(a.streams.In)
		opts.TTY = (inTerm || tty) && !noTTY
		sizeFd := -1
		if opts.TTY {
			opts.Term = firstNonEmpty(a.getenv("TERM"), "xterm-256color")
			if fd, ok := a.terminalFd(a.streams.Out); ok {
				sizeFd = fd
			} else if inTerm {
				sizeFd = inFd
			}
			if sizeFd >= 0 {
				if w, h, err := term.GetSize(sizeFd); err == nil && w > 0 && h > 0 {
					opts.Rows, opts.Cols = uint16(h), uint16(w)
				}
			}
		}
		return a.runShell(ctx, c, id, args[0], opts, inTerm && opts.TTY, inFd, sizeFd)
	})
}

// terminalFd returns the descriptor of s when it is a terminal.
func (a *app) terminalFd(s any) (int, bool) {
	f, ok := s.(interface{ Fd() uintptr })
	if !ok {
		return -1, false
	}
	fd := int(f.Fd())
	return fd, term.IsTerminal(fd)
}

// runShell runs one session: raw mode and resizes when the local terminal is used, stdin pumped in, output copied
// out, and the remote exit code as ours.
func (a *app) runShell(ctx context.Context, c *client.Client, vmID, vmArg string, opts client.ShellOptions, raw bool, inFd, sizeFd int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	sh, err := c.OpenShell(ctx, vmID, opts)
	if err != nil {
		var se *client.ShellError
		if errors.As(err, &se) {
			return &userError{msg: fmt.Sprintf("could not open a shell in vm %s: %s", vmArg, se.Message)}
		}
		return err
	}
	defer sh.Close()

	var restoreOnce sync.Once
	restore := func() {}
	if raw {
		old, err := term.MakeRaw(inFd)
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		restore = func() { restoreOnce.Do(func() { _ = term.Restore(inFd, old) }) }
		defer restore()
	}
	if opts.TTY && sizeFd >= 0 {
		go watchResize(ctx, sizeFd, func(rows, cols uint16) { _ = sh.Resize(rows, cols) })
	}
	go func() {
		// Blocks in a Read of a terminal until a key is pressed, even after the session: main exits anyway.
		_, err := io.Copy(sh, a.streams.In)
		if err == nil && !opts.TTY {
			_ = sh.CloseStdin()
		}
	}()
	exit, err := sh.Wait(a.streams.Out, a.streams.ErrOut)
	restore()
	if err != nil {
		var se *client.ShellError
		switch {
		case errors.As(err, &se):
			return &userError{msg: fmt.Sprintf("shell in vm %s: %s (%s)", vmArg, se.Message, se.Code)}
		case ctx.Err() != nil:
			return ctx.Err()
		}
		return &userError{msg: fmt.Sprintf("the shell connection to vm %s broke: %v", vmArg, err)}
	}
	if exit.TimedOut {
		return &ExitError{Code: exitTimeout}
	}
	if code := exit.ExitCode; code != 0 {
		if c := code & 0xff; c != 0 {
			return &ExitError{Code: c}
		}
		return &ExitError{Code: exitFailure}
	}
	return nil
}
