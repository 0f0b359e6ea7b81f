package worker

import (
	"bytes"
	"context"
	"strings"
	"time"

	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/task"
)

// maxLogLine bounds one shipped line: a command printing megabytes without a newline is shipped in pieces of this
// size rather than held in memory.
const maxLogLine = 16 << 10

// teeLines ships the complete lines of p (scrubbed output of stream i) to the log sink as kind "exec" entries,
// keeping an unfinished line for the next write. o.mu is held.
func (o *execOutput) teeLines(i int, p []byte) {
	if o.w.cfg.Logs == nil || len(p) == 0 {
		return
	}
	buf := append(o.partial[i], p...)
	var entries []logs.Entry
	for {
		nl := bytes.IndexByte(buf, '\n')
		if nl < 0 && len(buf) < maxLogLine {
			break
		}
		end, next := nl, nl+1
		if nl < 0 || nl > maxLogLine {
			end, next = maxLogLine, maxLogLine
		}
		entries = append(entries, o.logEntry(i, buf[:end]))
		buf = buf[next:]
	}
	o.partial[i] = append(o.partial[i][:0:0], buf...)
	o.shipLines(entries)
}

// teeFlush ships what is left of unfinished lines, at the end of the execution. o.mu is held.
func (o *execOutput) teeFlush() {
	if o.w.cfg.Logs == nil {
		return
	}
	var entries []logs.Entry
	for i := range o.partial {
		if len(o.partial[i]) > 0 {
			entries = append(entries, o.logEntry(i, o.partial[i]))
			o.partial[i] = nil
		}
	}
	o.shipLines(entries)
}

func (o *execOutput) logEntry(i int, line []byte) logs.Entry {
	meta := map[string]string{logs.MetaExecutionID: o.exec.ID, logs.MetaVMID: o.exec.VMID, logs.MetaOwnerID: o.exec.OwnerID,
		logs.MetaStream: [2]string{task.StreamStdout, task.StreamStderr}[i]}
	if o.exec.TaskID != "" {
		meta[logs.MetaTaskID] = o.exec.TaskID
	}
	return logs.Entry{Time: time.Now(), Line: string(bytes.TrimSuffix(line, []byte("\r"))),
		Labels:   logs.Labels{Service: "aetherium", Role: "worker", Worker: o.w.cfg.ID, Level: "info", Kind: logs.KindExec},
		Metadata: meta}
}

func (o *execOutput) shipLines(entries []logs.Entry) {
	if len(entries) > 0 {
		// Push only enqueues (the Loki sink drops and counts when it cannot keep up): the command is never slowed.
		_ = o.w.cfg.Logs.Push(context.WithoutCancel(o.ctx), entries...)
	}
}

// consoleTailBytes is how much of a VM's console log is shipped when the VM is deleted.
const consoleTailBytes = 256 << 10

// consoleSource is a backend that keeps a console log per VM (qemu).
type consoleSource interface {
	ConsoleLog(id string, max int64) ([]byte, error)
}

// shipConsole sends the tail of a VM's console log to the log sink as kind "console" entries, best effort, before
// the backend removes it: so what a VM printed can be looked up after it is gone. The lines are the guest's
// (hostile) output: they travel as data only, made valid UTF-8.
func (w *Worker) shipConsole(ctx context.Context, vmID, ownerID string) {
	src, ok := w.cfg.Backend.(consoleSource)
	if w.cfg.Logs == nil || !ok {
		return
	}
	data, err := src.ConsoleLog(vmID, consoleTailBytes)
	if err != nil {
		w.log.Debug("no console log to ship", "vm_id", vmID, "err", err)
		return
	}
	entries := consoleEntries(data, w.cfg.ID, vmID, ownerID, time.Now())
	if len(entries) > 0 {
		_ = w.cfg.Logs.Push(context.WithoutCancel(ctx), entries...)
	}
}

// consoleEntries splits console output into entries; the lines have no time of their own, so they get now with
// one nanosecond between them, which keeps their order in the store.
func consoleEntries(data []byte, workerID, vmID, ownerID string, now time.Time) []logs.Entry {
	lines := strings.Split(strings.ToValidUTF8(string(data), "\uFFFD"), "\n")
	out := make([]logs.Entry, 0, len(lines))
	start := now.Add(-time.Duration(len(lines)))
	for i, l := range lines {
		l = strings.TrimRight(l, "\r")
		if strings.TrimSpace(l) == "" {
			continue
		}
		if len(l) > maxLogLine {
			l = l[:maxLogLine]
		}
		out = append(out, logs.Entry{Time: start.Add(time.Duration(i)), Line: l,
			Labels:   logs.Labels{Service: "aetherium", Role: "worker", Worker: workerID, Level: "info", Kind: logs.KindConsole},
			Metadata: map[string]string{logs.MetaVMID: vmID, logs.MetaOwnerID: ownerID, logs.MetaStream: "console"}})
	}
	return out
}
