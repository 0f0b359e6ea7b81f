package worker

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/logs"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/secrets"
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
