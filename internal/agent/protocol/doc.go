// Package protocol is the wire protocol between the host (internal/agent/client) and the guest agent
// (cmd/aetherium-agent, internal/agent/server). It is the same over every transport: a Unix socket (Docker),
// Firecracker vsock after its CONNECT handshake, TCP or virtio-serial (QEMU). The transport only has to provide
// one ordered, reliable byte stream; everything else (versioning, request ids, concurrency, streaming, flow
// control) is done here, so that one connection can carry many concurrent requests. That matters for
// virtio-serial, where there is exactly one byte stream per port.
//
// # Frames
//
// Everything on the wire is a frame:
//
//	+----------------+--------+-------------------+-----------------------+
//	| length: uint32 | type:  | stream id: uint32 | payload               |
//	| big endian     | uint8  | big endian        | (length - 5 bytes)    |
//	+----------------+--------+-------------------+-----------------------+
//
// length counts the bytes after itself (type, stream id and payload), so it is at least 5 and at most
// MaxFrameSize (1 MiB). A receiver checks the length before it allocates anything and drops the connection on a
// length out of range or an unknown frame type: both mean the peer is broken or speaks another protocol, and a
// byte stream cannot be resynchronised after that.
//
// Frame types:
//
//	HELLO    (1)  stream 0. JSON Hello. The first frame in each direction.
//	REQUEST  (2)  opens a stream. JSON Request {"method": ..., "params": {...}}.
//	RESPONSE (3)  ends a stream. JSON Response {"result": ...} or {"error": {"code": ..., "message": ...}}.
//	DATA     (4)  1 byte channel (0 stdin, 1 stdout, 2 stderr) then raw bytes; binary-safe, never empty.
//	              Client to agent only on channel 0 (input: a command's stdin, an upload's content).
//	END      (5)  1 byte channel: that channel of the stream is finished (EOF); from the client, END on
//	              channel 0 is the end of the input.
//	CANCEL   (6)  empty: the client gives up on the stream; the agent stops the work (kills the command).
//	WINDOW   (7)  4 bytes, big-endian uint32 > 0: flow-control credit for the stream's DATA (see below).
//	HEADER   (8)  JSON: the stream's metadata, sent by the agent at most once and before any DATA (file.read).
//	              Only sent on streams of methods behind FeatureFiles, so a client that never asks for them
//	              never sees one; a client never sends one.
//
// # Handshake and versions
//
// The client sends HELLO (role "client") first; the agent answers with its own HELLO (role "agent", its
// protocol_version, agent_version and features). The agent always answers, even on a version mismatch, so that
// the client can report both versions; on a mismatch the agent then closes the connection and the client
// reports a clear error naming both versions. Any frame before HELLO, or a second HELLO, is a protocol error.
// Version 1 is described here. A later version may change anything; features inside one version are announced
// in Hello.Features, and a peer uses a feature only when the other side lists it. Everything beyond health and
// plain exec arrived that way, so the walking skeleton's agents and clients still talk to today's: an old
// agent lists only "health" and "exec", and a new client refuses (client.ErrUnsupported) what needs more,
// before sending anything; an old client never asks for what it does not know, so it never gets a HEADER.
//
// # Streams
//
// A stream is one request and everything that belongs to it. The client picks the stream id of each request:
// client-initiated streams use odd ids (1, 3, 5, ...), never reused on one connection; even ids are reserved for
// streams the agent might open in a later version (notifications from background processes); id 0 is the
// connection itself. Frames of different streams interleave freely, so many requests run concurrently on one
// connection and a slow one never holds up the others. A stream ends with exactly one RESPONSE from the agent;
// every DATA and END frame of the stream comes before it. Frames for a stream id the receiver does not know (for
// instance output still in flight after the client sent CANCEL) are ignored.
//
// # Flow control
//
// Output is streamed, never buffered whole, and neither side buffers without bound. Each side announces in its
// HELLO a per-stream receive window (Hello.Window, DefaultWindow when zero): how many DATA bytes (not counting
// the channel byte) it accepts on one stream before it has consumed them. The sender keeps a credit per stream,
// starting at the peer's window, spends it on every DATA byte and stops sending when it reaches zero; the
// receiver returns credit with WINDOW frames as its consumer drains the data. A receiver that gets more than its
// window closes the connection. In the agent, a command whose output is not consumed therefore blocks on its
// pipe (at most one read buffer per channel is held in the agent), and in the client one slow consumer never
// blocks the connection's reader, so other streams keep flowing.
//
// # Methods (version 1)
//
// "health": no params; result HealthResult (agent version, protocol version, hostname, whether it is PID 1).
//
// "exec": params ExecParams. The agent runs argv (looked up in the request's PATH) in a new process group, with
// the environment PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin and HOME=/root overlaid by
// the request's env, in working_dir (default /), with stdin at /dev/null (unless "stdin"). It streams stdout
// and stderr as DATA frames while the command produces them, then END for each channel, then a RESPONSE whose
// result is ExecResult. A command that cannot be started is a result, not an error: exit code 127 (not found, bad working
// directory) or 126 (permission denied, not executable), with the reason on stderr. A command ended by a signal
// reports exit code 128+n and the signal's name, like a shell. When timeout_ns passes, or the client sends
// CANCEL, or the connection is lost, the agent kills the whole process group with SIGKILL (unless
// "keep_running", below); a timeout sets timed_out. After the command's main process exits, the agent reads what remains in its pipes for a short
// grace period; background processes that keep the pipes open longer are not waited for.
// An error RESPONSE ("bad_request", "unknown_method", "too_many_streams", "shutting_down", "internal") means
// the request itself was wrong or could not be served.
//
// Every command the agent runs is a process in its process table, named by ExecParams.id (letters, digits, '.',
// '_', '-'; the agent picks "p<n>" when it is empty) and returned as ExecResult.id; a second live process with the
// same id is refused ("exists"). ExecResult.peak_memory_kb is getrusage's maxrss of the command (which the
// kernel never lets fall below the agent's own resident set at the fork).
//
// # Exec extras (FeatureExecExtras, FeatureStdin, FeaturePty)
//
// "shell": a command line run as /bin/sh -c; exclusive with argv. "user": "name", "uid", "name:group" or
// "uid:gid", resolved from the guest's /etc/passwd and /etc/group (supplementary groups are the groups listing
// the user; HOME, USER and LOGNAME come from its entry unless env sets them; a uid without an entry runs with gid
// 0); an unknown name is the error "unknown_user". "keep_running": when the stream ends early (CANCEL, or the
// connection is lost) the command is not killed but goes on as a background process, its output kept from its
// start in the same rings as "process.start"'s; its stdin reaches EOF.
//
// "stdin": true makes the command's stdin a pipe fed from the client's DATA on channel 0 until its END. The
// agent grants credit with WINDOW frames as the command reads (its window is the one in its HELLO), so input
// waits in the client, not in the agent. A client that sends more than the granted credit breaks the protocol.
//
// "pty": {rows, cols, term} runs the command on a new pseudo-terminal, as the leader of a new session with the
// terminal as its controlling terminal; all its output arrives on channel 1, input (with "stdin") is typed into
// the terminal, and input EOF is not passed on (a terminal has none). TERM is term, else env's TERM, else
// xterm-256color. "resize" {id, rows, cols} changes the size of a running process's terminal.
//
// # Signals and background processes (FeatureSignal, FeatureProcess)
//
// "signal" {id, signal}: sends a signal ("SIGTERM", "TERM" or a number) to the process group of a running
// process, a streamed exec or a background one. "not_found" for an unknown id, "not_running" once its main
// process has exited (its pid, the group id, may then be reused).
//
// "process.start" (ExecParams without stdin) starts a background process and answers at once with its
// ProcessInfo. Its stdout and stderr (one stream with a pty) are kept in rings of the agent's
// ProcessOutputBytes (1 MiB by default) each, oldest bytes dropped and counted. "process.output" {id, channel,
// offset, max_bytes} sends what is kept from offset on as DATA on that channel, then its position (offset,
// next_offset, dropped, total, eof). "process.wait" {id, timeout_ns} answers once the process exited or the
// timeout passed, with its ProcessInfo (state "running" or "exited", and how it ended). "process.list" lists
// every process, streamed execs included (attached). "process.remove" forgets an exited process
// ("still_running" otherwise); exited processes are also forgotten after FinishedProcessTTL, and the oldest
// ones make room when MaxProcesses are kept ("too_many_processes" when every kept process runs).
//
// # Files (FeatureFiles)
//
// Paths must be absolute; they are cleaned; a NUL byte or more than 4095 bytes is "invalid_path". Errors carry
// the code of what the filesystem said: not_found, exists, not_a_directory, is_a_directory, not_empty,
// permission_denied, invalid_path, io_error; downloading a device or fifo is "not_a_regular_file".
//
// "file.write" {path, mode, owner, mkdir_parents, no_overwrite}: the content is the client's DATA on channel 0
// until END, with the same credit as stdin. The agent writes it to a temporary file in the target's directory,
// sets owner ("user[:group]" as for exec) and mode (permission bits 07777, default 0644), syncs it and renames it
// over the path (with no_overwrite, atomically refusing an existing one), so the path never holds a partial
// file; if the stream ends before END, the temporary file is removed. The result is the file's FileInfo.
//
// "file.read" {path}: a HEADER with the file's FileInfo (from the open file), then exactly that many bytes as
// DATA on channel 1, END, and a RESPONSE with the size sent; a file that shrank meanwhile ends with "io_error".
//
// "file.stat" {path}: FileInfo of the path itself (lstat: a symlink is described, with its link_target).
// "file.list" {path}: DATA on channel 1 carrying one JSON FileInfo per line, in directory order, then the count.
// "file.mkdir" {path, mode (default 0755), parents, owner}. "file.remove" {path, recursive}; removing "/" is
// refused. FileInfo.mode is the raw st_mode (type and permission bits, as stat(2) has them).
//
// # Power (FeaturePowerOff)
//
// "poweroff": the agent answers, then calls the handler its main gave it (guestinit.PowerOff or Reboot). Only an
// agent given a handler (PID 1 of a VM) lists the feature.
package protocol
