// Package server is the guest side of the agent protocol (internal/agent/protocol): it serves connections from
// the host, runs commands and streams their output. cmd/aetherium-agent wraps it in a binary; tests run it in
// process. It is Linux-only (process groups, waitid), like the guests it runs in.
package server
