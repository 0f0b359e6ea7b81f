package worker_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/worker"
	"github.com/aetherium/aetherium/pkg/client"
)

// received is one stream item and when the reader got it.
type received struct {
	item task.StreamItem
	at   time.Time
}

// follow reads an execution's stream (the code the API serves) until its end, in the background.
func (r *rig) follow(ctx context.Context, id string) <-chan []received {
	r.t.Helper()
	st, err := r.svc.OpenExecutionStream(ctx, r.owner, id, task.StreamOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	out := make(chan []received, 1)
	go func() {
		defer st.Close()
		var got []received
		err := st.Run(ctx, func(it task.StreamItem) error {
			got = append(got, received{it, time.Now()})
			return nil
		})
		if err != nil {
			r.t.Errorf("stream: %v", err)
		}
		out <- got
	}()
	return out
}

func (r *rig) execute(ctx context.Context, vmID string, argv ...string) (*model.Execution, *model.Task) {
	r.t.Helper()
	e, tk, err := r.svc.Execute(ctx, r.owner, vmID, client.ExecuteRequest{Command: argv[0], Args: argv[1:]})
	if err != nil {
		r.t.Fatal(err)
	}
	return e, tk
}

// TestOutputStreamsWhileTheCommandRuns: a reader sees "one" before the command ends, and the row has it too while
// the command still runs.
func TestOutputStreamsWhileTheCommandRuns(t *testing.T) {
	r := newRigWith(t, func(c *worker.Config) { c.OutputSaveInterval = 50 * time.Millisecond })
	vm := r.createVM("live")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, tk := r.execute(ctx, vm.ID, "sh", "-c", "echo one; sleep 1; echo two")
	items := r.follow(ctx, e.ID)

	// The stored copy has the output so far while the command runs.
	for {
		row, err := r.st.Executions().Get(ctx, e.ID)
		if err != nil {
			t.Fatal(err)
		}
		if row.Status == model.ExecutionRunning && row.Stdout == "one\n" {
			break
		}
		if row.Status == model.ExecutionCompleted || row.Status == model.ExecutionFailed || ctx.Err() != nil {
			t.Fatalf("the row never showed the output of the running command: %+v", row)
		}
		time.Sleep(10 * time.Millisecond)
	}
	r.wait(tk.ID)
	got := <-items
	final, err := r.st.Executions().Get(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if final.Stdout != "one\ntwo\n" || final.CompletedAt == nil {
		t.Fatalf("final row %+v", final)
	}
	var stdout []string
	var oneAt, twoAt time.Time
	for _, g := range got {
		if g.item.Kind != task.ItemOutput {
			continue
		}
		stdout = append(stdout, string(g.item.Data))
		if strings.Contains(string(g.item.Data), "one") {
			oneAt = g.at
		}
		if strings.Contains(string(g.item.Data), "two") {
			twoAt = g.at
		}
	}
	if strings.Join(stdout, "") != "one\ntwo\n" || len(stdout) != 2 {
		t.Fatalf("stdout chunks %q: want \"one\\n\" then \"two\\n\", each once", stdout)
	}
	last := got[len(got)-1]
	if last.item.Kind != task.ItemEnd || last.item.End.ExitCode == nil || *last.item.End.ExitCode != 0 {
		t.Fatalf("last item %+v", last.item)
	}
	// Docker guests share the host's clock: the command's own end time is comparable with the reader's.
	if !oneAt.Before(*final.CompletedAt) || !oneAt.Before(twoAt) || !twoAt.Before(last.at.Add(time.Nanosecond)) {
		t.Fatalf("\"one\" reached the reader at %v; the command ended at %v, \"two\" came at %v, the end at %v",
			oneAt, *final.CompletedAt, twoAt, last.at)
	}
}

// TestOutputBeyondTheCapStreamsInFull: the stored copy stops at MaxOutputBytes and says so; the stream does not.
func TestOutputBeyondTheCapStreamsInFull(t *testing.T) {
	const limit, total = 4096, 300000
	r := newRigWith(t, func(c *worker.Config) { c.MaxOutputBytes = limit })
	vm := r.createVM("big")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	// The command waits for a file, so the reader is surely listening before the first byte.
	e, tk := r.execute(ctx, vm.ID, "sh", "-c",
		"while [ ! -e /tmp/go ]; do sleep 0.01; done; yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c 300000; echo fin >&2")
	items := r.follow(ctx, e.ID)
	_, gate := r.execute(ctx, vm.ID, "touch", "/tmp/go")
	r.wait(gate.ID)
	if tk = r.wait(tk.ID); tk.Status != model.TaskCompleted {
		t.Fatalf("task %s: %s", tk.Status, tk.Error)
	}
	got := <-items

	want := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\n"), total/37+1)[:total]
	var stdout, stderr []byte
	var end *task.EndEvent
	for _, g := range got {
		switch g.item.Kind {
		case task.ItemOutput:
			buf := &stdout
			if g.item.Stream == task.StreamStderr {
				buf = &stderr
			}
			if g.item.Offset != int64(len(*buf)) {
				t.Fatalf("%s chunk at %d after %d bytes: a hole", g.item.Stream, g.item.Offset, len(*buf))
			}
			*buf = append(*buf, g.item.Data...)
		case task.ItemEnd:
			end = g.item.End
		}
	}
	if !bytes.Equal(stdout, want) || string(stderr) != "fin\n" {
		t.Fatalf("streamed %d bytes of stdout (equal: %v), stderr %q", len(stdout), bytes.Equal(stdout, want), stderr)
	}
	if end == nil || !end.StdoutTruncated || end.StderrTruncated || end.StdoutBytes == nil || *end.StdoutBytes != total {
		t.Fatalf("end %+v", end)
	}
	row, err := r.st.Executions().Get(ctx, e.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !row.StdoutTruncated || row.Stdout != string(want[:limit]) || row.Stderr != "fin\n" || row.StderrTruncated {
		t.Fatalf("stored: %d bytes, truncated=%v; stderr %q", len(row.Stdout), row.StdoutTruncated, row.Stderr)
	}
}
