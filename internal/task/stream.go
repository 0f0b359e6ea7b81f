package task

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/model"
)

// Live output of executions.
//
// The worker running an execution publishes its output, in batches, on ExecutionOutputTopic as EventExecutionOutput
// events (OutputEvent), saves the output so far (up to the stored cap) in the execution row now and then, and
// announces the end (EventExecutionEnd, EndEvent) after the final row is written. A reader subscribes first, then
// reads the row, replays what is stored and goes on with the live chunks past it, deduplicated by offset
// (ExecutionStream). The bus may drop events: a chunk that leaves a hole is held back until the row catches up
// (the periodic save), and a lost end is noticed by re-reading the row now and then.

// Event types on ExecutionOutputTopic.
const (
	EventExecutionOutput = "execution.output"
	EventExecutionEnd    = "execution.end"
)

// Stream names of OutputEvent.
const (
	StreamStdout = "stdout"
	StreamStderr = "stderr"
)

// MaxChunkBytes bounds the data of one output event, so that a chatty command never makes huge bus messages, and
// the pieces in which stored output is replayed.
const MaxChunkBytes = 32 << 10

// ExecutionOutputTopic is the topic of an execution's live output and end.
func ExecutionOutputTopic(executionID string) string { return "executions/" + executionID + "/output" }

// OutputEvent is the data of an EventExecutionOutput: bytes of one stream, at Offset bytes from its start.
type OutputEvent struct {
	Stream string `json:"stream"`
	Offset int64  `json:"offset"`
	Data   []byte `json:"data"` // base64 in JSON: output is bytes, not text
}

// EndEvent is the data of an EventExecutionEnd: how the execution ended, as its final row says.
type EndEvent struct {
	Status          model.ExecutionStatus `json:"status"`
	ExitCode        *int                  `json:"exit_code,omitempty"`
	TimedOut        bool                  `json:"timed_out,omitempty"`
	StdoutTruncated bool                  `json:"stdout_truncated,omitempty"`
	StderrTruncated bool                  `json:"stderr_truncated,omitempty"`
	Error           string                `json:"error,omitempty"`
	// StdoutBytes and StderrBytes are how many bytes the command wrote, when known (the worker knows; the row
	// does not keep it).
	StdoutBytes *int64 `json:"stdout_bytes,omitempty"`
	StderrBytes *int64 `json:"stderr_bytes,omitempty"`
}

// EndOf describes how e ended, from its row.
func EndOf(e *model.Execution) EndEvent {
	return EndEvent{
		Status: e.Status, ExitCode: e.ExitCode, TimedOut: e.TimedOut,
		StdoutTruncated: e.StdoutTruncated, StderrTruncated: e.StderrTruncated, Error: e.Error,
	}
}

// NewOutputEvent builds the event of one chunk of e's output.
func NewOutputEvent(e *model.Execution, stream string, offset int64, data []byte) (events.Event, error) {
	raw, err := json.Marshal(OutputEvent{Stream: stream, Offset: offset, Data: data})
	if err != nil {
		return events.Event{}, fmt.Errorf("encode output event: %w", err)
	}
	return events.Event{Type: EventExecutionOutput, Subject: e.ID, OwnerID: e.OwnerID, Data: raw, Time: now()}, nil
}

// NewEndEvent builds the event that announces e's end.
func NewEndEvent(e *model.Execution, end EndEvent) (events.Event, error) {
	raw, err := json.Marshal(end)
	if err != nil {
		return events.Event{}, fmt.Errorf("encode end event: %w", err)
	}
	return events.Event{Type: EventExecutionEnd, Subject: e.ID, OwnerID: e.OwnerID, Data: raw, Time: now()}, nil
}

func executionDone(s model.ExecutionStatus) bool {
	return s == model.ExecutionCompleted || s == model.ExecutionFailed
}

// StreamItemKind says what a StreamItem is.
type StreamItemKind int

// Kinds of StreamItem.
const (
	ItemOutput    StreamItemKind = iota + 1 // Stream, Offset, Data
	ItemHeartbeat                           // nothing happened for a while
	ItemEnd                                 // End; the last item
)

// StreamItem is one thing an ExecutionStream yields.
type StreamItem struct {
	Kind   StreamItemKind
	Stream string // StreamStdout or StreamStderr
	// Offset is where Data starts in its stream. Items of one stream come in order, each starting where the
	// previous one ended, except where output was lost (beyond the stored cap for a reader that joined late, or
	// dropped by the bus and past the cap): then Offset jumps ahead.
	Offset int64
	Data   []byte
	End    *EndEvent
}

// StreamOptions tune an ExecutionStream.
type StreamOptions struct {
	// Heartbeat is how often an ItemHeartbeat is yielded while nothing else is (default 15 s).
	Heartbeat time.Duration
	// StdoutOffset and StderrOffset skip the bytes of each stream before them (a client resuming).
	StdoutOffset, StderrOffset int64
}

// Tuning of ExecutionStream. The worker saves output about every second, so a hole is usually filled by the store
// within a second or two.
const (
	streamPollMin    = time.Second     // first re-read of a running execution's row (a lost end)
	streamPollMax    = 5 * time.Second // longest pause between two re-reads
	streamGapRecheck = 250 * time.Millisecond
	streamGapGiveUp  = 3 * time.Second // a hole the store has not filled by then is reported as a jump
	streamEndGrace   = 100 * time.Millisecond
	streamMaxHeld    = 8 << 20 // bytes held back behind a hole before giving up on it
)

type heldChunk struct {
	offset int64
	data   []byte
}

type streamState struct {
	sent   int64 // bytes of the stream yielded (or skipped)
	held   []heldChunk
	heldN  int
	heldAt time.Time
}

// ExecutionStream yields an execution's output exactly once, from its start (or given offsets) to its end,
// whether the reader joins before it starts, while it runs or after it ended. It is not safe for concurrent use.
type ExecutionStream struct {
	svc     *Service
	id      string
	sub     events.Subscription // nil: the bus is unavailable, the store is polled
	row     *model.Execution
	opts    StreamOptions
	streams [2]streamState
	emit    func(StreamItem) error
}

// OpenExecutionStream checks that the execution exists and belongs to ownerID and starts listening to its output.
// The caller must Close the stream.
func (s *Service) OpenExecutionStream(ctx context.Context, ownerID, id string, opts StreamOptions) (*ExecutionStream, error) {
	if !validID(id) {
		return nil, notFound("execution", id)
	}
	if opts.StdoutOffset < 0 || opts.StderrOffset < 0 {
		return nil, invalid("offset", "must not be negative")
	}
	if opts.Heartbeat <= 0 {
		opts.Heartbeat = 15 * time.Second
	}
	// Subscribe before reading the row: what is published after the read is then never missed.
	var sub events.Subscription
	if s.bus != nil {
		var err error
		if sub, err = s.bus.Subscribe(ctx, ExecutionOutputTopic(id)); err != nil {
			s.log.Warn("execution stream falls back to polling the store", "execution_id", id, "err", err)
			sub = nil
		}
	}
	row, err := s.GetExecution(ctx, ownerID, id)
	if err != nil {
		if sub != nil {
			_ = sub.Close()
		}
		return nil, err
	}
	x := &ExecutionStream{svc: s, id: id, sub: sub, row: row, opts: opts}
	x.streams[0].sent, x.streams[1].sent = opts.StdoutOffset, opts.StderrOffset
	return x, nil
}

// Execution is the row as it was when the stream was opened.
func (x *ExecutionStream) Execution() *model.Execution { return x.row }

// Close stops listening.
func (x *ExecutionStream) Close() error {
	if x.sub == nil {
		return nil
	}
	return x.sub.Close()
}

// Run yields the output to emit until the execution's end (the last item is ItemEnd, then Run returns nil), until
// ctx ends (ctx.Err()), or until emit fails (its error).
func (x *ExecutionStream) Run(ctx context.Context, emit func(StreamItem) error) error {
	x.emit = emit
	if err := x.fill(x.row); err != nil {
		return err
	}
	if executionDone(x.row.Status) {
		return x.end(EndOf(x.row))
	}
	var evC <-chan events.Event
	if x.sub != nil {
		evC = x.sub.C()
	}
	heartbeat := time.NewTicker(x.opts.Heartbeat)
	defer heartbeat.Stop()
	poll := streamPollMin
	recheck := time.NewTimer(poll)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-heartbeat.C:
			if err := x.emit(StreamItem{Kind: ItemHeartbeat}); err != nil {
				return err
			}
		case ev, ok := <-evC:
			if !ok {
				// The bus closed the subscription: the store alone tells the rest.
				evC = nil
				recheck.Reset(streamGapRecheck)
				continue
			}
			holes := x.holding()
			done, err := x.handle(ctx, ev)
			if err != nil || done {
				return err
			}
			if !holes && x.holding() {
				recheck.Reset(streamGapRecheck)
			}
		case <-recheck.C:
			row, err := x.svc.store.Executions().Get(ctx, x.id)
			switch {
			case err != nil && ctx.Err() != nil:
				return ctx.Err()
			case errors.Is(err, model.ErrNotFound):
				return err
			case err != nil:
				x.svc.log.Warn("execution stream: re-read failed", "execution_id", x.id, "err", err)
			case executionDone(row.Status):
				return x.finishFromRow(ctx, evC, row)
			default:
				if err := x.resolve(row, false); err != nil {
					return err
				}
			}
			next := poll
			if x.holding() {
				next = streamGapRecheck
			} else {
				poll = min(2*poll, streamPollMax)
			}
			recheck.Reset(next)
		}
	}
}

// handle takes one bus event. done reports the end.
func (x *ExecutionStream) handle(ctx context.Context, ev events.Event) (done bool, err error) {
	switch ev.Type {
	case EventExecutionOutput:
		var o OutputEvent
		if err := json.Unmarshal(ev.Data, &o); err != nil {
			x.svc.log.Warn("execution stream: undecodable output event", "execution_id", x.id, "err", err)
			return false, nil
		}
		i, ok := streamIndex(o.Stream)
		if !ok || o.Offset < 0 {
			return false, nil
		}
		return false, x.chunk(i, o.Offset, o.Data)
	case EventExecutionEnd:
		var end EndEvent
		if err := json.Unmarshal(ev.Data, &end); err != nil {
			x.svc.log.Warn("execution stream: undecodable end event", "execution_id", x.id, "err", err)
			return false, nil // the store will tell
		}
		// The final row is written before the end is announced: it fills any hole the bus left.
		if row, err := x.svc.store.Executions().Get(ctx, x.id); err == nil {
			if err := x.resolve(row, true); err != nil {
				return true, err
			}
		} else if ctx.Err() != nil {
			return true, ctx.Err()
		} else if err := x.flushAll(); err != nil {
			return true, err
		}
		return true, x.end(end)
	}
	return false, nil
}

// finishFromRow ends a stream whose row says the execution is over although no end event came (yet): events
// published before the final write may still be on their way, so they get a short grace.
func (x *ExecutionStream) finishFromRow(ctx context.Context, evC <-chan events.Event, row *model.Execution) error {
	grace := time.NewTimer(streamEndGrace)
	defer grace.Stop()
	for evC != nil {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case ev, ok := <-evC:
			if !ok {
				evC = nil
				continue
			}
			done, err := x.handle(ctx, ev)
			if err != nil || done {
				return err
			}
		case <-grace.C:
			evC = nil
		}
	}
	if err := x.resolve(row, true); err != nil {
		return err
	}
	return x.end(EndOf(row))
}

func streamIndex(name string) (int, bool) {
	switch name {
	case StreamStdout:
		return 0, true
	case StreamStderr:
		return 1, true
	}
	return 0, false
}

var streamNames = [2]string{StreamStdout, StreamStderr}

func (x *ExecutionStream) holding() bool {
	return len(x.streams[0].held) > 0 || len(x.streams[1].held) > 0
}

// chunk takes live output: yielded at once when it continues what was yielded, held back behind a hole.
func (x *ExecutionStream) chunk(i int, off int64, data []byte) error {
	st := &x.streams[i]
	if len(st.held) == 0 && off <= st.sent {
		return x.send(i, off, data)
	}
	if len(st.held) == 0 {
		st.heldAt = time.Now()
	}
	st.held = append(st.held, heldChunk{off, data})
	st.heldN += len(data)
	if st.heldN > streamMaxHeld {
		return x.flush(i) // the store is far behind: give up on the hole rather than hold more
	}
	return nil
}

// send yields the part of data past what was yielded; a chunk that starts past it is yielded as a jump.
func (x *ExecutionStream) send(i int, off int64, data []byte) error {
	st := &x.streams[i]
	end := off + int64(len(data))
	if end <= st.sent {
		return nil
	}
	if off < st.sent {
		data = data[st.sent-off:]
		off = st.sent
	}
	st.sent = end
	return x.emit(StreamItem{Kind: ItemOutput, Stream: streamNames[i], Offset: off, Data: data})
}

// flush yields what stream i holds back, accepting its hole.
func (x *ExecutionStream) flush(i int) error {
	st := &x.streams[i]
	held := st.held
	st.held, st.heldN = nil, 0
	for _, c := range held {
		if err := x.send(i, c.offset, c.data); err != nil {
			return err
		}
	}
	return nil
}

func (x *ExecutionStream) flushAll() error {
	for i := range x.streams {
		if err := x.flush(i); err != nil {
			return err
		}
	}
	return nil
}

// fill yields the stored output past what was yielded, in pieces of at most MaxChunkBytes.
func (x *ExecutionStream) fill(row *model.Execution) error {
	for i, stored := range [2]string{row.Stdout, row.Stderr} {
		for st := &x.streams[i]; int64(len(stored)) > st.sent; {
			piece := stored[st.sent:min(int64(len(stored)), st.sent+MaxChunkBytes)]
			if err := x.send(i, st.sent, []byte(piece)); err != nil {
				return err
			}
		}
	}
	return nil
}

// resolve fills from row and lets go of what is held back once its hole is filled, cannot be filled (the stored
// copy stops at its cap), or has waited long enough; force lets everything go.
func (x *ExecutionStream) resolve(row *model.Execution, force bool) error {
	if err := x.fill(row); err != nil {
		return err
	}
	truncated := [2]bool{row.StdoutTruncated, row.StderrTruncated}
	for i := range x.streams {
		st := &x.streams[i]
		if len(st.held) == 0 {
			continue
		}
		if force || truncated[i] || st.held[0].offset <= st.sent || time.Since(st.heldAt) > streamGapGiveUp {
			if err := x.flush(i); err != nil {
				return err
			}
		}
	}
	return nil
}

func (x *ExecutionStream) end(e EndEvent) error {
	return x.emit(StreamItem{Kind: ItemEnd, End: &e})
}
