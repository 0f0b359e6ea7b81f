// Package guestinit does what an init system would do when the guest agent (cmd/aetherium-agent) is PID 1 of a
// VM: mount the kernel filesystems, set the hostname, bring up loopback, and power the VM off on request.
//
// It is only for a real VM whose kernel starts the agent directly. In a Docker sandbox the engine has done all of
// this (and the agent lacks the privileges anyway); Init is idempotent, so calling it there would find everything
// mounted and do nothing, but the agent should not call it.
//
// Reaping orphaned processes, the other duty of PID 1, is internal/agent/server's Reaper, because it must
// cooperate with the commands the server waits for.
package guestinit
