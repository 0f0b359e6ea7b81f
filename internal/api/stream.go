package api

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// streamExecution serves an execution's output as server-sent events: `stdout` and `stderr` events (client.
// OutputChunk) as the command writes, or replayed from the store, and a last `end` event (client.ExecutionEnd).
// Errors found before the stream starts (unknown execution, another owner's, bad offsets) are ordinary JSON errors.
func (s *server) streamExecution(w http.ResponseWriter, r *http.Request) {
	id, ok := s.pathID(w, r, "execution")
	if !ok {
		return
	}
	opts := task.StreamOptions{Heartbeat: s.heartbeat}
	for _, p := range []struct {
		name string
		dst  *int64
	}{{"stdout_offset", &opts.StdoutOffset}, {"stderr_offset", &opts.StderrOffset}} {
		raw := r.URL.Query().Get(p.name)
		if raw == "" {
			continue
		}
		n, err := strconv.ParseInt(raw, 10, 64)
		if err != nil || n < 0 {
			s.writeError(w, r, http.StatusBadRequest, client.CodeBadRequest,
				fmt.Sprintf("%s: %q is not a non-negative integer", p.name, raw))
			return
		}
		*p.dst = n
	}
	ctx := r.Context()
	st, err := s.svc.OpenExecutionStream(ctx, ownerFrom(ctx), id, opts)
	if err != nil {
		s.writeServiceError(w, r, err)
		return
	}
	defer st.Close()

	rc := http.NewResponseController(w)
	// A stream lasts as long as its command: no write deadline (the server sets none today; this keeps it so).
	_ = rc.SetWriteDeadline(time.Time{})
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // tells nginx-like proxies not to buffer the stream
	w.WriteHeader(http.StatusOK)
	sw := &sseWriter{w: w, rc: rc}
	// Sent at once, so the client has the answer (and knows the subscription is live) before any output.
	if err := sw.comment("execution " + id); err != nil {
		return
	}
	if err := st.Run(ctx, sw.item); err != nil && ctx.Err() == nil {
		s.log.DebugContext(ctx, "execution stream ended early", "execution_id", id, "err", err,
			"request_id", requestIDFrom(ctx))
	}
}

// sseWriter writes stream items as server-sent events, flushing each one. Output goes out as text when it is valid
// UTF-8 and in base64 otherwise; a multi-byte character cut in two by a chunk boundary is held back until the rest
// of it arrives, so text output never turns into base64 because of where the command's writes happened to split.
type sseWriter struct {
	w   io.Writer
	rc  *http.ResponseController
	buf bytes.Buffer
	// per stream (stdout, stderr): offset of the next byte to send, and bytes held back at that offset
	next [2]int64
	held [2][]byte
}

func (sw *sseWriter) item(it task.StreamItem) error {
	switch it.Kind {
	case task.ItemHeartbeat:
		return sw.comment("ping")
	case task.ItemOutput:
		i := 0
		if it.Stream == task.StreamStderr {
			i = 1
		}
		if len(sw.held[i]) > 0 && it.Offset != sw.next[i]+int64(len(sw.held[i])) {
			// Output was lost after the held bytes: they will never be completed.
			if err := sw.flushHeld(i); err != nil {
				return err
			}
		}
		if len(sw.held[i]) == 0 {
			sw.next[i] = it.Offset
		}
		data := append(sw.held[i], it.Data...)
		cut := textCut(data)
		sw.held[i] = append([]byte(nil), data[cut:]...)
		if cut == 0 {
			return nil
		}
		return sw.output(i, data[:cut])
	case task.ItemEnd:
		for i := range sw.held {
			if err := sw.flushHeld(i); err != nil {
				return err
			}
		}
		e := it.End
		return sw.event("end", client.ExecutionEnd{
			Status: string(e.Status), ExitCode: e.ExitCode, TimedOut: e.TimedOut,
			StdoutTruncated: e.StdoutTruncated, StderrTruncated: e.StderrTruncated, Error: e.Error,
			StdoutBytes: e.StdoutBytes, StderrBytes: e.StderrBytes,
		})
	}
	return nil
}

func (sw *sseWriter) flushHeld(i int) error {
	if len(sw.held[i]) == 0 {
		return nil
	}
	data := sw.held[i]
	sw.held[i] = nil
	return sw.output(i, data)
}

func (sw *sseWriter) output(i int, data []byte) error {
	oc := client.OutputChunk{Offset: sw.next[i]}
	if utf8.Valid(data) {
		oc.Data = string(data)
	} else {
		oc.DataBase64 = base64.StdEncoding.EncodeToString(data)
	}
	sw.next[i] += int64(len(data))
	return sw.event([2]string{task.StreamStdout, task.StreamStderr}[i], oc)
}

// textCut returns how much of b to send now: all of it, unless b is valid UTF-8 but for an incomplete character at
// its end, which is held back.
func textCut(b []byte) int {
	if utf8.Valid(b) {
		return len(b)
	}
	for k := 1; k <= utf8.UTFMax-1 && k <= len(b); k++ {
		start := len(b) - k
		if utf8.RuneStart(b[start]) {
			if !utf8.FullRune(b[start:]) && utf8.Valid(b[:start]) {
				return start
			}
			break
		}
	}
	return len(b) // binary: sent as base64 as it is
}

func (sw *sseWriter) event(name string, v any) error {
	sw.buf.Reset()
	sw.buf.WriteString("event: ")
	sw.buf.WriteString(name)
	sw.buf.WriteString("\ndata: ")
	enc := json.NewEncoder(&sw.buf) // one line: JSON escapes every newline in strings
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode %s event: %w", name, err)
	}
	sw.buf.WriteByte('\n')
	return sw.send()
}

// idEvent writes an event with an id (what a client sends back as Last-Event-ID to resume after it).
func (sw *sseWriter) idEvent(id, name string, v any) error {
	sw.buf.Reset()
	sw.buf.WriteString("id: ")
	sw.buf.WriteString(id)
	sw.buf.WriteString("\nevent: ")
	sw.buf.WriteString(name)
	sw.buf.WriteString("\ndata: ")
	enc := json.NewEncoder(&sw.buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Errorf("encode %s event: %w", name, err)
	}
	sw.buf.WriteByte('\n')
	return sw.send()
}

func (sw *sseWriter) comment(text string) error {
	sw.buf.Reset()
	sw.buf.WriteString(": ")
	sw.buf.WriteString(text)
	sw.buf.WriteString("\n\n")
	return sw.send()
}

func (sw *sseWriter) send() error {
	if _, err := sw.w.Write(sw.buf.Bytes()); err != nil {
		return err
	}
	return sw.rc.Flush()
}
