package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// eventCollector gathers a stream's events for the test to wait on.
type eventCollector struct {
	mu   sync.Mutex
	evs  []client.Event
	done chan error
}

func (ec *eventCollector) add(ev client.Event) error {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	if ev.Type != client.EventLive {
		ec.evs = append(ec.evs, ev)
	}
	return nil
}

func (ec *eventCollector) snapshot() []client.Event {
	ec.mu.Lock()
	defer ec.mu.Unlock()
	return append([]client.Event(nil), ec.evs...)
}

// waitFor waits until the stream holds an event matching want, and returns everything so far.
func (ec *eventCollector) waitFor(t *testing.T, within time.Duration, want func(client.Event, map[string]any) bool) []client.Event {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		evs := ec.snapshot()
		for _, ev := range evs {
			if want(ev, eventFields(t, ev)) {
				return evs
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("the awaited event did not come within %s; got %s", within, describeEvents(t, ec.snapshot()))
	return nil
}

func eventFields(t *testing.T, ev client.Event) map[string]any {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatalf("event %d %s data %s: %v", ev.ID, ev.Type, ev.Data, err)
	}
	return d
}

// describeEvents renders events as "type status [exit_code]" lines.
func describeEvents(t *testing.T, evs []client.Event) string {
	t.Helper()
	var lines []string
	for _, ev := range evs {
		d := eventFields(t, ev)
		s := fmt.Sprintf("%s %v", ev.Type, d["status"])
		if typ, ok := d["type"]; ok {
			s += fmt.Sprintf(" %v", typ)
		}
		if code, ok := d["exit_code"]; ok {
			s += fmt.Sprintf(" exit=%v", code)
		}
		lines = append(lines, s)
	}
	return "[" + strings.Join(lines, "; ") + "]"
}

func streamEvents(ctx context.Context, c *client.Client, opts client.EventsOptions) *eventCollector {
	ec := &eventCollector{done: make(chan error, 1)}
	go func() { ec.done <- c.StreamEvents(ctx, opts, ec.add) }()
	return ec
}

// TestEventStream runs a real `aetherium serve` (Docker backend): a stream opened before a VM is created sees its
// states, the execution's start and end and the tasks' ends, in order; the stream ends when serve shuts down;
// what happens while the client is away is replayed exactly once by a stream resumed with Last-Event-ID.
func TestEventStream(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	workerID := "e2e-events"
	removeWorkerContainers(t, workerID)
	env := serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID)
	p := start(t, "serve#1", env, "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	live := streamEvents(ctx, c, client.EventsOptions{})
	time.Sleep(300 * time.Millisecond) // connected: what follows is live
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "evented"})
	if err != nil {
		t.Fatal(err)
	}
	ex, err := c.ExecAndWait(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", "echo secret-output; exit 4"}})
	if err != nil {
		t.Fatal(err)
	}
	evs := live.waitFor(t, 10*time.Second, func(ev client.Event, d map[string]any) bool {
		return ev.Type == client.EventTaskFinished && d["type"] == "vm:execute"
	})
	got := describeEvents(t, evs)
	want := "[vm.status pending; vm.status creating; vm.status running; task.finished completed vm:create; " +
		"execution.started running; execution.finished completed exit=4; task.finished completed vm:execute]"
	if got != want {
		t.Fatalf("events:\n got %s\nwant %s", got, want)
	}
	for i, ev := range evs {
		d := eventFields(t, ev)
		if i > 0 && ev.ID <= evs[i-1].ID {
			t.Fatalf("ids not increasing: %d after %d", ev.ID, evs[i-1].ID)
		}
		if strings.HasPrefix(ev.Type, "execution.") && (d["id"] != ex.ID || d["vm_id"] != vm.ID) {
			t.Fatalf("%s %s: not execution %s of vm %s", ev.Type, ev.Data, ex.ID, vm.ID)
		}
		if strings.Contains(string(ev.Data), "secret-output") || strings.Contains(string(ev.Data), "echo") {
			t.Fatalf("%s carries the command or its output: %s", ev.Type, ev.Data)
		}
	}
	last := evs[len(evs)-1].ID

	// A graceful shutdown ends the stream (the client sees it close).
	stopped := time.Now()
	p.stop(syscall.SIGTERM, 30*time.Second)
	select {
	case err := <-live.done:
		if !errors.Is(err, client.ErrEventStreamEnded) {
			t.Fatalf("stream ended with %v, want ErrEventStreamEnded", err)
		}
		t.Logf("the stream ended %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("the stream outlived the server")
	}

	// While no stream is open: serve comes back and the VM is deleted.
	p2 := start(t, "serve#2", env, "serve")
	waitHTTP(t, addr, p2)
	waitReady(t, c)
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
	resumed := streamEvents(ctx, c, client.EventsOptions{After: last, Resume: true})
	evs = resumed.waitFor(t, 10*time.Second, func(ev client.Event, d map[string]any) bool {
		return ev.Type == client.EventTaskFinished && d["type"] == "vm:delete"
	})
	time.Sleep(300 * time.Millisecond)
	evs = resumed.snapshot()
	got = describeEvents(t, evs)
	want = "[vm.status stopping; vm.status deleted; task.finished completed vm:delete]"
	if got != want || evs[0].ID <= last {
		t.Fatalf("resumed after %d:\n got %s (first id %d)\nwant %s", last, got, evs[0].ID, want)
	}
}
