// Package agent holds the host<->guest agent contract: request and result types shared by the guest agent
// (cmd/aetherium-agent) and the host-side client that every VM backend uses. The wire protocol lives in
// internal/agent/protocol; this file is the API above it, identical over every transport.
package agent

import (
	"context"
	"io"
	"io/fs"
	"net"
	"time"
)

// ProtocolVersion is the version of the wire protocol spoken by this build.
const ProtocolVersion = 1

// DefaultMaxOutputBytes caps each of stdout and stderr in a buffered exec result.
const DefaultMaxOutputBytes = 1 << 20

// DefaultProcessOutputBytes is how much of each output stream the agent keeps for a background process (a ring:
// older output is dropped and counted).
const DefaultProcessOutputBytes = 1 << 20

// ExecRequest asks the agent to run one command.
type ExecRequest struct {
	// Argv is the program and its arguments. The program is looked up in PATH. Set Argv or Shell, not both.
	Argv []string `json:"argv"`
	// Shell is a command line run with /bin/sh -c.
	Shell      string            `json:"shell,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	WorkingDir string            `json:"working_dir,omitempty"`
	// Timeout kills the command's whole process group when it passes; zero means none.
	Timeout time.Duration `json:"timeout,omitempty"`
	// MaxOutputBytes caps each captured stream of a buffered exec; beyond it output is dropped and flagged.
	// Zero means DefaultMaxOutputBytes.
	MaxOutputBytes int `json:"max_output_bytes,omitempty"`
	// User runs the command as a user of the guest: a name or a uid, optionally followed by ":group" (a name or
	// a gid), as in "nobody", "1000" or "app:staff". Names are resolved from the guest's /etc/passwd and
	// /etc/group; supplementary groups are set, and HOME, USER and LOGNAME come from the user's entry unless Env
	// sets them. A uid without an entry runs with gid 0 and no supplementary groups. Empty: the agent's user.
	User string `json:"user,omitempty"`
	// Pty runs the command on a pseudo-terminal of this size, as the leader of a new session. Its output (stdout
	// and stderr alike) arrives as stdout.
	Pty *PtySize `json:"pty,omitempty"`
	// ID names the process in the agent, for Signal, Resize and the background process calls; it must be unique
	// among the agent's processes (letters, digits, '.', '_', '-'; at most 128). Empty: the agent picks one,
	// returned in ExecResult.ID and ProcessInfo.ID.
	ID string `json:"id,omitempty"`
	// KeepRunningOnDisconnect keeps the command running when its caller goes away (the connection breaks or the
	// caller's context ends): it goes on as a background process under its ID, with its output kept as for
	// StartProcess. By default the agent kills the command's process group instead.
	KeepRunningOnDisconnect bool `json:"keep_running_on_disconnect,omitempty"`
}

// PtySize is the size of a pseudo-terminal, and what it is.
type PtySize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
	// Term is the command's TERM; empty: Env's TERM, or xterm-256color.
	Term string `json:"term,omitempty"`
}

// ExecIO connects a command to the caller while it runs. Nil readers and writers mean no input (/dev/null)
// and discarded output.
type ExecIO struct {
	// Stdin is copied to the command's standard input (or its terminal) as the command reads it; its EOF
	// closes the command's stdin. With a pty, EOF is not passed on (a terminal has none: send ^D).
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
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
	// ID is the process's name in the agent (ExecRequest.ID or the one the agent picked).
	ID string `json:"id,omitempty"`
	// PeakMemoryKB is the largest resident set of the command (or of any of its descendants it waited for), in
	// KiB, from getrusage's maxrss; zero when unknown. It is never below the agent's own resident set when the
	// command started (a few MiB in a guest): the kernel counts the memory the child shared with the agent
	// before its execve.
	PeakMemoryKB int64 `json:"peak_memory_kb,omitempty"`
}

// ProcessState says whether a process still runs.
type ProcessState string

// Process states.
const (
	ProcessRunning ProcessState = "running"
	ProcessExited  ProcessState = "exited"
)

// ProcessInfo describes a process the agent keeps: a background process (StartProcess) or a command whose caller
// went away while it kept running (ExecRequest.KeepRunningOnDisconnect), or a command still being streamed.
type ProcessInfo struct {
	ID  string `json:"id"`
	PID int    `json:"pid"`
	// Command is the command line, shortened when long.
	Command string `json:"command"`
	Pty     bool   `json:"pty"`
	// Attached is true while a caller streams the process's output (an exec in progress).
	Attached  bool         `json:"attached"`
	State     ProcessState `json:"state"`
	StartedAt time.Time    `json:"started_at"`
	// Result is how the process ended, once it has (without output: see ReadProcessOutput).
	Result *ExecResult `json:"result,omitempty"`
	// StdoutBytes and StderrBytes count the output the process has produced so far.
	StdoutBytes int64 `json:"stdout_bytes"`
	StderrBytes int64 `json:"stderr_bytes"`
}

// OutputStream names one output stream of a process.
type OutputStream string

// Output streams.
const (
	Stdout OutputStream = "stdout"
	Stderr OutputStream = "stderr"
)

// ProcessOutput is a piece of a background process's output. Offsets count bytes from the start of the stream.
type ProcessOutput struct {
	Data []byte `json:"data"`
	// Offset is where Data starts: the offset asked for, or later if that part was dropped.
	Offset int64 `json:"offset"`
	// NextOffset is the offset to ask for next (Offset + len(Data)).
	NextOffset int64 `json:"next_offset"`
	// Dropped counts the bytes of the stream that are no longer kept (the oldest, past the agent's buffer).
	Dropped int64 `json:"dropped"`
	// Total is how many bytes the stream has had so far.
	Total int64 `json:"total"`
	// EOF means the process has exited and NextOffset is the end of the stream: nothing more will come.
	EOF bool `json:"eof"`
}

// FileInfo describes a file in the guest.
type FileInfo struct {
	// Path is the cleaned absolute path (for a directory listing, the entry's path).
	Path string `json:"path"`
	// Name is the last element of Path.
	Name string `json:"name"`
	Size int64  `json:"size"`
	// Mode holds the type and permission bits as io/fs defines them.
	Mode    fs.FileMode `json:"mode"`
	ModTime time.Time   `json:"mod_time"`
	IsDir   bool        `json:"is_dir"`
	// LinkTarget is what a symbolic link points to (the link itself is described, not its target).
	LinkTarget string `json:"link_target,omitempty"`
	UID        int    `json:"uid"`
	GID        int    `json:"gid"`
}

// UploadRequest says where and how an uploaded file is written. The content is written to a temporary file in
// the same directory and renamed over Path once complete, so Path never holds a partial file.
type UploadRequest struct {
	// Path is absolute; it is cleaned.
	Path string `json:"path"`
	// Mode holds the permission bits and setuid, setgid, sticky (as fs.ModeSetuid... or as chmod's 07000 bits);
	// zero means 0644.
	Mode fs.FileMode `json:"mode,omitempty"`
	// Owner is "user[:group]" as in ExecRequest.User; empty: the agent's user.
	Owner string `json:"owner,omitempty"`
	// MkdirParents creates missing parent directories (mode 0755, owned by the agent's user).
	MkdirParents bool `json:"mkdir_parents,omitempty"`
	// NoOverwrite fails with CodeExists if Path exists, instead of replacing it.
	NoOverwrite bool `json:"no_overwrite,omitempty"`
}

// MkdirRequest says which directory to create.
type MkdirRequest struct {
	Path string `json:"path"`
	// Mode holds the permission bits; zero means 0755.
	Mode fs.FileMode `json:"mode,omitempty"`
	// Parents creates missing parents and accepts an existing directory, like mkdir -p.
	Parents bool `json:"parents,omitempty"`
	// Owner is "user[:group]" as in ExecRequest.User (for the directory created last); empty: the agent's user.
	Owner string `json:"owner,omitempty"`
}

// Error codes of the agent, machine-readable and stable: the API maps them to its own errors.
const (
	CodeBadRequest       = "bad_request"        // the request is malformed or contradicts itself
	CodeUnknownMethod    = "unknown_method"     // the agent does not know the method (an older agent)
	CodeTooManyStreams   = "too_many_streams"   // too many concurrent requests on one connection
	CodeShuttingDown     = "shutting_down"      // the agent is stopping; the work was not done or was killed
	CodeInternal         = "internal"           // the agent failed
	CodeUnknownUser      = "unknown_user"       // a user or group name is not in the guest's /etc/passwd or /etc/group
	CodeNotFound         = "not_found"          // no such file, directory or process
	CodeExists           = "exists"             // the file, directory or process id exists already
	CodeNotADirectory    = "not_a_directory"    // a path element (or the target) is not a directory
	CodeIsADirectory     = "is_a_directory"     // a file operation on a directory
	CodeNotARegularFile  = "not_a_regular_file" // a download of a device, socket or fifo
	CodeNotEmpty         = "not_empty"          // a non-recursive remove of a directory with entries
	CodePermissionDenied = "permission_denied"  // the guest's permissions refuse it
	CodeReadOnly         = "read_only"          // a write to a read-only filesystem (EROFS)
	CodeInvalidPath      = "invalid_path"       // not absolute, contains NUL, too long, or "/" where that is refused
	CodeIOError          = "io_error"           // the guest's filesystem failed (full disk, read error...)
	CodeNotRunning       = "not_running"        // a signal or resize for a process that has exited
	CodeStillRunning     = "still_running"      // removing a process that has not exited
	CodeTooManyProcesses = "too_many_processes" // the agent keeps as many processes as it may
	CodeUnsupported      = "unsupported"        // the agent cannot do this here (no power-off handler...)
)

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
