package api

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

// sseFrame is one server-sent event (or comment) of GET /events, as it came over the wire.
type sseFrame struct {
	id, event, data, comment string
}

// eventStream reads GET /events.
type eventStream struct {
	t      *testing.T
	frames chan sseFrame
	cancel context.CancelFunc
	header http.Header
}

// openEvents opens GET /api/v1/events?query for key with extra headers; the stream must start with its comment.
func (e *testEnv) openEvents(t *testing.T, key, query string, header map[string]string) *eventStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/api/v1/events"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("events: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &eventStream{t: t, frames: make(chan sseFrame, 1000), cancel: cancel, header: resp.Header}
	go func() {
		defer close(s.frames)
		sc := bufio.NewScanner(resp.Body)
		var f sseFrame
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				s.frames <- f
				f = sseFrame{}
			case strings.HasPrefix(line, ": "):
				f.comment = strings.TrimPrefix(line, ": ")
			case strings.HasPrefix(line, "id: "):
				f.id = strings.TrimPrefix(line, "id: ")
			case strings.HasPrefix(line, "event: "):
				f.event = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				if f.data != "" {
					t.Errorf("a second data line in one event: %q", line)
				}
				f.data = strings.TrimPrefix(line, "data: ")
			default:
				t.Errorf("unexpected line %q", line)
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	if first := s.next(5 * time.Second); first.comment != "events" {
		t.Fatalf("first frame %+v, want the opening comment", first)
	}
	return s
}

// next returns the next frame, failing the test after within.
func (s *eventStream) next(within time.Duration) sseFrame {
	s.t.Helper()
	select {
	case f, ok := <-s.frames:
		if !ok {
			s.t.Fatal("the event stream closed")
		}
		return f
	case <-time.After(within):
		s.t.Fatalf("nothing on the event stream within %s", within)
	}
	return sseFrame{}
}

// nextEvent skips comments (keepalives).
func (s *eventStream) nextEvent(within time.Duration) sseFrame {
	s.t.Helper()
	deadline := time.Now().Add(within)
	for {
		if f := s.next(time.Until(deadline)); f.event != "" {
			return f
		}
	}
}

// live reads up to the `live` event and returns the events before it.
func (s *eventStream) live() []sseFrame {
	s.t.Helper()
	var out []sseFrame
	for {
		f := s.nextEvent(5 * time.Second)
		if f.event == "live" {
			return out
		}
		out = append(out, f)
	}
}

// quiet checks that no event arrives for d (comments may).
func (s *eventStream) quiet(d time.Duration) {
	s.t.Helper()
	end := time.After(d)
	for {
		select {
		case f, ok := <-s.frames:
			if ok && f.event != "" {
				s.t.Fatalf("unexpected event %+v", f)
			}
		case <-end:
			return
		}
	}
}

// summary renders an event as "type key=value ..." for the keys given, for comparisons that show what differs.
func (f sseFrame) summary(t *testing.T, keys ...string) string {
	t.Helper()
	var d map[string]any
	if err := json.Unmarshal([]byte(f.data), &d); err != nil {
		t.Fatalf("event %s data %q: %v", f.event, f.data, err)
	}
	s := f.event
	for _, k := range keys {
		if v, ok := d[k]; ok {
			s += fmt.Sprintf(" %s=%v", k, v)
		}
	}
	return s
}

func summaries(t *testing.T, fs []sseFrame) []string {
	out := make([]string, len(fs))
	for i, f := range fs {
		out[i] = f.summary(t, "exit_code", "previous", "status", "type")
	}
	return out
}

func sameLines(t *testing.T, what string, want, got []string) {
	t.Helper()
	if strings.Join(want, "\n") != strings.Join(got, "\n") {
		t.Fatalf("%s:\n got:\n  %s\nwant:\n  %s", what, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

// vmLifeEvents are what creating a VM and running one command on it record (the fake worker finishes the command
// in one update, so started and finished come together).
var vmLifeEvents = []string{
	"vm.status status=pending",
	"vm.status previous=pending status=creating",
	"vm.status previous=creating status=running",
	"task.finished status=completed type=vm:create",
	"execution.started status=running",
	"execution.finished exit_code=3 status=completed",
	"task.finished status=completed type=vm:execute",
}

// createAndExec creates a VM and runs a command on it through the API, both with ?wait.
func (e *testEnv) createAndExec(key, name string) (vmID, execID string) {
	e.t.Helper()
	r := e.call("POST", "/api/v1/vms?wait=10s", key, `{"name":"`+name+`"}`)
	if r.status != http.StatusOK && r.status != http.StatusCreated {
		e.t.Fatalf("create vm: %d %s", r.status, r.body)
	}
	var vm struct {
		VM client.VM `json:"vm"`
	}
	if err := json.Unmarshal(r.body, &vm); err != nil || vm.VM.ID == "" {
		e.t.Fatalf("create vm answer %s: %v", r.body, err)
	}
	r = e.call("POST", "/api/v1/vms/"+vm.VM.ID+"/execute?wait=10s", key, `{"command":"echo","args":["hi"]}`)
	if r.status != http.StatusOK {
		e.t.Fatalf("execute: %d %s", r.status, r.body)
	}
	var ex struct {
		Execution client.Execution `json:"execution"`
	}
	if err := json.Unmarshal(r.body, &ex); err != nil || ex.Execution.ID == "" {
		e.t.Fatalf("execute answer %s: %v", r.body, err)
	}
	return vm.VM.ID, ex.Execution.ID
}

// TestEventsFollowsStateChanges opens a stream (from now), creates a VM and runs a command through the API, and
// sees the VM's states, the execution's start and end and the tasks' ends in order, each with an increasing id.
// The poll is an hour: what arrives, arrives through the bus wake-up.
func TestEventsFollowsStateChanges(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EventPoll = time.Hour })
	e.startFakeWorker()
	s := e.openEvents(t, e.keyA, "", nil)
	if before := s.live(); len(before) != 0 {
		t.Fatalf("a stream from now replayed %d events", len(before))
	}
	if s.header.Get("Cache-Control") != "no-cache" {
		t.Errorf("Cache-Control %q", s.header.Get("Cache-Control"))
	}
	start := time.Now()
	vmID, execID := e.createAndExec(e.keyA, "ev1")
	var got []sseFrame
	for range vmLifeEvents {
		got = append(got, s.nextEvent(5*time.Second))
	}
	t.Logf("7 events delivered %s after the create began (through wake-ups; the poll is 1 h)", time.Since(start).Round(time.Millisecond))
	sameLines(t, "events", vmLifeEvents, summaries(t, got))
	var last int64
	for _, f := range got {
		id, err := strconv.ParseInt(f.id, 10, 64)
		if err != nil || id <= last {
			t.Fatalf("event id %q after %d", f.id, last)
		}
		last = id
		var d struct {
			ID   string `json:"id"`
			VMID string `json:"vm_id"`
			Name string `json:"name"`
			Time string `json:"time"`
		}
		if err := json.Unmarshal([]byte(f.data), &d); err != nil {
			t.Fatal(err)
		}
		if _, err := time.Parse(time.RFC3339Nano, d.Time); err != nil {
			t.Errorf("%s: time %q", f.event, d.Time)
		}
		switch {
		case f.event == "vm.status" && (d.ID != vmID || d.Name != "ev1"):
			t.Errorf("vm.status %s", f.data)
		case strings.HasPrefix(f.event, "execution.") && (d.ID != execID || d.VMID != vmID):
			t.Errorf("%s %s", f.event, f.data)
		case strings.Contains(f.data, "hi") || strings.Contains(f.data, "warning"):
			t.Errorf("%s carries the command or its output: %s", f.event, f.data)
		}
	}

	// Filters: only execution ends, only this VM's.
	only := e.openEvents(t, e.keyA, "?after=0&types=execution.finished,vm.status&vm_id="+vmID, nil)
	sameLines(t, "filtered replay", []string{
		"vm.status status=pending",
		"vm.status previous=pending status=creating",
		"vm.status previous=creating status=running",
		"execution.finished exit_code=3 status=completed",
	}, summaries(t, only.live()))
	other, _ := e.createAndExec(e.keyA, "ev2")
	only.quiet(300 * time.Millisecond) // another VM's events are not this stream's
	if other == vmID {
		t.Fatal("same vm")
	}
}

// TestEventsResume reads everything, then reconnects with Last-Event-ID (and ?after=) from the middle: it gets
// exactly the events after that id, no duplicates, and then the new ones live.
func TestEventsResume(t *testing.T) {
	e := newEnv(t, nil)
	e.startFakeWorker()
	e.createAndExec(e.keyA, "r1")
	all := e.openEvents(t, e.keyA, "?after=0", nil).live()
	sameLines(t, "replay", vmLifeEvents, summaries(t, all))

	for _, how := range []string{"header", "query", "header beats query"} {
		t.Run(how, func(t *testing.T) {
			mid := all[2].id
			var s *eventStream
			switch how {
			case "header":
				s = e.openEvents(t, e.keyA, "", map[string]string{"Last-Event-ID": mid})
			case "query":
				s = e.openEvents(t, e.keyA, "?after="+mid, nil)
			default:
				s = e.openEvents(t, e.keyA, "?after=0", map[string]string{"Last-Event-ID": mid})
			}
			got := s.live()
			sameLines(t, "resumed", summaries(t, all[3:]), summaries(t, got))
			for i, f := range got {
				if f.id != all[3+i].id {
					t.Fatalf("resumed event %d has id %s, want %s", i, f.id, all[3+i].id)
				}
			}
		})
	}

	// Resuming from the last id seen while events keep coming: the next create is seen once, from its first event.
	s := e.openEvents(t, e.keyA, "", map[string]string{"Last-Event-ID": all[len(all)-1].id})
	if got := s.live(); len(got) != 0 {
		t.Fatalf("resuming from the end replayed %v", summaries(t, got))
	}
	e.createAndExec(e.keyA, "r2")
	var next []sseFrame
	for range vmLifeEvents {
		next = append(next, s.nextEvent(5*time.Second))
	}
	sameLines(t, "live after resume", vmLifeEvents, summaries(t, next))
	s.quiet(200 * time.Millisecond)
}

// TestEventsOwnerIsolation: another owner's events never appear, in a replay or live, whatever the filter.
func TestEventsOwnerIsolation(t *testing.T) {
	e := newEnv(t, nil)
	e.startFakeWorker()
	aliceVM, _ := e.createAndExec(e.keyA, "a1")
	bob := e.openEvents(t, e.keyB, "?after=0", nil)
	if got := bob.live(); len(got) != 0 {
		t.Fatalf("bob's replay holds alice's events: %v", summaries(t, got))
	}
	bobByVM := e.openEvents(t, e.keyB, "?after=0&vm_id="+aliceVM, nil)
	if got := bobByVM.live(); len(got) != 0 {
		t.Fatalf("bob's replay of alice's vm: %v", summaries(t, got))
	}
	e.createAndExec(e.keyA, "a2")
	bobVM, _ := e.createAndExec(e.keyB, "b1")
	var got []sseFrame
	for range vmLifeEvents {
		got = append(got, bob.nextEvent(5*time.Second))
	}
	sameLines(t, "bob's events", vmLifeEvents, summaries(t, got))
	if !strings.Contains(got[0].data, bobVM) {
		t.Fatalf("bob's first event is not about his vm: %s", got[0].data)
	}
	bob.quiet(200 * time.Millisecond)
	bobByVM.quiet(100 * time.Millisecond)
}

// TestEventsReset: a Last-Event-ID older than what the retention kept gets a reset event (id: the horizon), then
// what is left.
func TestEventsReset(t *testing.T) {
	e := newEnv(t, nil)
	e.startFakeWorker()
	e.createAndExec(e.keyA, "p1")
	all := e.openEvents(t, e.keyA, "?after=0", nil).live()
	if n, err := e.st.Events().Prune(context.Background(), store.EventRetention{MaxPerOwner: 2}); err != nil || n != int64(len(all)-2) {
		t.Fatalf("prune = %d, %v", n, err)
	}
	s := e.openEvents(t, e.keyA, "", map[string]string{"Last-Event-ID": all[0].id})
	reset := s.nextEvent(5 * time.Second)
	horizon := all[len(all)-3].id
	if reset.event != "reset" || reset.id != horizon || reset.data != `{"horizon":`+horizon+`}` {
		t.Fatalf("first event %+v, want a reset with the horizon %s", reset, horizon)
	}
	sameLines(t, "after the reset", summaries(t, all[len(all)-2:]), summaries(t, s.live()))
	// From the horizon on, nothing is missing: no reset.
	s = e.openEvents(t, e.keyA, "", map[string]string{"Last-Event-ID": horizon})
	if got := s.live(); len(got) != 2 || got[0].event == "reset" {
		t.Fatalf("resume at the horizon: %+v", got)
	}
}

// TestEventsPollWithoutBus: with no bus at all, the poll alone delivers.
func TestEventsPollWithoutBus(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.EventBus, c.EventPoll = nil, 50*time.Millisecond })
	e.startFakeWorker()
	s := e.openEvents(t, e.keyA, "", nil)
	s.live()
	e.createAndExec(e.keyA, "poll")
	var got []sseFrame
	for range vmLifeEvents {
		got = append(got, s.nextEvent(5*time.Second))
	}
	sameLines(t, "polled events", vmLifeEvents, summaries(t, got))
}

func TestEventsHeartbeat(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StreamHeartbeat = 50 * time.Millisecond })
	s := e.openEvents(t, e.keyA, "", nil)
	s.live()
	for range 2 {
		if f := s.next(2 * time.Second); f.comment != "keepalive" {
			t.Fatalf("frame %+v, want a keepalive comment", f)
		}
	}
}

func TestEventsBadInput(t *testing.T) {
	e := newEnv(t, nil)
	for _, c := range []struct {
		query, lastID, want string
	}{
		{"?types=vm.status,vm.exploded", "", `"vm.exploded" is not an event type`},
		{"?vm_id=not-a-uuid", "", "vm_id"},
		{"?after=-1", "", "after"},
		{"?after=ten", "", "after"},
		{"", "1.5", "Last-Event-ID"},
	} {
		r := e.do(req{method: "GET", path: "/api/v1/events" + c.query, key: e.keyA,
			header: map[string]string{"Last-Event-ID": c.lastID}})
		if r.status != http.StatusBadRequest || r.errCode() != client.CodeBadRequest || !strings.Contains(r.errMessage(), c.want) {
			t.Errorf("%s (Last-Event-ID %q) = %d %s, want 400 mentioning %q", c.query, c.lastID, r.status, r.body, c.want)
		}
	}
	if r := e.call("GET", "/api/v1/events", "", ""); r.status != http.StatusUnauthorized {
		t.Errorf("no key: %d %s", r.status, r.body)
	}
	if r := e.call("GET", "/api/v1/events", "ak_nope", ""); r.status != http.StatusUnauthorized {
		t.Errorf("bad key: %d %s", r.status, r.body)
	}
	off := newEnv(t, func(c *Config) { c.Events = nil })
	if r := off.call("GET", "/api/v1/events?vm_id="+uuid.NewString(), off.keyA, ""); r.status != http.StatusServiceUnavailable {
		t.Errorf("no event log: %d %s", r.status, r.body)
	}
}
