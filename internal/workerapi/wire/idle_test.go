package wire

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestIdleBodyCutsOffAStalledUpload: a client that stops sending mid-body gets its request failed after the idle
// time, while one that keeps sending is not limited.
func TestIdleBodyCutsOffAStalledUpload(t *testing.T) {
	result := make(chan error, 2)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, err := io.Copy(io.Discard, IdleBody(w, r.Body, 300*time.Millisecond))
		result <- err
	}))
	defer srv.Close()

	send := func(stall bool) {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
		for i := 0; i < 10; i++ {
			if stall && i == 5 {
				break // stop sending, keep the connection open
			}
			time.Sleep(100 * time.Millisecond) // slower than nothing, faster than the idle limit
			if _, err := conn.Write([]byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		if !stall {
			_, _ = bufio.NewReader(conn).ReadString('\n')
		}
		select {
		case err := <-result:
			if stall && (err == nil || !strings.Contains(err.Error(), "timeout")) {
				t.Fatalf("stalled upload: %v, want a timeout", err)
			}
			if !stall && err != nil {
				t.Fatalf("steady upload (1 s in all, over 3 idle periods) failed: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("stall=%v: the handler never finished", stall)
		}
	}
	send(false)
	send(true)
}
