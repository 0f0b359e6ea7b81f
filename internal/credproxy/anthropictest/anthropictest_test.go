package anthropictest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

type sseEvent struct {
	name string
	data map[string]any
}

// readSSE reads a stream to its end, checking its framing: every event has an event: line and one data: line of
// JSON whose type is the event's name.
func readSSE(t *testing.T, r io.Reader) []sseEvent {
	t.Helper()
	var out []sseEvent
	var cur sseEvent
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "event: "):
			cur.name = strings.TrimPrefix(line, "event: ")
		case strings.HasPrefix(line, "data: "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &cur.data); err != nil {
				t.Fatalf("data line is not JSON: %v: %q", err, line)
			}
		case line == "":
			if cur.name == "" || cur.data == nil || cur.data["type"] != cur.name {
				t.Fatalf("malformed event %+v", cur)
			}
			out = append(out, cur)
			cur = sseEvent{}
		default:
			t.Fatalf("unexpected line %q", line)
		}
	}
	if cur.name != "" {
		t.Fatalf("stream ends inside an event: %+v", cur)
	}
	return out
}

func post(t *testing.T, url, key, body string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	req.Header.Set("x-api-key", key)
	req.Header.Set("content-type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

// loopBody is a request of the agent loop after n tool results.
func loopBody(n int, stream bool) string {
	msgs := []any{map[string]any{"role": "user", "content": "go"}}
	for i := 0; i < n; i++ {
		msgs = append(msgs, map[string]any{"role": "assistant", "content": []any{map[string]any{"type": "tool_use", "id": "t", "name": "Bash", "input": map[string]any{}}}},
			map[string]any{"role": "user", "content": []any{map[string]any{"type": "tool_result", "tool_use_id": "t", "content": "ok"}}})
	}
	b, _ := json.Marshal(map[string]any{"model": "claude-test", "max_tokens": 1000, "stream": stream, "messages": msgs,
		"tools": []any{map[string]any{"name": "Bash", "input_schema": map[string]any{"type": "object"}}}})
	return string(b)
}

var writeInput = map[string]any{"file_path": "/w/a.txt", "content": "line one\nline \"two\"\n", "n": 3.5}

func testScript() Script {
	return Script{APIKey: "k", Turns: []Turn{
		{Blocks: []Block{Text("Writing a file."), ToolUse("Write", writeInput)}, Usage: Usage{InputTokens: 11, OutputTokens: 22, CacheReadInputTokens: 33}},
		{Blocks: []Block{Text("All done.")}},
	}}
}

// TestStream: the events come in the documented order, the text and the tool input reassemble from their deltas
// into what the script says, and the usage is the turn's.
func TestStream(t *testing.T) {
	srv := New(testScript())
	hs := httptest.NewServer(srv)
	defer hs.Close()
	resp := post(t, hs.URL+"/v1/messages", "k", loopBody(0, true))
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, type %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	events := readSSE(t, resp.Body)
	var names []string
	for _, e := range events {
		names = append(names, e.name)
	}
	got := strings.Join(names, " ")
	want := "message_start content_block_start ping content_block_delta content_block_delta content_block_delta " +
		"content_block_stop content_block_start content_block_delta content_block_delta content_block_delta " +
		"content_block_stop message_delta message_stop"
	if got != want {
		t.Fatalf("events\n %s\nwant\n %s", got, want)
	}
	start := events[0].data["message"].(map[string]any)
	if u := start["usage"].(map[string]any); u["input_tokens"] != 11.0 || u["cache_read_input_tokens"] != 33.0 {
		t.Errorf("message_start usage %v", u)
	}
	if start["model"] != "claude-test" || start["role"] != "assistant" {
		t.Errorf("message_start %v", start)
	}
	text, input := map[int]string{}, map[int]string{}
	var toolStart map[string]any
	for _, e := range events {
		i, _ := e.data["index"].(float64)
		switch e.name {
		case "content_block_start":
			if cb := e.data["content_block"].(map[string]any); cb["type"] == "tool_use" {
				toolStart = cb
			}
		case "content_block_delta":
			d := e.data["delta"].(map[string]any)
			switch d["type"] {
			case "text_delta":
				text[int(i)] += d["text"].(string)
			case "input_json_delta":
				input[int(i)] += d["partial_json"].(string)
			default:
				t.Errorf("delta %v", d)
			}
		}
	}
	if text[0] != "Writing a file." {
		t.Errorf("text %q", text[0])
	}
	if toolStart["name"] != "Write" || !strings.HasPrefix(toolStart["id"].(string), "toolu_") {
		t.Errorf("tool_use start %v", toolStart)
	}
	var gotInput map[string]any
	if err := json.Unmarshal([]byte(input[1]), &gotInput); err != nil {
		t.Fatalf("reassembled input %q: %v", input[1], err)
	}
	wantInput, _ := json.Marshal(writeInput)
	if b, _ := json.Marshal(gotInput); !bytes.Equal(b, wantInput) {
		t.Errorf("tool input %s, want %s", b, wantInput)
	}
	delta := events[len(events)-2].data
	if delta["delta"].(map[string]any)["stop_reason"] != "tool_use" || delta["usage"].(map[string]any)["output_tokens"] != 22.0 {
		t.Errorf("message_delta %v", delta)
	}

	// After one tool result: the final text turn, end_turn, the default usage.
	events = readSSE(t, post(t, hs.URL+"/v1/messages", "k", loopBody(1, true)).Body)
	delta = events[len(events)-2].data
	if delta["delta"].(map[string]any)["stop_reason"] != "end_turn" || delta["usage"].(map[string]any)["output_tokens"] != float64(DefaultUsage.OutputTokens) {
		t.Errorf("final message_delta %v", delta)
	}
	if turns := srv.TurnRequests(); len(turns) != 2 || turns[0].Turn != 0 || turns[1].Turn != 1 || turns[0].Header.Get("x-api-key") != "k" {
		t.Errorf("turn requests %+v", turns)
	}
}

// TestJSONAndSide: a request that does not stream gets the whole message; one without tools the side text; one
// past the script a 500; a wrong key 401; count_tokens and models answer.
func TestJSONAndSide(t *testing.T) {
	srv := New(testScript())
	hs := httptest.NewServer(srv)
	defer hs.Close()
	var msg message
	if err := json.NewDecoder(post(t, hs.URL+"/corp/v1/messages", "k", loopBody(0, false)).Body).Decode(&msg); err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 2 || msg.Content[1].Name != "Write" || *msg.StopReason != "tool_use" || msg.Usage.OutputTokens != 22 {
		t.Errorf("message %+v", msg)
	}
	side := `{"model":"claude-haiku","max_tokens":1,"messages":[{"role":"user","content":"quota"}]}`
	msg = message{}
	if err := json.NewDecoder(post(t, hs.URL+"/v1/messages", "k", side).Body).Decode(&msg); err != nil {
		t.Fatal(err)
	}
	if len(msg.Content) != 1 || *msg.Content[0].Text != "OK" || *msg.StopReason != "end_turn" {
		t.Errorf("side answer %+v", msg)
	}
	if r := post(t, hs.URL+"/v1/messages", "k", loopBody(2, true)); r.StatusCode != 500 {
		t.Errorf("past the script: %d", r.StatusCode)
	}
	if r := post(t, hs.URL+"/v1/messages", "wrong", loopBody(0, true)); r.StatusCode != 401 {
		t.Errorf("wrong key: %d", r.StatusCode)
	}
	var ct map[string]int
	_ = json.NewDecoder(post(t, hs.URL+"/v1/messages/count_tokens", "k", side).Body).Decode(&ct)
	if ct["input_tokens"] != len(side)/4+1 {
		t.Errorf("count_tokens %v", ct)
	}
	req, _ := http.NewRequest(http.MethodGet, hs.URL+"/v1/models", nil)
	req.Header.Set("Authorization", "Bearer k")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var models struct{ Data []struct{ ID string } }
	if err := json.NewDecoder(resp.Body).Decode(&models); err != nil || len(models.Data) != 1 || models.Data[0].ID != "claude-sonnet-4-5" {
		t.Errorf("models %+v %v", models, err)
	}
	kinds := []int{}
	for _, r := range srv.Requests() {
		kinds = append(kinds, r.Turn)
	}
	if want := []int{0, SideRequest, 2, OtherRequest, OtherRequest, OtherRequest}; !equalInts(kinds, want) {
		t.Errorf("request kinds %v, want %v", kinds, want)
	}
}

func equalInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestHold: a held turn answers only once released, FirstMessage fires when the request arrives, and a
// cancelled request stops waiting.
func TestHold(t *testing.T) {
	h := NewHold()
	script := testScript()
	script.Turns[0].Hold = h
	srv := New(script)
	hs := httptest.NewServer(srv)
	defer hs.Close()
	got := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequest(http.MethodPost, hs.URL+"/v1/messages", strings.NewReader(loopBody(0, true)))
		req.Header.Set("x-api-key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Error(err)
		}
		got <- resp
	}()
	<-srv.FirstMessage()
	<-h.Reached()
	select {
	case <-got:
		t.Fatal("answered before release")
	case <-time.After(100 * time.Millisecond):
	}
	h.Release()
	resp := <-got
	defer resp.Body.Close()
	if events := readSSE(t, resp.Body); len(events) != 14 {
		t.Errorf("%d events after release", len(events))
	}
}

// TestHoldCancelled: a client that gives up on a held turn ends its request; the hold stays for the next one.
func TestHoldCancelled(t *testing.T) {
	h := NewHold()
	script := testScript()
	script.Turns[0].Hold = h
	hs := httptest.NewServer(New(script))
	defer hs.Close()
	ctx, cancel := context.WithCancel(context.Background())
	errs := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, hs.URL+"/v1/messages", strings.NewReader(loopBody(0, true)))
		req.Header.Set("x-api-key", "k")
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		errs <- err
	}()
	<-h.Reached()
	cancel()
	if err := <-errs; !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled request: %v", err)
	}
	h.Release()
	if events := readSSE(t, post(t, hs.URL+"/v1/messages", "k", loopBody(0, true)).Body); len(events) != 14 {
		t.Errorf("%d events after release", len(events))
	}
}
