package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agents"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/task"
)

func (w *Worker) bus() events.Bus { return w.cfg.Events }

// transcript collects a run's events and stores them in batches (every runEventFlushTime, or sooner when many
// wait), announcing each batch on the run's topic. Every event's text is scrubbed of the owner's secrets first.
type transcript struct {
	w     *Worker
	ctx   context.Context
	scrub *secrets.Scrubber

	mu      sync.Mutex
	run     *model.Run
	pending []*model.RunEvent
	stored  int
	dropped int
	closed  bool
	kick    chan struct{}
	done    chan struct{}
}

func (w *Worker) newTranscript(ctx context.Context, run *model.Run, scrub *secrets.Scrubber) *transcript {
	t := &transcript{w: w, ctx: context.WithoutCancel(ctx), run: run, scrub: scrub, kick: make(chan struct{}, 1),
		done: make(chan struct{})}
	go t.loop()
	return t
}

func (t *transcript) loop() {
	defer close(t.done)
	tick := time.NewTicker(runEventFlushTime)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-t.kick:
		}
		t.mu.Lock()
		closed := t.closed
		t.mu.Unlock()
		t.flush()
		if closed {
			return
		}
	}
}

// flush stores what is pending. A store that fails is retried for a while (persist); what it still cannot take
// is counted as dropped rather than held forever.
func (t *transcript) flush() {
	t.mu.Lock()
	batch, run := t.pending, t.run
	t.pending = nil
	t.mu.Unlock()
	if len(batch) == 0 {
		return
	}
	_, err := persist(t.ctx, t.w.log, func(ctx context.Context) (struct{}, error) {
		for _, e := range batch {
			e.Seq = 0 // numbered by the store; a retried append numbers again
		}
		return struct{}{}, task.AppendRunEvents(ctx, t.w.cfg.Store, t.w.bus(), run, batch...)
	})
	if err != nil {
		t.w.log.Error("could not store a run's events", "run_id", run.ID, "events", len(batch), "err", err)
		t.mu.Lock()
		t.dropped += len(batch)
		t.mu.Unlock()
	}
}

// add queues one event whose data is v (marshalled to JSON) or raw JSON.
func (t *transcript) add(typ string, data json.RawMessage) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if t.stored >= maxRunEvents {
		t.dropped++
		return
	}
	t.stored++
	t.pending = append(t.pending, &model.RunEvent{Type: typ, Data: data, Time: time.Now().UTC()})
	if len(t.pending) >= 200 {
		select {
		case t.kick <- struct{}{}:
		default:
		}
	}
}

func (t *transcript) text(typ, s string) {
	s = t.scrub.String(s)
	if len(s) > maxRunEventBytes {
		s = s[:maxRunEventBytes] + " [cut: the line was longer than " + strconv.Itoa(maxRunEventBytes) + " bytes]"
	}
	b, _ := json.Marshal(map[string]string{"text": s})
	t.add(typ, b)
}

func (t *transcript) status(status, message string) {
	b, _ := json.Marshal(map[string]string{"status": status, "message": t.scrub.String(message)})
	t.add(model.RunEventStatus, b)
}

// setRun updates the run the events are announced with.
func (t *transcript) setRun(r *model.Run) {
	t.mu.Lock()
	t.run = r
	t.mu.Unlock()
}

// close stores what is pending and stops; later events are ignored.
func (t *transcript) close() {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.closed = true
	t.mu.Unlock()
	select {
	case t.kick <- struct{}{}:
	default:
	}
	<-t.done
	if t.dropped > 0 {
		t.w.log.Warn("a run's transcript lost events", "run_id", t.run.ID, "dropped", t.dropped)
	}
}

// agentOutput reads an agent's stdout and stderr into its run's transcript, line by line, and keeps what the
// result needs: claude-code's result event (stream-json), or the last lines of text, and stderr's tail.
type agentOutput struct {
	t      *transcript
	format string

	out, errs lineSplitter
	mu        sync.Mutex
	res       model.RunResult
	sawResult bool
	lastText  []string
	tail      []byte
}

func newAgentOutput(t *transcript, format string) *agentOutput {
	o := &agentOutput{t: t, format: format}
	o.out.line = o.stdoutLine
	o.errs.line = o.stderrLine
	return o
}

func (o *agentOutput) stdout() io.Writer { return &o.out }
func (o *agentOutput) stderr() io.Writer { return &o.errs }

// finish passes on the last lines that had no newline.
func (o *agentOutput) finish() {
	o.out.flush()
	o.errs.flush()
}

func (o *agentOutput) stdoutLine(line []byte, cut bool) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	o.ship(0, line)
	if o.format == agents.OutputClaudeStreamJSON && !cut && json.Valid(line) && bytes.HasPrefix(bytes.TrimSpace(line), []byte("{")) {
		scrubbed := o.t.scrub.Bytes(line)
		if !json.Valid(scrubbed) {
			scrubbed = line // a secret's mask never breaks JSON; this is belt and braces
		}
		o.noteEvent(scrubbed)
		if len(scrubbed) > maxRunEventBytes {
			o.t.add(model.RunEventAgent, cutEvent(scrubbed))
			return
		}
		var compact bytes.Buffer
		if json.Compact(&compact, scrubbed) == nil {
			scrubbed = compact.Bytes()
		}
		o.t.add(model.RunEventAgent, append(json.RawMessage(nil), scrubbed...))
		return
	}
	o.t.text(model.RunEventOutput, string(line))
	o.mu.Lock()
	o.lastText = append(o.lastText, o.t.scrub.String(string(line)))
	if len(o.lastText) > 20 {
		o.lastText = o.lastText[1:]
	}
	o.mu.Unlock()
}

func (o *agentOutput) stderrLine(line []byte, _ bool) {
	o.ship(1, line)
	o.t.text(model.RunEventStderr, string(line))
	o.mu.Lock()
	o.tail = append(o.tail, o.t.scrub.Bytes(line)...)
	o.tail = append(o.tail, '\n')
	if len(o.tail) > stderrTailBytes {
		o.tail = o.tail[len(o.tail)-stderrTailBytes:]
	}
	o.mu.Unlock()
}

// claudeResult is the part of claude-code's last stream-json event a run keeps.
type claudeResult struct {
	Type         string   `json:"type"`
	Subtype      string   `json:"subtype"`
	IsError      bool     `json:"is_error"`
	NumTurns     int      `json:"num_turns"`
	Result       string   `json:"result"`
	TotalCostUSD *float64 `json:"total_cost_usd"`
}

func (o *agentOutput) noteEvent(line []byte) {
	var r claudeResult
	if json.Unmarshal(line, &r) != nil || r.Type != "result" {
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sawResult = true
	o.res.Text, o.res.IsError, o.res.Subtype, o.res.Turns = truncate(r.Result, 64<<10), r.IsError, truncate(r.Subtype, 64), max(r.NumTurns, 0)
	o.res.AgentCostUSD = r.TotalCostUSD
}

// result is what the output said of the agent's end.
func (o *agentOutput) result() model.RunResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	r := o.res
	if !o.sawResult {
		if o.format == agents.OutputClaudeStreamJSON {
			r.IsError, r.Subtype = true, "no_result"
		}
		r.Text = truncate(joinLines(o.lastText), 64<<10)
	}
	r.StderrTail = string(bytes.ToValidUTF8(o.tail, []byte("?")))
	return r
}

func joinLines(l []string) string {
	var b bytes.Buffer
	for i, s := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(s)
	}
	return b.String()
}

// cutEvent stands for an agent event too large to keep: its type and the start of its text.
func cutEvent(line []byte) json.RawMessage {
	var head struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(line, &head)
	b, _ := json.Marshal(map[string]any{"type": head.Type, "aetherium_cut": true, "bytes": len(line),
		"head": string(bytes.ToValidUTF8(line[:min(len(line), 4096)], []byte("?")))})
	return b
}

// lineSplitter is an io.Writer that calls line for every complete line written (without its newline); a line
// longer than maxRunLineBytes is passed on in pieces, marked cut.
type lineSplitter struct {
	buf  []byte
	line func(line []byte, cut bool)
}

func (l *lineSplitter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			l.buf = append(l.buf, p...)
			if len(l.buf) > maxRunLineBytes {
				l.line(l.buf, true)
				l.buf = l.buf[:0]
			}
			break
		}
		if len(l.buf) > 0 {
			l.buf = append(l.buf, p[:i]...)
			l.line(bytes.TrimSuffix(l.buf, []byte("\r")), false)
			l.buf = l.buf[:0]
		} else {
			l.line(bytes.TrimSuffix(p[:i], []byte("\r")), false)
		}
		p = p[i+1:]
	}
	return n, nil
}

func (l *lineSplitter) flush() {
	if len(l.buf) > 0 {
		l.line(l.buf, false)
		l.buf = nil
	}
}

// ship sends a line of the agent's output (stream 0 stdout, 1 stderr), scrubbed, to the log sink as kind "exec",
// with the run's id in its structured metadata, so `GET /logs?run_id=` finds what the agent printed, as for the
// lines of an execution.
func (o *agentOutput) ship(stream int, line []byte) {
	if o.t.w == nil || o.t.w.cfg.Logs == nil {
		return
	}
	sink := o.t.w.cfg.Logs
	o.t.mu.Lock()
	run := o.t.run
	o.t.mu.Unlock()
	text := o.t.scrub.String(strings.ToValidUTF8(string(bytes.TrimSuffix(line, []byte("\r"))), "\uFFFD"))
	if len(text) > maxLogLine {
		text = text[:maxLogLine]
	}
	meta := map[string]string{logs.MetaRunID: run.ID, logs.MetaOwnerID: run.OwnerID,
		logs.MetaStream: [2]string{task.StreamStdout, task.StreamStderr}[stream]}
	if run.VMID != "" {
		meta[logs.MetaVMID] = run.VMID
	}
	if run.TaskID != "" {
		meta[logs.MetaTaskID] = run.TaskID
	}
	_ = sink.Push(o.t.ctx, logs.Entry{Time: time.Now(), Line: text, Metadata: meta,
		Labels: logs.Labels{Service: "aetherium", Role: "worker", Worker: o.t.w.cfg.ID, Level: "info", Kind: logs.KindExec}})
}
