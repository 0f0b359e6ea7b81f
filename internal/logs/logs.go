// Package logs is Aetherium's log seam: the servers' own logs, task lifecycle, executions' output and VMs' consoles
// are Entries pushed into a Sink. Two sinks exist: Stdout (the default, slog text or JSON on the process's stderr)
// and Loki (a batching, retrying push client of Loki's HTTP API, which Loki-compatible stores such as VictoriaLogs
// accept as well).
//
// Labels are few and bounded (service, role, worker, level, kind) because every distinct label set is a stream in
// Loki and streams are what it indexes; ids (VM, task, execution, run, owner) are unbounded and go into structured
// metadata, never into labels.
package logs

import (
	"context"
	"time"
)

// Kinds of entries (the kind label).
const (
	KindServer  = "server"  // the servers' own slog records
	KindTask    = "task"    // task lifecycle: queued, started, finished
	KindExec    = "exec"    // an execution's stdout/stderr lines
	KindConsole = "console" // a VM's serial console and agent log
)

// Metadata keys of structured metadata.
const (
	MetaVMID        = "vm_id"
	MetaTaskID      = "task_id"
	MetaExecutionID = "execution_id"
	MetaRunID       = "run_id"
	MetaOwnerID     = "owner_id"
	MetaStream      = "stream" // stdout or stderr of an execution
)

// Labels are an entry's stream labels: a fixed, bounded set. An empty field is not sent.
type Labels struct {
	Service string // always "aetherium" unless configured otherwise
	Role    string // serve, gateway or worker
	Worker  string // the worker id (a bounded set: the fleet's hosts)
	Level   string // debug, info, warn, error
	Kind    string // one of the Kind constants
}

// Map returns the labels that are set, keyed by their Loki names.
func (l Labels) Map() map[string]string {
	m := make(map[string]string, 5)
	for k, v := range map[string]string{"service": l.Service, "role": l.Role, "worker": l.Worker, "level": l.Level, "kind": l.Kind} {
		if v != "" {
			m[k] = v
		}
	}
	return m
}

// Entry is one log line.
type Entry struct {
	Time     time.Time
	Line     string
	Labels   Labels
	Metadata map[string]string // ids and other unbounded values; never labels
}

// size estimates the bytes an entry takes in memory and on the wire, for the buffer's byte bound.
func (e Entry) size() int {
	n := len(e.Line) + 48
	for k, v := range e.Metadata {
		n += len(k) + len(v) + 8
	}
	return n
}

// Sink receives entries. Push never blocks on the network: a sink that cannot keep up drops and counts.
type Sink interface {
	// Push hands entries to the sink. It returns an error only for a closed sink.
	Push(ctx context.Context, entries ...Entry) error
	// Health reports whether the sink's backend is reachable.
	Health(ctx context.Context) error
	// Close flushes what is buffered, waiting at most until ctx ends, and stops the sink.
	Close(ctx context.Context) error
}

// Filter selects entries for a query. Ids are matched exactly against structured metadata; Contains is a plain
// substring of the line (never a query expression).
type Filter struct {
	OwnerID     string // required: every query is owner-scoped
	VMID        string
	ExecutionID string
	RunID       string
	TaskID      string
	Kind        string
	Contains    string
	Since       time.Time
	Until       time.Time
	Limit       int
}

// Querier answers log queries.
type Querier interface {
	Query(ctx context.Context, f Filter) ([]Entry, error)
}
