//go:build linux

package tools

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
)

// Target is a root filesystem that tools are installed into: a running guest (AgentTarget) or a template's
// staging directory (the image package's chroot). Paths are absolute inside the target. Commands run as root.
type Target interface {
	// Run runs argv (argv[0] looked up in env's PATH) with env and returns its exit code and its combined output
	// (capped). err is only for a command that could not be run at all.
	Run(ctx context.Context, argv []string, env map[string]string) (RunResult, error)
	// WriteFile writes r to path with mode, creating missing parent directories. path appears only once complete.
	WriteFile(ctx context.Context, path string, r io.Reader, mode fs.FileMode) error
	// ReadFile returns a file's content, at most limit bytes (more is an error); fs.ErrNotExist when absent.
	ReadFile(ctx context.Context, path string, limit int64) ([]byte, error)
	// Exists says whether path exists (a symlink counts, whatever it points to).
	Exists(ctx context.Context, path string) (bool, error)
	// String names the target in messages.
	String() string
}

// RunResult is what a command in a target did.
type RunResult struct {
	ExitCode int
	Output   []byte // stdout then stderr
}

// maxRunOutput caps the output kept from a command (an installer's output is only for error messages).
const maxRunOutput = 256 << 10

// AgentTarget installs into a running guest through its agent: files are uploaded, commands run by the agent.
// The guest needs no network.
type AgentTarget struct {
	c    *agentclient.Client
	name string
}

// NewAgentTarget returns a target for the guest behind c; name (e.g. the VM id) appears in messages.
func NewAgentTarget(c *agentclient.Client, name string) *AgentTarget {
	return &AgentTarget{c: c, name: name}
}

func (a *AgentTarget) String() string { return "vm " + a.name }

// commandTimeout bounds one command in a guest; dpkg or a first run of a large binary under emulation is slow,
// but nothing an installer runs should take this long.
const commandTimeout = 10 * time.Minute

// Run runs argv through the agent.
func (a *AgentTarget) Run(ctx context.Context, argv []string, env map[string]string) (RunResult, error) {
	res, err := a.c.Exec(ctx, agent.ExecRequest{Argv: argv, Env: env, Timeout: commandTimeout, MaxOutputBytes: maxRunOutput})
	if err != nil {
		return RunResult{}, fmt.Errorf("%s: run %q: %w", a, argv[0], err)
	}
	out := append(append([]byte{}, res.Stdout...), res.Stderr...)
	if res.TimedOut {
		out = append(out, fmt.Sprintf("\n(killed after %s)", commandTimeout)...)
	}
	return RunResult{ExitCode: res.ExitCode, Output: out}, nil
}

// WriteFile uploads r; the agent writes a temporary file and renames it into place.
func (a *AgentTarget) WriteFile(ctx context.Context, path string, r io.Reader, mode fs.FileMode) error {
	if _, err := a.c.Upload(ctx, agent.UploadRequest{Path: path, Mode: mode, MkdirParents: true}, r); err != nil {
		return fmt.Errorf("%s: upload %s: %w", a, path, err)
	}
	return nil
}

// ReadFile downloads path.
func (a *AgentTarget) ReadFile(ctx context.Context, path string, limit int64) ([]byte, error) {
	var buf bytes.Buffer
	w := &limitWriter{w: &buf, n: limit}
	if _, err := a.c.Download(ctx, path, w); err != nil {
		if errors.Is(err, errTooLarge) {
			return nil, fmt.Errorf("%s: %s is larger than %d bytes", a, path, limit)
		}
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%s: %s: %w", a, path, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("%s: download %s: %w", a, path, err)
	}
	return buf.Bytes(), nil
}

// Exists asks the agent to stat path.
func (a *AgentTarget) Exists(ctx context.Context, path string) (bool, error) {
	_, err := a.c.Stat(ctx, path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%s: stat %s: %w", a, path, err)
	}
	return true, nil
}

var errTooLarge = errors.New("too large")

type limitWriter struct {
	w io.Writer
	n int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > l.n {
		return 0, errTooLarge
	}
	l.n -= int64(len(p))
	return l.w.Write(p)
}
