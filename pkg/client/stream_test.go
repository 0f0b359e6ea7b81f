package client_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// sseServer answers every request with body as a text/event-stream, after recording the request.
func sseServer(t *testing.T, body string) (*client.Client, *[]*http.Request) {
	t.Helper()
	var reqs []*http.Request
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs = append(reqs, r)
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte(body))
	}))
	t.Cleanup(srv.Close)
	c, err := client.New(srv.URL, testKey)
	if err != nil {
		t.Fatal(err)
	}
	return c, &reqs
}

func collect(chunks *[]client.Chunk) func(client.Chunk) error {
	return func(ch client.Chunk) error {
		*chunks = append(*chunks, ch)
		return nil
	}
}

func TestStreamExecutionParsesServerSentEvents(t *testing.T) {
	big := strings.Repeat("x", 200<<10) // longer than any line buffer
	body := ": execution 1\n\n" +
		"event: stdout\r\ndata: {\"offset\":0,\"data\":\"one\\n\"}\r\n\r\n" + // CRLF
		": ping\n\n" +
		"event: stdout\ndata: {\"offset\":4,\ndata: \"data\":\"two\\n\"}\n\n" + // data on two lines: joined with \n
		"event: stderr\rdata: {\"offset\":0,\"data_base64\":\"/w==\"}\r\r" + // CR only; binary
		"event: future\ndata: {}\n\n" + // unknown event: ignored
		"event: stdout\nid: 7\nretry: 10\ndata:{\"offset\":8,\"data\":\"" + big + "\"}\n\n" + // no space after colon
		"event: end\ndata: {\"status\":\"completed\",\"exit_code\":3,\"timed_out\":false,\"stdout_truncated\":true,\"stderr_truncated\":false,\"stdout_bytes\":42}\n\n" +
		"event: stdout\ndata: {\"offset\":99,\"data\":\"after the end\"}\n\n"
	c, reqs := sseServer(t, body)
	var chunks []client.Chunk
	end, err := c.StreamExecutionFrom(context.Background(), "e-1", client.StreamOptions{StdoutOffset: 5, StderrOffset: 0}, collect(&chunks))
	if err != nil {
		t.Fatal(err)
	}
	want := []client.Chunk{
		{Stream: "stdout", Offset: 0, Data: []byte("one\n")},
		{Stream: "stdout", Offset: 4, Data: []byte("two\n")},
		{Stream: "stderr", Offset: 0, Data: []byte{0xff}},
		{Stream: "stdout", Offset: 8, Data: []byte(big)},
	}
	if fmt.Sprint(chunks) != fmt.Sprint(want) {
		t.Fatalf("chunks\n%.200v\nwant\n%.200v", chunks, want)
	}
	if end.Status != "completed" || end.ExitCode == nil || *end.ExitCode != 3 || !end.StdoutTruncated || end.StdoutBytes == nil || *end.StdoutBytes != 42 {
		t.Fatalf("end %+v", end)
	}
	r := (*reqs)[0]
	if r.URL.Path != "/api/v1/executions/e-1/stream" || r.URL.RawQuery != "stdout_offset=5" ||
		r.Header.Get("Accept") != "text/event-stream" || r.Header.Get("Authorization") != "Bearer "+testKey {
		t.Fatalf("request %s %s %v", r.URL.Path, r.URL.RawQuery, r.Header)
	}
}

func TestStreamExecutionErrors(t *testing.T) {
	ctx := context.Background()
	// Closed before the end (a half-sent event is dropped).
	c, _ := sseServer(t, "event: stdout\ndata: {\"offset\":0,\"data\":\"a\"}\n\nevent: stdout\ndata: {\"offset\":1,")
	var chunks []client.Chunk
	if _, err := c.StreamExecution(ctx, "x", collect(&chunks)); !errors.Is(err, client.ErrStreamEnded) || len(chunks) != 1 {
		t.Fatalf("early close: %v, %d chunks", err, len(chunks))
	}
	// Undecodable data.
	c, _ = sseServer(t, "event: stdout\ndata: {\"offset\":\"zero\"}\n\n")
	if _, err := c.StreamExecution(ctx, "x", collect(&chunks)); !errors.Is(err, client.ErrStreamEnded) {
		t.Fatalf("bad data: %v", err)
	}
	// The callback's error comes back as it is, and stops the stream.
	stop := errors.New("enough")
	c, _ = sseServer(t, "event: stdout\ndata: {\"offset\":0,\"data\":\"a\"}\n\nevent: end\ndata: {\"status\":\"completed\"}\n\n")
	n := 0
	if _, err := c.StreamExecution(ctx, "x", func(client.Chunk) error { n++; return stop }); err != stop || n != 1 {
		t.Fatalf("callback error: %v after %d chunks", err, n)
	}
	// An error answer before the stream.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":{"code":"not_found","message":"execution x: not found"}}`))
	}))
	defer srv.Close()
	c, _ = client.New(srv.URL, testKey)
	if _, err := c.StreamExecution(ctx, "x", collect(&chunks)); !client.IsNotFound(err) {
		t.Fatalf("404: %v", err)
	}
	// Not an event stream (a proxy's page).
	html := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<html>hi</html>"))
	}))
	defer html.Close()
	c, _ = client.New(html.URL, testKey)
	var ae *client.APIError
	if _, err := c.StreamExecution(ctx, "x", collect(&chunks)); !errors.As(err, &ae) {
		t.Fatalf("html answer: %v", err)
	}
}

func TestStreamExecutionHonoursContext(t *testing.T) {
	started := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = w.Write([]byte(": hello\n\n"))
		w.(http.Flusher).Flush()
		close(started)
		<-r.Context().Done() // a command that never ends
	}))
	defer srv.Close()
	c, err := client.New(srv.URL, testKey)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	go func() {
		<-started
		cancel()
	}()
	if _, err := c.StreamExecution(ctx, "x", func(client.Chunk) error { return nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled stream: %v", err)
	}
}
