package worker

import (
	"bytes"
	"context"
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
