package api

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestSlowJSONBodyIsCutOff sends a JSON body a byte at a time: the API answers 408 once BodyTimeout has passed,
// and nothing is created. The same body sent in time is answered as usual.
func TestSlowJSONBodyIsCutOff(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.BodyTimeout = 500 * time.Millisecond })
	body := `{"name":"slow-but-never-done"}`
	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "POST /api/v1/vms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\n\r\n", e.keyA, len(body))
	answered := make(chan *http.Response, 1)
	go func() {
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Errorf("read answer: %v", err)
			close(answered)
			return
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		answered <- resp
	}()
	start := time.Now()
	sent := 0
	for resp := (*http.Response)(nil); resp == nil; {
		select {
		case resp = <-answered:
			if resp == nil {
				t.FailNow()
			}
			if resp.StatusCode != http.StatusRequestTimeout || sent >= len(body) {
				t.Fatalf("answer %d after %d of %d body bytes, want 408 before the body is complete", resp.StatusCode, sent, len(body))
			}
			t.Logf("408 after %s and %d body bytes", time.Since(start).Round(time.Millisecond), sent)
		case <-time.After(100 * time.Millisecond):
			if time.Since(start) > 30*time.Second {
				t.Fatal("a client trickling its body still holds the request after 30 s")
			}
			if sent < len(body) {
				if _, err := conn.Write([]byte{body[sent]}); err == nil {
					sent++
				}
			}
		}
	}
	if c := e.counts(); c.vms != 0 {
		t.Fatalf("the cut-off request created something: %+v", c)
	}
	if r := e.call("POST", "/api/v1/vms", e.keyA, body); r.status != http.StatusAccepted {
		t.Fatalf("the same body in time: %d %s", r.status, r.body)
	}
	// The deadline bounds the body only: a ?wait longer than it (no worker, so the wait runs its whole course) is
	// not cut short.
	waitStart := time.Now()
	if r := e.call("POST", "/api/v1/vms?wait=1500ms", e.keyA, `{"name":"waits"}`); r.status != http.StatusAccepted {
		t.Fatalf("a wait longer than the body deadline: %d %s", r.status, r.body)
	}
	if took := time.Since(waitStart); took < 1400*time.Millisecond {
		t.Fatalf("a 1.5 s wait answered after %s: cut short by the body deadline", took)
	}
}

// TestSlowUploadIsNotCutOff streams an upload in pieces over several times BodyTimeout: uploads are bounded by
// their idle timeout, not by the deadline of JSON bodies, so every byte reaches the worker.
func TestSlowUploadIsNotCutOff(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.BodyTimeout = 200 * time.Millisecond
		c.ClusterToken = clusterToken
	})
	w := newWorkerRig(t, clusterToken, noVMs{err: vmm.ErrNotFound})
	id := e.runningVM("up", "w-up", w.srv.URL, time.Now())
	pr, pw := io.Pipe()
	const pieces, size = 8, 4096
	go func() {
		for range pieces {
			time.Sleep(100 * time.Millisecond)
			if _, err := pw.Write([]byte(strings.Repeat("u", size))); err != nil {
				return
			}
		}
		pw.Close()
	}()
	start := time.Now()
	r := e.do(req{method: "PUT", path: "/api/v1/vms/" + id + "/files?path=/tmp/slow", key: e.keyA, body: pr,
		contentType: "application/octet-stream"})
	took := time.Since(start)
	if r.status == http.StatusRequestTimeout || r.errCode() == client.CodeRequestTimeout {
		t.Fatalf("the slow upload was cut off: %d %s", r.status, r.body)
	}
	if got := w.last(t).bodyLen; got != pieces*size {
		t.Fatalf("the worker received %d bytes, want %d (answer %d %s)", got, pieces*size, r.status, r.body)
	}
	if took < 4*200*time.Millisecond {
		t.Fatalf("the upload took %s: not slow enough to prove anything", took)
	}
}
