package credproxy

import (
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// readUsage passes body through a usageReader in reads of one byte (so every line is split across reads) and
// returns what came out and the usage it read.
func readUsage(t *testing.T, sse bool, body string) (string, Usage, bool) {
	t.Helper()
	var got Usage
	var seen, done bool
	r := &usageReader{rc: io.NopCloser(iotest.OneByteReader(strings.NewReader(body))), sse: sse,
		finish: func(u Usage, s bool) { got, seen, done = u, s, true }}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	if !done {
		t.Fatal("finish did not run")
	}
	return string(out), got, seen
}

func TestUsageReader(t *testing.T) {
	stream := strings.Join(sseEvents, "")
	out, u, seen := readUsage(t, true, strings.ReplaceAll(stream, "\n", "\r\n"))
	if out != strings.ReplaceAll(stream, "\n", "\r\n") || !seen {
		t.Fatal("the stream did not pass unchanged, or no usage")
	}
	if u.InputTokens != 25 || u.OutputTokens != 15 || u.CacheCreationInputTokens != 7 || u.CacheReadInputTokens != 100 ||
		u.Model != "claude-sonnet-4-5" {
		t.Fatalf("anthropic stream with CRLF: %+v", u)
	}
	// The Responses API reports usage in response.completed.
	_, u, _ = readUsage(t, true, "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"model\":\"gpt-5\",\"usage\":null}}\n\n"+
		"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"model\":\"gpt-5\",\"usage\":{\"input_tokens\":30,\"input_tokens_details\":{\"cached_tokens\":4},\"output_tokens\":6}}}\n\n")
	if u.InputTokens != 30 || u.OutputTokens != 6 || u.CacheReadInputTokens != 4 || u.Model != "gpt-5" {
		t.Fatalf("responses api: %+v", u)
	}
	// A stream without usage records nothing; an over-long line is passed and skipped, not parsed.
	long := "data: {\"usage\":{\"input_tokens\":1}," + strings.Repeat("x", maxScanLine) + "}\n\n"
	if out, _, seen := readUsage(t, true, long+"data: {\"type\":\"ping\"}\n\n"); seen || out != long+"data: {\"type\":\"ping\"}\n\n" {
		t.Fatalf("long line: seen=%v, passed %d bytes", seen, len(out))
	}
	// A JSON body, and one that is not JSON.
	if _, u, seen = readUsage(t, false, `{"usage":{"prompt_tokens":3,"completion_tokens":4}}`); !seen || u.InputTokens != 3 || u.OutputTokens != 4 {
		t.Fatalf("json body: %+v %v", u, seen)
	}
	if _, _, seen = readUsage(t, false, `<html>bad gateway</html>`); seen {
		t.Fatal("usage read from a non-JSON body")
	}
}
