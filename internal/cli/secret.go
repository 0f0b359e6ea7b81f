package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/aetherium/aetherium/pkg/client"
)

// maxSecretBytes is the longest value the server takes (internal/secrets.MaxValueBytes).
const maxSecretBytes = 64 << 10

func (a *app) secretCommand() *cobra.Command {
	c := a.group("secret", "Manage your secrets: write-only values injected into executions with --secret-env")
	c.AddCommand(a.secretSet(), a.secretList(), a.secretRm())
	return c
}

func (a *app) secretSet() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "set NAME",
		Short: "Create or replace a secret, reading its value from stdin or --file (never from the command line)",
		Long: `Create or replace a secret. The value is read from --file, or else from stdin (typed without echo when stdin
is a terminal); one trailing newline is dropped. It is never taken from the command line, where it would show
in the process list and the shell's history. The server never shows it again: it is injected into the
environment of executions that ask for it (vm exec --secret-env VAR=NAME) and scrubbed from their output.`,
		Example: "  printf %s \"$GITHUB_TOKEN\" | aetherium secret set GITHUB_TOKEN\n  aetherium secret set DEPLOY_KEY --file ~/.ssh/deploy_key",
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "read the value from this file (- for stdin)")
	args := func(_ *cobra.Command, args []string) error {
		switch {
		case len(args) > 1:
			return errors.New("the value is never taken from the command line (it would show in the process " +
				"list and the shell history): pipe it on stdin or use --file")
		case len(args) == 0:
			return errors.New("want the secret's NAME")
		}
		return nil
	}
	return a.leaf(cmd, args, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		value, err := a.readSecretValue(args[0], file)
		if err != nil {
			return err
		}
		s, created, err := c.PutSecret(ctx, args[0], value)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, s)
		}
		verb := "replaced"
		if created {
			verb = "created"
		}
		fmt.Fprintf(a.streams.Out, "%s secret %s\n", verb, s.Name)
		return nil
	})
}

// readSecretValue reads a value from file, or stdin, dropping one trailing newline.
func (a *app) readSecretValue(name, file string) (string, error) {
	var (
		b   []byte
		err error
	)
	switch {
	case file != "" && file != "-":
		f, oerr := os.Open(file)
		if oerr != nil {
			return "", &userError{msg: fmt.Sprintf("read the value: %v", oerr)}
		}
		defer f.Close()
		b, err = io.ReadAll(io.LimitReader(f, maxSecretBytes+3))
	default:
		if f, ok := a.streams.In.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			fmt.Fprintf(a.streams.ErrOut, "value of %s (not echoed): ", name)
			b, err = term.ReadPassword(int(f.Fd()))
			fmt.Fprintln(a.streams.ErrOut)
		} else {
			b, err = io.ReadAll(io.LimitReader(a.streams.In, maxSecretBytes+3))
		}
	}
	if err != nil {
		return "", &userError{msg: fmt.Sprintf("read the value: %v", err)}
	}
	v := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	switch {
	case v == "":
		return "", &userError{msg: "the value is empty: pipe it on stdin or use --file"}
	case len(v) > maxSecretBytes:
		return "", &userError{msg: fmt.Sprintf("the value is longer than %d bytes", maxSecretBytes)}
	}
	return v, nil
}

func (a *app) secretList() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List your secrets (names and times; values are never shown)",
	}
	return a.leaf(cmd, cobra.NoArgs, exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, _ []string) error {
		l, err := c.ListSecrets(ctx)
		if err != nil {
			return err
		}
		if a.jsonOut {
			return printJSON(a.streams.Out, l)
		}
		if len(l.Secrets) == 0 {
			fmt.Fprintln(a.streams.ErrOut, "no secrets")
			return nil
		}
		now := time.Now()
		rows := make([][]string, len(l.Secrets))
		for i, s := range l.Secrets {
			used := "never"
			if s.LastUsedAt != nil {
				used = fmtAge(*s.LastUsedAt, now) + " ago"
			}
			rows[i] = []string{s.Name, fmtAge(s.CreatedAt, now), fmtAge(s.UpdatedAt, now), used}
		}
		return printTable(a.streams.Out, []string{"NAME", "AGE", "UPDATED", "LAST USED"}, rows)
	})
}

func (a *app) secretRm() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "rm NAME",
		Aliases: []string{"delete"},
		Short:   "Delete a secret",
	}
	return a.leaf(cmd, cobra.ExactArgs(1), exitFailure, func(ctx context.Context, c *client.Client, _ *cobra.Command, args []string) error {
		if err := c.DeleteSecret(ctx, args[0]); err != nil {
			return err
		}
		fmt.Fprintf(a.streams.Out, "deleted secret %s\n", args[0])
		return nil
	})
}
