package server

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestSlowlorisIsCutOff runs the servers' http.Server against a client that sends its headers one byte at a
// time and never finishes them: the server must close the connection (after readHeader), while an ordinary
// request on the same server is answered.
func TestSlowlorisIsCutOff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := newHTTPServer(h, slog.New(slog.NewTextHandler(io.Discard, nil)), context.Background(), time.Second)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	addr := ln.Addr().String()

	resp, err := http.Get("http://" + addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("ordinary request: %d", resp.StatusCode)
	}

	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	closed := make(chan error, 1)
	go func() {
		// Whatever the server sends (a 408, or nothing) ends with it closing the connection.
		_, err := io.Copy(io.Discard, bufio.NewReader(conn))
		closed <- err
	}()
	header := "GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 1000)
	start := time.Now()
	sent := 0
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-closed:
			if err != nil && !errors.Is(err, net.ErrClosed) && !errors.Is(err, os.ErrDeadlineExceeded) &&
				!strings.Contains(err.Error(), "connection reset") {
				t.Fatalf("reading the slow connection: %v", err)
			}
			if sent >= len(header) {
				t.Fatal("the client finished its headers: the test proves nothing")
			}
			t.Logf("cut off after %s and %d header bytes", time.Since(start).Round(time.Millisecond), sent)
			return
		case <-tick.C:
			if time.Since(start) > 30*time.Second {
				t.Fatal("a client trickling its headers still holds its connection after 30 s")
			}
			if sent < len(header) {
				if _, err := conn.Write([]byte{header[sent]}); err == nil {
					sent++
				}
			}
		}
	}
}
