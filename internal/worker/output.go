package worker

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/task"
)

// Batching of live output: the first write after a quiet spell goes out at once (latency), later ones at most
// every flushEvery or when task.MaxChunkBytes are waiting (a chatty command must not flood the bus).
const (
	flushEvery     = 10 * time.Millisecond
	publishTimeout = 5 * time.Second
)

// execOutput receives the output of one running command. It publishes it in batches on the event bus (see
// task.ExecutionOutputTopic), keeps the first MaxOutputBytes of each stream for the execution row, and saves what
// it keeps every OutputSaveInterval, so that a reader joining mid-run finds the output so far in the store.
// Beyond the cap the stream goes on and the stored copy is marked truncated.
type execOutput struct {
	w     *Worker
	ctx   context.Context
	exec  *model.Execution
	topic string
	// scrub masks secret values (nil: none); scrubbing[i] holds back the end of stream i that may be the start
	// of one, guarded by mu.
	scrub     *secrets.Scrubber
	scrubbing [2]*secrets.Stream

	mu      sync.Mutex // guards streams and dirty
	streams [2]outStream
	dirty   bool // kept output changed since the last save

	pubMu       sync.Mutex // held while publishing, so the chunks of a stream go out in offset order
	pubFailures int        // guarded by pubMu

	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup

	partial [2][]byte // unfinished line of each stream, for the log sink (logtee.go); guarded by mu
}

type outStream struct {
	pending   []byte // written, not yet published
	pendingAt int64  // offset of pending[0]
	total     int64  // bytes written
	kept      []byte // the first MaxOutputBytes
	truncated bool
}

// newExecOutput starts the publishing and saving of e's output; finish stops it.
func (w *Worker) newExecOutput(ctx context.Context, e *model.Execution, scrub *secrets.Scrubber) *execOutput {
	o := &execOutput{
		w: w, ctx: ctx, exec: e, topic: task.ExecutionOutputTopic(e.ID),
		kick: make(chan struct{}, 1), stop: make(chan struct{}), scrub: scrub,
	}
	if !scrub.Empty() {
		o.scrubbing = [2]*secrets.Stream{scrub.Stream(), scrub.Stream()}
	}
	if w.cfg.Events != nil {
		o.wg.Add(1)
		go o.flusher()
	}
	o.wg.Add(1)
	go o.saver()
	return o
}

// writer is the io.Writer of stream i (0 stdout, 1 stderr). It never fails: a write error would kill the command.
func (o *execOutput) writer(i int) io.Writer { return streamWriter{o, i} }

type streamWriter struct {
	o *execOutput
	i int
}

func (sw streamWriter) Write(p []byte) (int, error) {
	n := len(p)
	o := sw.o
	o.mu.Lock()
	if s := o.scrubbing[sw.i]; s != nil {
		// Everything downstream (live chunks, offsets, totals, the stored copy) sees the scrubbed bytes only.
		p = s.Write(p)
	}
	full := o.add(sw.i, p)
	o.mu.Unlock()
	o.publishSoon(full)
	return n, nil
}

// add appends scrubbed output to stream i and reports whether a live chunk is full. o.mu is held.
func (o *execOutput) add(i int, p []byte) (full bool) {
	st := &o.streams[i]
	st.total += int64(len(p))
	o.teeLines(i, p)
	room := o.w.cfg.MaxOutputBytes - len(st.kept)
	if room > 0 && len(p) > 0 {
		st.kept = append(st.kept, p[:min(room, len(p))]...)
		o.dirty = true
	}
	if len(p) > room && !st.truncated {
		st.truncated, o.dirty = true, true
	}
	if o.w.cfg.Events != nil {
		st.pending = append(st.pending, p...)
		full = len(st.pending) >= task.MaxChunkBytes
	}
	return full
}

// publishSoon has the pending output published: at once when a chunk is full, else by the flusher.
func (o *execOutput) publishSoon(full bool) {
	if full {
		// Published from the writer's goroutine: a command that writes faster than the bus takes is slowed down
		// (the agent protocol's flow control) instead of piling up output in memory.
		o.flush()
	} else if o.w.cfg.Events != nil {
		select {
		case o.kick <- struct{}{}:
		default:
		}
	}
}

// flusher publishes what was written, at once after a quiet spell and then at most every flushEvery.
func (o *execOutput) flusher() {
	defer o.wg.Done()
	t := time.NewTimer(0)
	<-t.C
	for {
		select {
		case <-o.stop:
			return
		case <-o.kick:
		}
		o.flush()
		t.Reset(flushEvery)
		select {
		case <-o.stop:
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// flush publishes the pending output of both streams, in chunks of at most task.MaxChunkBytes.
func (o *execOutput) flush() {
	if o.w.cfg.Events == nil {
		return
	}
	o.pubMu.Lock()
	defer o.pubMu.Unlock()
	type batch struct {
		off  int64
		data []byte
	}
	var batches [2]batch
	o.mu.Lock()
	for i := range o.streams {
		st := &o.streams[i]
		batches[i] = batch{st.pendingAt, st.pending}
		st.pendingAt += int64(len(st.pending))
		st.pending = nil
	}
	o.mu.Unlock()
	for i, b := range batches {
		for len(b.data) > 0 {
			n := min(len(b.data), task.MaxChunkBytes)
			o.publish(i, b.off, b.data[:n])
			b.off, b.data = b.off+int64(n), b.data[n:]
		}
	}
}

// publish sends one chunk. A failure costs live readers that chunk only (they find it in the store), so it is
// logged, once per execution at warning level, and otherwise ignored.
func (o *execOutput) publish(i int, off int64, data []byte) {
	ev, err := task.NewOutputEvent(o.exec, [2]string{task.StreamStdout, task.StreamStderr}[i], off, data)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(o.ctx), publishTimeout)
		err = o.w.cfg.Events.Publish(ctx, o.topic, ev)
		cancel()
	}
	if err != nil {
		o.pubFailures++
		level := o.w.log.Debug
		if o.pubFailures == 1 {
			level = o.w.log.Warn
		}
		level("could not publish execution output; readers will find it in the store", "execution_id", o.exec.ID, "err", err)
	}
}

// saver saves the kept output of the running execution every OutputSaveInterval while it changes.
func (o *execOutput) saver() {
	defer o.wg.Done()
	t := time.NewTicker(o.w.cfg.OutputSaveInterval)
	defer t.Stop()
	for {
		select {
		case <-o.stop:
			return
		case <-t.C:
			o.save()
		}
	}
}

func (o *execOutput) save() {
	o.mu.Lock()
	if !o.dirty {
		o.mu.Unlock()
		return
	}
	o.dirty = false
	stdout, stderr := string(o.streams[0].kept), string(o.streams[1].kept)
	stdoutTrunc, stderrTrunc := o.streams[0].truncated, o.streams[1].truncated
	o.mu.Unlock()
	_, err := o.w.cfg.Store.Executions().Update(o.ctx, o.exec.ID, func(x *model.Execution) error {
		if x.Status != model.ExecutionRunning {
			return errSkip
		}
		x.Stdout, x.Stderr, x.StdoutTruncated, x.StderrTruncated = stdout, stderr, stdoutTrunc, stderrTrunc
		return nil
	})
	if err != nil && !errors.Is(err, errSkip) {
		o.mu.Lock()
		o.dirty = true // try again at the next tick
		o.mu.Unlock()
		if o.ctx.Err() == nil {
			o.w.log.Warn("could not save the output so far", "execution_id", o.exec.ID, "err", err)
		}
	}
}

// finish stops publishing and saving, and publishes what is still pending. Call it once the command has ended.
func (o *execOutput) finish() {
	close(o.stop)
	o.wg.Wait()
	o.mu.Lock()
	for i, s := range o.scrubbing {
		if s != nil {
			o.add(i, s.Flush()) // what was held back in case a secret began there
		}
	}
	o.teeFlush()
	o.mu.Unlock()
	o.flush()
}

// fillResult puts the kept output into res.
func (o *execOutput) fillResult(res *agent.ExecResult) {
	o.mu.Lock()
	defer o.mu.Unlock()
	res.Stdout, res.StdoutTruncated = nonNil(o.streams[0].kept), o.streams[0].truncated
	res.Stderr, res.StderrTruncated = nonNil(o.streams[1].kept), o.streams[1].truncated
}

// fillRow puts the kept output into x (an execution that failed mid-run keeps what it printed).
func (o *execOutput) fillRow(x *model.Execution) {
	o.mu.Lock()
	defer o.mu.Unlock()
	x.Stdout, x.StdoutTruncated = string(o.streams[0].kept), o.streams[0].truncated
	x.Stderr, x.StderrTruncated = string(o.streams[1].kept), o.streams[1].truncated
}

// totals returns how many bytes the command wrote to each stream.
func (o *execOutput) totals() (int64, int64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.streams[0].total, o.streams[1].total
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

// announceEnd publishes the end of e, whose final row is written. out may be nil (the command never ran).
func (w *Worker) announceEnd(ctx context.Context, e *model.Execution, out *execOutput) {
	if w.cfg.Events == nil {
		return
	}
	end := task.EndOf(e)
	if out != nil {
		stdout, stderr := out.totals()
		end.StdoutBytes, end.StderrBytes = &stdout, &stderr
	}
	ev, err := task.NewEndEvent(e, end)
	if err == nil {
		pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
		err = w.cfg.Events.Publish(pctx, task.ExecutionOutputTopic(e.ID), ev)
		cancel()
	}
	if err != nil {
		// Readers notice the end by re-reading the row; it only costs them a little latency.
		w.log.Warn("could not announce the end of an execution", "execution_id", e.ID, "err", err)
	}
}
