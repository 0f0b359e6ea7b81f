//go:build linux

package vmproc

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/vmm"
)

// AgentRunner runs commands through a VM's cached agent client the way the process backends do: a client whose
// session was closed under it (the VM restarted, say) is fetched again and the command retried once, a stream only
// if no output was delivered yet; an agent that cannot be reached is reported as vmm.ErrNotRunning when the VM's
// process is gone, so callers can tell a stopped VM from a slow agent.
type AgentRunner struct {
	// Backend names the backend in errors ("qemu").
	Backend string
	// Client returns the VM's cached agent client, making one when there is none (vmm.ErrNotFound for no VM).
	Client func(id string) (*agentclient.Client, error)
	// Running reports whether the VM's process runs and, if not, the VM's state for the error; err when the VM's
	// state cannot be read.
	Running func(id string) (running bool, state string, err error)
	// Forget drops the VM's cached client.
	Forget func(id string)
}

// Exec runs one command and returns its result.
func (r AgentRunner) Exec(ctx context.Context, id string, req agent.ExecRequest) (*agent.ExecResult, error) {
	c, err := r.Client(id)
	if err != nil {
		return nil, err
	}
	res, err := c.Exec(ctx, req)
	if errors.Is(err, agentclient.ErrClosed) && ctx.Err() == nil {
		if c, err = r.Client(id); err != nil {
			return nil, err
		}
		res, err = c.Exec(ctx, req)
	}
	if err == nil {
		return res, nil
	}
	return nil, r.execError(ctx, id, err)
}

// ExecStream runs one command with its output copied to the writers as it comes.
func (r AgentRunner) ExecStream(ctx context.Context, id string, req agent.ExecRequest, stdout, stderr io.Writer) (*agent.ExecResult, error) {
	c, err := r.Client(id)
	if err != nil {
		return nil, err
	}
	out, errOut := &CountingWriter{W: stdout}, &CountingWriter{W: stderr}
	res, err := c.ExecStream(ctx, req, out, errOut)
	if errors.Is(err, agentclient.ErrClosed) && ctx.Err() == nil && out.N == 0 && errOut.N == 0 {
		if c, err = r.Client(id); err != nil {
			return nil, err
		}
		res, err = c.ExecStream(ctx, req, out, errOut)
	}
	if err == nil {
		return res, nil
	}
	return nil, r.execError(ctx, id, err)
}

func (r AgentRunner) execError(ctx context.Context, id string, err error) error {
	if (errors.Is(err, agentclient.ErrUnavailable) || errors.Is(err, agentclient.ErrClosed)) && ctx.Err() == nil {
		running, state, serr := r.Running(id)
		if serr != nil {
			r.Forget(id)
			return fmt.Errorf("%s backend: exec in vm %s: %w (agent: %v)", r.Backend, id, serr, err)
		}
		if !running {
			r.Forget(id)
			return fmt.Errorf("%s backend: exec in vm %s: %w (%s)", r.Backend, id, vmm.ErrNotRunning, state)
		}
	}
	return fmt.Errorf("%s backend: exec in vm %s: %w", r.Backend, id, err)
}
