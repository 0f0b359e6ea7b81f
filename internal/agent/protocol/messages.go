package protocol

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
)

// Version is the protocol version this package speaks; it is the one the agent contract announces.
const Version = agent.ProtocolVersion

// DefaultWindow is the per-stream receive window a peer grants when its HELLO leaves Window at zero.
const DefaultWindow = 256 << 10

// MaxWindow bounds the window a peer may announce, so credit arithmetic cannot overflow.
const MaxWindow = 1 << 30

// Roles in a HELLO.
const (
	RoleClient = "client"
	RoleAgent  = "agent"
)

// Methods of protocol version 1.
const (
	MethodHealth = "health"
	MethodExec   = "exec"
)

// Features an agent of this version announces.
const (
	FeatureHealth = "health"
	FeatureExec   = "exec"
)

// Error codes of an error RESPONSE.
const (
	CodeBadRequest     = "bad_request"
	CodeUnknownMethod  = "unknown_method"
	CodeTooManyStreams = "too_many_streams"
	CodeShuttingDown   = "shutting_down"
	CodeInternal       = "internal"
)

// Hello is the payload of a HELLO frame.
type Hello struct {
	ProtocolVersion int `json:"protocol_version"`
	// AgentVersion is the agent's software version; a client leaves it empty.
	AgentVersion string `json:"agent_version,omitempty"`
	Role         string `json:"role"`
	// Window is the per-stream receive window the sender grants for DATA it receives; zero means DefaultWindow.
	Window   uint32   `json:"window,omitempty"`
	Features []string `json:"features,omitempty"`
}

// EffectiveWindow is h.Window with the default applied and bounded by MaxWindow.
func (h Hello) EffectiveWindow() uint32 {
	switch {
	case h.Window == 0:
		return DefaultWindow
	case h.Window > MaxWindow:
		return MaxWindow
	}
	return h.Window
}

// Request is the payload of a REQUEST frame.
type Request struct {
	Method string          `json:"method"`
	Params json.RawMessage `json:"params,omitempty"`
}

// Response is the payload of a RESPONSE frame: Result or Error, never both.
type Response struct {
	Result json.RawMessage `json:"result,omitempty"`
	Error  *Error          `json:"error,omitempty"`
}

// Error is a request-level failure reported by the agent.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return fmt.Sprintf("%s: %s", e.Code, e.Message) }

// HealthResult is the result of "health".
type HealthResult struct {
	Version         string `json:"version"`
	ProtocolVersion int    `json:"protocol_version"`
	Hostname        string `json:"hostname"`
	PID1            bool   `json:"pid1"`
}

// ExecParams are the params of "exec". They are a wire type of their own, not agent.ExecRequest, so that a
// change to the Go API can never silently change the protocol.
type ExecParams struct {
	Argv       []string          `json:"argv"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	// TimeoutNS kills the process group after this many nanoseconds; zero means no timeout.
	TimeoutNS int64 `json:"timeout_ns,omitempty"`
}

// ExecResult is the result of "exec". The output itself travelled in DATA frames before it.
type ExecResult struct {
	ExitCode   int       `json:"exit_code"`
	Signal     string    `json:"signal,omitempty"`
	TimedOut   bool      `json:"timed_out"`
	DurationNS int64     `json:"duration_ns"`
	StartedAt  time.Time `json:"started_at"`
}
