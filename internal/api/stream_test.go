package api

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// storeExecution stores an execution of owner's VM vmID directly, as a worker would have left it.
func (e *testEnv) storeExecution(owner, vmID string, edit func(x *model.Execution)) *model.Execution {
	e.t.Helper()
	x := &model.Execution{
		ID: uuid.NewString(), OwnerID: owner, VMID: vmID, Status: model.ExecutionRunning, Command: "sh",
		Args: []string{"-c", "true"}, CreatedAt: time.Now().UTC(),
	}
	if edit != nil {
		edit(x)
	}
	if err := e.st.Executions().Create(context.Background(), x); err != nil {
		e.t.Fatalf("store execution: %v", err)
	}
	return x
}

// sseEvent is one parsed server-sent event, or a comment (name "").
type sseEvent struct {
	name, data, comment string
}

// sseStream reads a live stream of the API.
type sseStream struct {
	t      *testing.T
	resp   *http.Response
	cancel context.CancelFunc
	events chan sseEvent
}

// openStream starts GET /executions/{id}/stream and returns once the server has answered (and so subscribed).
func (e *testEnv) openStream(t *testing.T, key, id, query string) *sseStream {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.srv.URL+"/api/v1/executions/"+id+"/stream"+query, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("stream: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	s := &sseStream{t: t, resp: resp, cancel: cancel, events: make(chan sseEvent, 100)}
	go func() {
		defer close(s.events)
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 1<<20), 4<<20)
		var ev sseEvent
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				s.events <- ev
				ev = sseEvent{}
			case strings.HasPrefix(line, ": "):
				ev.comment = strings.TrimPrefix(line, ": ")
			case strings.HasPrefix(line, "event: "):
				ev.name = strings.TrimPrefix(line, "event: ")
			case strings.HasPrefix(line, "data: "):
				ev.data = strings.TrimPrefix(line, "data: ")
			default:
				t.Errorf("unexpected line %q", line)
			}
		}
	}()
	t.Cleanup(func() { cancel(); resp.Body.Close() })
	// The first thing the server sends is a comment naming the execution.
	if first := s.next(); first.comment != "execution "+id {
		t.Fatalf("first event %+v, want the opening comment", first)
	}
	return s
}

// next returns the next event or comment; it fails the test after 10 s.
func (s *sseStream) next() sseEvent {
	s.t.Helper()
	select {
	case ev, ok := <-s.events:
		if !ok {
			s.t.Fatal("the stream closed")
		}
		return ev
	case <-time.After(10 * time.Second):
		s.t.Fatal("no event within 10s")
	}
	return sseEvent{}
}

// nextEvent skips heartbeats.
func (s *sseStream) nextEvent() sseEvent {
	s.t.Helper()
	for {
		if ev := s.next(); ev.name != "" {
			return ev
		}
	}
}

func (s *sseStream) wantOutput(stream string, offset int64, data string) {
	s.t.Helper()
	ev := s.nextEvent()
	if ev.name != stream {
		s.t.Fatalf("event %+v, want %s", ev, stream)
	}
	var oc client.OutputChunk
	if err := json.Unmarshal([]byte(ev.data), &oc); err != nil {
		s.t.Fatal(err)
	}
	got := oc.Data
	if oc.DataBase64 != "" {
		b, err := base64.StdEncoding.DecodeString(oc.DataBase64)
		if err != nil || oc.Data != "" {
			s.t.Fatalf("bad chunk %s", ev.data)
		}
		got = string(b)
	}
	if oc.Offset != offset || got != data {
		s.t.Fatalf("%s chunk at %d %q, want at %d %q", stream, oc.Offset, got, offset, data)
	}
}

func (s *sseStream) wantEnd() client.ExecutionEnd {
	s.t.Helper()
	ev := s.nextEvent()
	if ev.name != "end" {
		s.t.Fatalf("event %+v, want end", ev)
	}
	var end client.ExecutionEnd
	dec := json.NewDecoder(strings.NewReader(ev.data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&end); err != nil {
		s.t.Fatal(err)
	}
	// The server closes the stream after the end.
	select {
	case ev, ok := <-s.events:
		if ok {
			s.t.Fatalf("event after the end: %+v", ev)
		}
	case <-time.After(10 * time.Second):
		s.t.Fatal("the stream stayed open after the end")
	}
	return end
}

func TestStreamRequiresAuthAndOwnership(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "box")
	x := e.storeExecution(e.ownerA, vm.VM.ID, nil)
	path := "/api/v1/executions/" + x.ID + "/stream"
	if r := e.call("GET", path, "", ""); r.status != http.StatusUnauthorized {
		t.Errorf("no key: %d %s", r.status, r.body)
	}
	if r := e.call("GET", path, e.keyB, ""); r.status != http.StatusNotFound || r.errCode() != client.CodeNotFound {
		t.Errorf("another owner: %d %s", r.status, r.body)
	}
	missing := e.call("GET", "/api/v1/executions/"+uuid.NewString()+"/stream", e.keyA, "")
	if foreign := e.call("GET", path, e.keyB, ""); foreign.status != missing.status || foreign.errCode() != missing.errCode() {
		t.Errorf("missing %d, foreign %d: they must look alike", missing.status, foreign.status)
	}
	if r := e.call("GET", "/api/v1/executions/nope/stream", e.keyA, ""); r.status != http.StatusNotFound {
		t.Errorf("malformed id: %d", r.status)
	}
	for _, q := range []string{"?stdout_offset=-1", "?stderr_offset=x"} {
		if r := e.call("GET", path+q, e.keyA, ""); r.status != http.StatusBadRequest || r.errCode() != client.CodeBadRequest {
			t.Errorf("%s: %d %s", q, r.status, r.body)
		}
	}
}

func TestStreamReplaysFinishedExecution(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "box")
	code := 3
	big := strings.Repeat("0123456789abcdef", 3000) // 48000 bytes: replayed in pieces of task.MaxChunkBytes
	x := e.storeExecution(e.ownerA, vm.VM.ID, func(x *model.Execution) {
		x.Status, x.ExitCode, x.StdoutTruncated = model.ExecutionCompleted, &code, true
		x.Stdout, x.Stderr = big, "bin\xff\xfe"
	})
	s := e.openStream(t, e.keyA, x.ID, "")
	s.wantOutput("stdout", 0, big[:task.MaxChunkBytes])
	s.wantOutput("stdout", task.MaxChunkBytes, big[task.MaxChunkBytes:])
	s.wantOutput("stderr", 0, "bin\xff\xfe") // not UTF-8: base64
	end := s.wantEnd()
	if end.Status != "completed" || end.ExitCode == nil || *end.ExitCode != 3 || !end.StdoutTruncated || end.StdoutBytes != nil {
		t.Fatalf("end %+v", end)
	}

	// Resuming at offsets skips what the client has.
	s = e.openStream(t, e.keyA, x.ID, "?stdout_offset=47990&stderr_offset=3")
	s.wantOutput("stdout", 47990, big[47990:])
	s.wantOutput("stderr", 3, "\xff\xfe")
	s.wantEnd()

	// The SDK reads the same stream.
	c, err := client.New(e.srv.URL, e.keyA)
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr strings.Builder
	sdkEnd, err := c.StreamExecution(context.Background(), x.ID, func(ch client.Chunk) error {
		map[string]*strings.Builder{"stdout": &stdout, "stderr": &stderr}[ch.Stream].Write(ch.Data)
		return nil
	})
	if err != nil || stdout.String() != big || stderr.String() != "bin\xff\xfe" || *sdkEnd.ExitCode != 3 {
		t.Fatalf("sdk: %v %d bytes %q %+v", err, stdout.Len(), stderr.String(), sdkEnd)
	}
}

func TestStreamLiveExecution(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.StreamHeartbeat = 20 * time.Millisecond })
	vm := e.createVM(e.keyA, "box")
	x := e.storeExecution(e.ownerA, vm.VM.ID, func(x *model.Execution) { x.Stdout = "a" })
	s := e.openStream(t, e.keyA, x.ID, "")
	s.wantOutput("stdout", 0, "a") // stored

	pub := func(stream string, off int64, data string) {
		ev, err := task.NewOutputEvent(x, stream, off, []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		if err := e.bus.Publish(context.Background(), task.ExecutionOutputTopic(x.ID), ev); err != nil {
			t.Fatal(err)
		}
	}
	pub("stdout", 0, "a") // already sent from the store: dropped
	pub("stdout", 1, "bc")
	pub("stderr", 0, "x\xe2\x82") // "€" cut in two: held back until its last byte comes
	pub("stderr", 3, "\xacy")
	s.wantOutput("stdout", 1, "bc")
	s.wantOutput("stderr", 0, "x")
	s.wantOutput("stderr", 1, "€y")

	// Silence: heartbeats.
	if ev := s.next(); ev.comment != "ping" {
		t.Fatalf("want a heartbeat, got %+v", ev)
	}

	// A chunk after a hole waits for the store to fill the hole (the worker saves every second).
	pub("stdout", 6, "ghi")
	if _, err := e.st.Executions().Update(context.Background(), x.ID, func(x *model.Execution) error {
		x.Stdout = "abcdef"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.wantOutput("stdout", 3, "def")
	s.wantOutput("stdout", 6, "ghi")

	// The end, after the final row.
	code := 0
	final, err := e.st.Executions().Update(context.Background(), x.ID, func(x *model.Execution) error {
		x.Status, x.ExitCode, x.Stdout, x.Stderr = model.ExecutionCompleted, &code, "abcdefghijk", "x€y"
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	pub("stdout", 9, "jk")
	n := int64(11)
	ev, err := task.NewEndEvent(final, task.EndEvent{Status: final.Status, ExitCode: &code, StdoutBytes: &n})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.bus.Publish(context.Background(), task.ExecutionOutputTopic(x.ID), ev); err != nil {
		t.Fatal(err)
	}
	s.wantOutput("stdout", 9, "jk")
	end := s.wantEnd()
	if end.Status != "completed" || end.ExitCode == nil || *end.ExitCode != 0 || end.StdoutBytes == nil || *end.StdoutBytes != 11 {
		t.Fatalf("end %+v", end)
	}
}

// TestStreamNoticesALostEnd: the end event is lost (or the bus is down); the row says the execution ended.
func TestStreamNoticesALostEnd(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "box")
	x := e.storeExecution(e.ownerA, vm.VM.ID, nil)
	s := e.openStream(t, e.keyA, x.ID, "")
	if _, err := e.st.Executions().Update(context.Background(), x.ID, func(x *model.Execution) error {
		x.Status, x.Error, x.Stdout = model.ExecutionFailed, "interrupted", "partial"
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s.wantOutput("stdout", 0, "partial")
	if end := s.wantEnd(); end.Status != "failed" || end.Error != "interrupted" || end.ExitCode != nil {
		t.Fatalf("end %+v", end)
	}
}

// TestStreamClientGoneEndsHandler: a client that goes away ends the handler (and its subscription) at once.
func TestStreamClientGoneEndsHandler(t *testing.T) {
	e := newEnv(t, nil)
	vm := e.createVM(e.keyA, "box")
	x := e.storeExecution(e.ownerA, vm.VM.ID, nil)
	s := e.openStream(t, e.keyA, x.ID, "")
	s.cancel()
	// The access log line is written when the handler returns.
	want := fmt.Sprintf(`"path":"/api/v1/executions/%s/stream"`, x.ID)
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(e.logs.String(), want) {
		if time.Now().After(deadline) {
			t.Fatal("the handler did not return after the client went away")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTextCut(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int
	}{
		{"", 0}, {"abc", 3}, {"a€", 4}, {"a\xe2\x82", 1}, {"a\xe2", 1}, {"\xf0\x9f\x98", 0},
		{"a\xff", 2},     // invalid: all of it, as base64
		{"\xffa\xe2", 3}, // invalid before the cut: all of it
	} {
		if got := textCut([]byte(c.in)); got != c.want {
			t.Errorf("textCut(%q) = %d, want %d", c.in, got, c.want)
		}
	}
}
