package worker

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
	"github.com/aetherium/aetherium/internal/vmm"
)

type collectSink struct {
	mu      sync.Mutex
	entries []logs.Entry
}

func (c *collectSink) Push(_ context.Context, e ...logs.Entry) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.entries = append(c.entries, e...)
	return nil
}
func (c *collectSink) Health(context.Context) error { return nil }
func (c *collectSink) Close(context.Context) error  { return nil }

// TestExecOutputShipsLines: output written in arbitrary pieces reaches the sink as whole lines, scrubbed, with
// the ids in metadata and the bounded labels only; an unfinished last line and an over-long line are shipped too.
func TestExecOutputShipsLines(t *testing.T) {
	sink := &collectSink{}
	w := &Worker{cfg: Config{ID: "w1", MaxOutputBytes: 1 << 20, Logs: sink, OutputSaveInterval: time.Hour}} // no store: never saves
	e := &model.Execution{ID: "ex-1", VMID: "vm-1", OwnerID: "owner-1", TaskID: "task-1"}
	scrub := secrets.NewScrubber("hunter2-secret")
	o := w.newExecOutput(context.Background(), e, scrub)
	out, errw := o.writer(0), o.writer(1)
	for _, piece := range []string{"hel", "lo\nwor", "ld\r\npass=hunter2-", "secret\n", "no newline"} {
		_, _ = out.Write([]byte(piece))
	}
	_, _ = errw.Write([]byte("oops\n" + strings.Repeat("x", maxLogLine+10) + "\n"))
	o.finish()

	type line struct{ stream, text string }
	var got []line
	for _, en := range sink.entries {
		if en.Labels != (logs.Labels{Service: "aetherium", Role: "worker", Worker: "w1", Level: "info", Kind: logs.KindExec}) {
			t.Fatalf("labels %+v", en.Labels)
		}
		m := en.Metadata
		if m[logs.MetaExecutionID] != "ex-1" || m[logs.MetaVMID] != "vm-1" || m[logs.MetaOwnerID] != "owner-1" || m[logs.MetaTaskID] != "task-1" {
			t.Fatalf("metadata %v", m)
		}
		got = append(got, line{m[logs.MetaStream], en.Line})
	}
	want := []line{{"stdout", "hello"}, {"stdout", "world"}, {"stdout", "pass=" + secrets.Mask}, {"stderr", "oops"},
		{"stderr", strings.Repeat("x", maxLogLine)}, {"stderr", "xxxxxxxxxx"}, {"stdout", "no newline"}}
	if len(got) != len(want) {
		t.Fatalf("%d lines shipped, want %d: %q", len(got), len(want), got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("line %d: %q, want %q", i, got[i].text[:min(40, len(got[i].text))], want[i].text[:min(40, len(want[i].text))])
		}
	}
}

// consoleBackend is an Orchestrator-less stand-in with a console log: only ConsoleLog is used by shipConsole.
type consoleBackend struct {
	vmm.Orchestrator
	data []byte
}

func (c consoleBackend) ConsoleLog(id string, max int64) ([]byte, error) { return c.data, nil }

// TestShipConsole: a deleted VM's console (hostile guest bytes: invalid UTF-8, CRs, blank lines) ships as kind
// console entries in order, with the VM and owner in metadata.
func TestShipConsole(t *testing.T) {
	sink := &collectSink{}
	w := &Worker{cfg: Config{ID: "w1", Logs: sink, Backend: consoleBackend{data: []byte("boot \xff ok\r\n\n[ 1.0] agent up\n--- end")}}}
	w.log = slog.New(slog.DiscardHandler)
	w.shipConsole(context.Background(), "vm-1", "owner-1")
	want := []string{"boot \uFFFD ok", "[ 1.0] agent up", "--- end"}
	if len(sink.entries) != len(want) {
		t.Fatalf("%d entries: %+v", len(sink.entries), sink.entries)
	}
	for i, e := range sink.entries {
		if e.Line != want[i] || e.Labels.Kind != logs.KindConsole || e.Metadata[logs.MetaVMID] != "vm-1" || e.Metadata[logs.MetaOwnerID] != "owner-1" {
			t.Errorf("entry %d: %+v", i, e)
		}
		if i > 0 && !e.Time.After(sink.entries[i-1].Time) {
			t.Errorf("entry %d is not after the one before: order would be lost", i)
		}
	}
}

// TestRunOutputShipsLines: an agent run's output reaches the sink line by line, scrubbed, as kind exec with the
// run's id (and its VM, owner and task) in metadata, so GET /logs?run_id= finds it.
func TestRunOutputShipsLines(t *testing.T) {
	sink := &collectSink{}
	const secret = "sk-owner-secret-value-123"
	tr := &transcript{w: &Worker{cfg: Config{ID: "w1", Logs: sink}}, ctx: context.Background(),
		scrub: secrets.NewScrubber(secret), kick: make(chan struct{}, 1),
		run: &model.Run{ID: "run-1", OwnerID: "owner-1", VMID: "vm-1", TaskID: "task-1"}}
	o := newAgentOutput(tr, "text")
	_, _ = o.stdout().Write([]byte("cloning\nthe key is " + secret + "\n"))
	_, _ = o.stderr().Write([]byte("warning: x"))
	o.finish()
	if len(sink.entries) != 3 {
		t.Fatalf("%d entries, want 3: %+v", len(sink.entries), sink.entries)
	}
	for i, want := range []struct{ stream, text string }{{"stdout", "cloning"}, {"stdout", "the key is "}, {"stderr", "warning: x"}} {
		en := sink.entries[i]
		if en.Metadata[logs.MetaStream] != want.stream || !strings.HasPrefix(en.Line, want.text) || strings.Contains(en.Line, secret) {
			t.Errorf("entry %d: %q on %s, want %q… on %s, scrubbed", i, en.Line, en.Metadata[logs.MetaStream], want.text, want.stream)
		}
		if en.Metadata[logs.MetaRunID] != "run-1" || en.Metadata[logs.MetaVMID] != "vm-1" || en.Metadata[logs.MetaOwnerID] != "owner-1" ||
			en.Metadata[logs.MetaTaskID] != "task-1" || en.Labels.Kind != logs.KindExec || en.Labels.Worker != "w1" {
			t.Errorf("entry %d: labels %+v metadata %v", i, en.Labels, en.Metadata)
		}
	}
}
