// Package agent holds the host<->guest agent contract: request and result types shared by the guest agent
// (cmd/aetherium-agent) and the host-side client that every VM backend uses. The wire protocol lives in
// internal/agent/protocol; this file is the API above it, identical over every transport.
package agent

import (
	"context"
	"net"
	"time"
)

// ProtocolVersion is the version of the wire protocol spoken by this build.
const ProtocolVersion = 1

// DefaultMaxOutputBytes caps each of stdout and stderr in a buffered exec result.
const DefaultMaxOutputBytes = 1 << 20

// ExecRequest asks the agent to run one command.
type ExecRequest struct {
	// Argv is the program and its arguments. The program is looked up in PATH.
	Argv       []string          `json:"argv"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	// Timeout kills the command's whole process group when it passes; zero means none.
	Timeout time.Duration `json:"timeout,omitempty"`
	// MaxOutputBytes caps each captured stream of a buffered exec; beyond it output is dropped and flagged.
	// Zero means DefaultMaxOutputBytes.
	MaxOutputBytes int `json:"max_output_bytes,omitempty"`
}

// ExecResult is how a command ended. A non-zero exit code is a result, not an error.
type ExecResult struct {
	ExitCode int `json:"exit_code"`
	// Signal names the signal that ended the command, if one did (ExitCode is then 128+n).
	Signal          string        `json:"signal,omitempty"`
	Stdout          []byte        `json:"stdout"`
	Stderr          []byte        `json:"stderr"`
	StdoutTruncated bool          `json:"stdout_truncated"`
	StderrTruncated bool          `json:"stderr_truncated"`
	TimedOut        bool          `json:"timed_out"`
	Duration        time.Duration `json:"duration"`
	StartedAt       time.Time     `json:"started_at"`
}

// Info describes a running agent.
type Info struct {
	Version         string `json:"version"`
	ProtocolVersion int    `json:"protocol_version"`
	Hostname        string `json:"hostname"`
	PID1            bool   `json:"pid1"`
}

// Dialer opens a new byte stream to the agent. Each transport (Unix socket, vsock CONNECT handshake, TCP,
// virtio-serial multiplexed) provides one.
type Dialer func(ctx context.Context) (net.Conn, error)

// UnixDialer dials the agent's Unix socket at path (the Docker backend's transport).
func UnixDialer(path string) Dialer {
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}
}
