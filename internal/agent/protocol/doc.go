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
//	END      (5)  1 byte channel: that channel of the stream is finished (EOF).
//	CANCEL   (6)  empty: the client gives up on the stream; the agent stops the work (kills the command).
//	WINDOW   (7)  4 bytes, big-endian uint32 > 0: flow-control credit for the stream's DATA (see below).
//
// # Handshake and versions
//
// The client sends HELLO (role "client") first; the agent answers with its own HELLO (role "agent", its
// protocol_version, agent_version and features). The agent always answers, even on a version mismatch, so that
// the client can report both versions; on a mismatch the agent then closes the connection and the client
// reports a clear error naming both versions. Any frame before HELLO, or a second HELLO, is a protocol error.
// Version 1 is described here. A later version may change anything; features inside one version are announced
// in Hello.Features, and a peer uses a feature only when the other side lists it.
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
// the request's env, in working_dir (default /), with stdin at /dev/null. It streams stdout and stderr as DATA
// frames while the command produces them, then END for each channel, then a RESPONSE whose result is
// ExecResult. A command that cannot be started is a result, not an error: exit code 127 (not found, bad working
// directory) or 126 (permission denied, not executable), with the reason on stderr. A command ended by a signal
// reports exit code 128+n and the signal's name, like a shell. When timeout_ns passes, or the client sends
// CANCEL, or the connection is lost, the agent kills the whole process group with SIGKILL; a timeout sets
// timed_out. After the command's main process exits, the agent reads what remains in its pipes for a short
// grace period; background processes that keep the pipes open longer are not waited for.
// An error RESPONSE ("bad_request", "unknown_method", "too_many_streams", "shutting_down", "internal") means
// the request itself was wrong or could not be served.
//
// # Room for later (not in version 1)
//
// stdin: ExecParams gains "stdin": true (feature "stdin"); the client sends DATA on channel 0 and END when done,
// and the agent grants credit with WINDOW frames using the client's HELLO window. pty: "pty": {rows, cols} plus a
// "resize" method naming the stream. files: "file.read"/"file.write" methods whose content travels as DATA on
// the stream. background processes: "exec" with "background": true answers at once with a process id, and
// agent-initiated (even-id) streams carry its output and exit. Each arrives behind a feature name in Hello.
package protocol
