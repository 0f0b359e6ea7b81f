// Package server is the guest side of the agent protocol (internal/agent/protocol): it serves connections from
// the host, runs commands (streamed, interactive with stdin or a pty, or in the background with their output
// kept in rings), delivers signals, moves files in and out, and powers the VM off on request. cmd/aetherium-agent
// wraps it in a binary; tests run it in process. It is Linux-only (process groups, waitid, ptys), like the
// guests it runs in.
//
// Every command is a process in the server's table while it runs, named by an id, so that signals, resizes and
// the background-process calls find it whichever connection they come on. A command whose caller leaves is
// killed with its process group, unless it was asked to keep running; background processes and kept ones live
// until they exit or the server closes.
package server
