package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
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

	// Behind FeatureSignal.
	MethodSignal = "signal"
	// Behind FeaturePty.
	MethodResize = "resize"
	// Behind FeatureProcess.
	MethodProcessStart  = "process.start"
	MethodProcessList   = "process.list"
	MethodProcessOutput = "process.output"
	MethodProcessWait   = "process.wait"
	MethodProcessRemove = "process.remove"
	// Behind FeatureFiles.
	MethodFileWrite  = "file.write"
	MethodFileRead   = "file.read"
	MethodFileStat   = "file.stat"
	MethodFileList   = "file.list"
	MethodFileMkdir  = "file.mkdir"
	MethodFileRemove = "file.remove"
	// Behind FeaturePowerOff.
	MethodPowerOff = "poweroff"
)

// Features an agent announces in its HELLO. A client uses a method, an ExecParams field or a frame type only when
// the agent lists the feature that brings it; an agent of the walking skeleton lists only health and exec.
const (
	FeatureHealth = "health"
	FeatureExec   = "exec"
	// ExecParams.shell, .user, .id and .keep_running; ExecResult.id and .peak_memory_kb.
	FeatureExecExtras = "exec.extras"
	// ExecParams.stdin: the client streams DATA on channel 0 with the agent's window.
	FeatureStdin = "exec.stdin"
	// ExecParams.pty and "resize".
	FeaturePty = "exec.pty"
	// "signal".
	FeatureSignal = "signal"
	// The "process.*" methods.
	FeatureProcess = "process"
	// The "file.*" methods and the HEADER frame.
	FeatureFiles = "files"
	// "poweroff" (listed only by an agent that was given a power-off handler).
	FeaturePowerOff = "poweroff"
)

// Error codes of an error RESPONSE (see agent.Code* for what each means).
const (
	CodeBadRequest       = agent.CodeBadRequest
	CodeUnknownMethod    = agent.CodeUnknownMethod
	CodeTooManyStreams   = agent.CodeTooManyStreams
	CodeShuttingDown     = agent.CodeShuttingDown
	CodeInternal         = agent.CodeInternal
	CodeUnknownUser      = agent.CodeUnknownUser
	CodeNotFound         = agent.CodeNotFound
	CodeExists           = agent.CodeExists
	CodeNotADirectory    = agent.CodeNotADirectory
	CodeIsADirectory     = agent.CodeIsADirectory
	CodeNotARegularFile  = agent.CodeNotARegularFile
	CodeNotEmpty         = agent.CodeNotEmpty
	CodePermissionDenied = agent.CodePermissionDenied
	CodeReadOnly         = agent.CodeReadOnly
	CodeInvalidPath      = agent.CodeInvalidPath
	CodeIOError          = agent.CodeIOError
	CodeNotRunning       = agent.CodeNotRunning
	CodeStillRunning     = agent.CodeStillRunning
	CodeTooManyProcesses = agent.CodeTooManyProcesses
	CodeUnsupported      = agent.CodeUnsupported
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

// ExecParams are the params of "exec" and "process.start". They are a wire type of their own, not
// agent.ExecRequest, so that a change to the Go API can never silently change the protocol.
type ExecParams struct {
	Argv       []string          `json:"argv,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	// TimeoutNS kills the process group after this many nanoseconds; zero means no timeout.
	TimeoutNS int64 `json:"timeout_ns,omitempty"`

	// FeatureExecExtras.
	Shell       string `json:"shell,omitempty"`
	User        string `json:"user,omitempty"`
	ID          string `json:"id,omitempty"`
	KeepRunning bool   `json:"keep_running,omitempty"`
	// FeatureStdin: the command's stdin is what the client sends on channel 0, until its END.
	Stdin bool `json:"stdin,omitempty"`
	// FeaturePty.
	Pty *PtyParams `json:"pty,omitempty"`
}

// PtyParams ask for a pseudo-terminal.
type PtyParams struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
	Term string `json:"term,omitempty"`
}

// ExecResult is the result of "exec" (and, in ProcessInfo, how a process ended). The output itself travelled in
// DATA frames before it.
type ExecResult struct {
	ExitCode   int       `json:"exit_code"`
	Signal     string    `json:"signal,omitempty"`
	TimedOut   bool      `json:"timed_out"`
	DurationNS int64     `json:"duration_ns"`
	StartedAt  time.Time `json:"started_at"`
	// FeatureExecExtras.
	ID           string `json:"id,omitempty"`
	PeakMemoryKB int64  `json:"peak_memory_kb,omitempty"`
}

// SignalParams are the params of "signal": Signal is a name ("SIGTERM" or "TERM") or a number, sent to the
// process group of process ID.
type SignalParams struct {
	ID     string `json:"id"`
	Signal string `json:"signal"`
}

// ResizeParams are the params of "resize".
type ResizeParams struct {
	ID   string `json:"id"`
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ProcessParams name one process ("process.remove").
type ProcessParams struct {
	ID string `json:"id"`
}

// ProcessWaitParams are the params of "process.wait": wait at most TimeoutNS (zero: until it exits).
type ProcessWaitParams struct {
	ID        string `json:"id"`
	TimeoutNS int64  `json:"timeout_ns,omitempty"`
}

// ProcessOutputParams are the params of "process.output": up to MaxBytes (zero: all that is kept) of channel
// "stdout" or "stderr" from Offset on.
type ProcessOutputParams struct {
	ID       string `json:"id"`
	Channel  string `json:"channel"`
	Offset   int64  `json:"offset"`
	MaxBytes int    `json:"max_bytes,omitempty"`
}

// ProcessOutputResult is the result of "process.output"; the bytes came before it as DATA on the channel asked for.
type ProcessOutputResult struct {
	Offset     int64 `json:"offset"`
	NextOffset int64 `json:"next_offset"`
	Dropped    int64 `json:"dropped"`
	Total      int64 `json:"total"`
	EOF        bool  `json:"eof"`
}

// ProcessInfo describes one process ("process.start", "process.wait", "process.list").
type ProcessInfo struct {
	ID          string      `json:"id"`
	PID         int         `json:"pid"`
	Command     string      `json:"command"`
	Pty         bool        `json:"pty"`
	Attached    bool        `json:"attached"`
	State       string      `json:"state"`
	StartedAt   time.Time   `json:"started_at"`
	Result      *ExecResult `json:"result,omitempty"`
	StdoutBytes int64       `json:"stdout_bytes"`
	StderrBytes int64       `json:"stderr_bytes"`
}

// ProcessListResult is the result of "process.list".
type ProcessListResult struct {
	Processes []ProcessInfo `json:"processes"`
}

// FileWriteParams are the params of "file.write"; the content follows as DATA on channel 0, ended by END.
type FileWriteParams struct {
	Path string `json:"path"`
	// Mode is the permission bits (07777); zero means 0644.
	Mode         uint32 `json:"mode,omitempty"`
	Owner        string `json:"owner,omitempty"`
	MkdirParents bool   `json:"mkdir_parents,omitempty"`
	NoOverwrite  bool   `json:"no_overwrite,omitempty"`
}

// PathParams name one path ("file.read", "file.stat", "file.list").
type PathParams struct {
	Path string `json:"path"`
}

// FileMkdirParams are the params of "file.mkdir".
type FileMkdirParams struct {
	Path    string `json:"path"`
	Mode    uint32 `json:"mode,omitempty"`
	Parents bool   `json:"parents,omitempty"`
	Owner   string `json:"owner,omitempty"`
}

// FileRemoveParams are the params of "file.remove".
type FileRemoveParams struct {
	Path      string `json:"path"`
	Recursive bool   `json:"recursive,omitempty"`
}

// FileInfo describes a file: the result of "file.stat", "file.write" and "file.mkdir", the HEADER of
// "file.read", and one line of "file.list". Mode is the raw st_mode (type and permission bits as in stat(2)).
// In the HEADER of "file.read", Size -1 means unknown: stat said 0 (a /proc file), the content runs to its end.
type FileInfo struct {
	Path       string `json:"path"`
	Size       int64  `json:"size"`
	Mode       uint32 `json:"mode"`
	MtimeNS    int64  `json:"mtime_ns"`
	LinkTarget string `json:"link_target,omitempty"`
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
}

// FileReadResult is the result of "file.read": how many bytes were sent (the size its HEADER announced, unless
// that was -1).
type FileReadResult struct {
	Size int64 `json:"size"`
}

// FileListResult is the result of "file.list"; the entries came before it as DATA on channel 1, one JSON
// FileInfo per line.
type FileListResult struct {
	Count int `json:"count"`
}

// DecodeParams decodes a request's params into v, rejecting unknown fields and trailing data: a client asking
// for something this agent does not do (a field of a later version) must get an error, not a command run
// without it.
func DecodeParams(raw json.RawMessage, v any) error {
	if len(raw) == 0 {
		return errors.New("missing")
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the params")
	}
	return nil
}
