package client

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/protocol"
)

// StartProcess starts a background process and returns at once. Its output is kept in the agent (the last
// agent.DefaultProcessOutputBytes of each stream) for ReadProcessOutput; WaitProcess waits for it, Signal
// signals it, RemoveProcess forgets it once it has exited. req.Stdin-like input is not available to background
// processes; req.Pty is (its output is then one stream, stdout).
func (c *Client) StartProcess(ctx context.Context, req agent.ExecRequest) (*agent.ProcessInfo, error) {
	params, features := execParams(req)
	features = append(features, protocol.FeatureProcess)
	var info protocol.ProcessInfo
	if err := c.callInto(ctx, protocol.MethodProcessStart, params, &info, features...); err != nil {
		return nil, err
	}
	return processInfo(info), nil
}

// ListProcesses lists the agent's processes: background ones, execs kept running after their caller left, and
// execs being streamed (Attached), oldest first.
func (c *Client) ListProcesses(ctx context.Context) ([]agent.ProcessInfo, error) {
	var res protocol.ProcessListResult
	if err := c.callInto(ctx, protocol.MethodProcessList, struct{}{}, &res, protocol.FeatureProcess); err != nil {
		return nil, err
	}
	out := make([]agent.ProcessInfo, 0, len(res.Processes))
	for _, p := range res.Processes {
		out = append(out, *processInfo(p))
	}
	return out, nil
}

// ReadProcessOutput returns up to maxBytes (<= 0: all that is kept) of one output stream of a process, from
// offset on. Offsets count from the start of the stream; pass the result's NextOffset to read on. What the
// agent no longer keeps is skipped (and counted in Dropped).
func (c *Client) ReadProcessOutput(ctx context.Context, id string, stream agent.OutputStream, offset int64, maxBytes int) (*agent.ProcessOutput, error) {
	var data bytes.Buffer
	raw, err := c.call(ctx, protocol.MethodProcessOutput,
		protocol.ProcessOutputParams{ID: id, Channel: string(stream), Offset: offset, MaxBytes: max(maxBytes, 0)},
		func(_ protocol.Channel, p []byte) error {
			data.Write(p)
			return nil
		}, protocol.FeatureProcess)
	if err != nil {
		return nil, err
	}
	var r protocol.ProcessOutputResult
	if err := decodeResult(protocol.MethodProcessOutput, raw, &r); err != nil {
		return nil, err
	}
	if got := int64(data.Len()); got != r.NextOffset-r.Offset {
		return nil, fmt.Errorf("%w: agent process.output: got %d bytes, the agent says %d", ErrUnavailable, got, r.NextOffset-r.Offset)
	}
	return &agent.ProcessOutput{Data: data.Bytes(), Offset: r.Offset, NextOffset: r.NextOffset, Dropped: r.Dropped,
		Total: r.Total, EOF: r.EOF}, nil
}

// WaitProcess waits until the process exits, timeout passes (zero: no limit) or ctx ends. Running past the
// timeout is not an error: the returned state says agent.ProcessRunning.
func (c *Client) WaitProcess(ctx context.Context, id string, timeout time.Duration) (*agent.ProcessInfo, error) {
	var info protocol.ProcessInfo
	if err := c.callInto(ctx, protocol.MethodProcessWait, protocol.ProcessWaitParams{ID: id, TimeoutNS: int64(timeout)},
		&info, protocol.FeatureProcess); err != nil {
		return nil, err
	}
	return processInfo(info), nil
}

// RemoveProcess forgets an exited process and its output (CodeStillRunning if it runs: signal it first).
// Exited processes are also forgotten by themselves after a while (an hour by default).
func (c *Client) RemoveProcess(ctx context.Context, id string) error {
	return c.callInto(ctx, protocol.MethodProcessRemove, protocol.ProcessParams{ID: id}, nil, protocol.FeatureProcess)
}

func processInfo(p protocol.ProcessInfo) *agent.ProcessInfo {
	info := &agent.ProcessInfo{
		ID:          p.ID,
		PID:         p.PID,
		Command:     p.Command,
		Pty:         p.Pty,
		Attached:    p.Attached,
		State:       agent.ProcessState(p.State),
		StartedAt:   p.StartedAt,
		StdoutBytes: p.StdoutBytes,
		StderrBytes: p.StderrBytes,
	}
	if p.Result != nil {
		info.Result = execResult(*p.Result)
	}
	return info
}
