package logs

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/metrics"
	"github.com/aetherium/aetherium/internal/metrics/metricstest"
)

// victoriaLogs is a real VictoriaLogs server run by the test: it accepts Loki's push protocol at
// /insert/loki/api/v1/push and answers LogsQL at /select/logsql/query. scripts/setup.sh builds it
// (AETHERIUM_TEST_VICTORIALOGS_BIN).
type victoriaLogs struct {
	t       *testing.T
	bin     string
	dataDir string
	addr    string
	cmd     *exec.Cmd
}

func victoriaLogsBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("AETHERIUM_TEST_VICTORIALOGS_BIN")
	if bin == "" {
		bin = "/var/cache/aetherium/bin/victoria-logs-v1.52.2" // where scripts/setup.sh builds it
	}
	if _, err := os.Stat(bin); err != nil {
		msg := fmt.Sprintf("VictoriaLogs is not built (%v): run scripts/setup.sh services, or set AETHERIUM_TEST_VICTORIALOGS_BIN", err)
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatal("AETHERIUM_REQUIRE_SERVICES=1: " + msg)
		}
		t.Skip("SKIPPING the real Loki-compatible server tests: " + msg)
	}
	return bin
}

func startVictoriaLogs(t *testing.T) *victoriaLogs {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	v := &victoriaLogs{t: t, bin: victoriaLogsBin(t), dataDir: t.TempDir(), addr: addr}
	v.start()
	t.Cleanup(func() { v.stop() })
	return v
}

func (v *victoriaLogs) start() {
	v.t.Helper()
	v.cmd = exec.Command(v.bin, "-httpListenAddr="+v.addr, "-storageDataPath="+v.dataDir, "-loggerLevel=WARN",
		"-inmemoryDataFlushInterval=1s")
	v.cmd.Stdout, v.cmd.Stderr = os.Stderr, os.Stderr
	if err := v.cmd.Start(); err != nil {
		v.t.Fatal(err)
	}
	for i := 0; ; i++ {
		resp, err := http.Get("http://" + v.addr + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if i > 300 {
			v.t.Fatalf("VictoriaLogs did not become healthy on %s: %v", v.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the server with SIGTERM (it flushes what it acknowledged) and waits for it.
func (v *victoriaLogs) stop() {
	if v.cmd == nil || v.cmd.Process == nil {
		return
	}
	_ = v.cmd.Process.Signal(syscall.SIGTERM)
	_ = v.cmd.Wait()
	v.cmd = nil
}

func (v *victoriaLogs) lokiURL() string { return "http://" + v.addr + "/insert" }

// query runs LogsQL and returns one map per entry.
func (v *victoriaLogs) query(q string) []map[string]string {
	v.t.Helper()
	resp, err := http.PostForm("http://"+v.addr+"/select/logsql/query", url.Values{"query": {q}})
	if err != nil {
		v.t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		v.t.Fatalf("LogsQL %q: status %d", q, resp.StatusCode)
	}
	var out []map[string]string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		m := map[string]string{}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			v.t.Fatalf("LogsQL line %q: %v", sc.Text(), err)
		}
		out = append(out, m)
	}
	if err := sc.Err(); err != nil {
		v.t.Fatal(err)
	}
	return out
}

// queryUntil queries until want entries are visible (VictoriaLogs makes fresh data searchable within about a
// second), or gives the last answer after a generous wait.
func (v *victoriaLogs) queryUntil(q string, want int) []map[string]string {
	v.t.Helper()
	var got []map[string]string
	for i := 0; i < 200; i++ {
		if got = v.query(q); len(got) >= want {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
	return got
}

// pushFormats are the push formats every test against the real server runs in.
var pushFormats = []string{FormatProtobuf, FormatJSON}

// forEachFormat runs test once per push format, as subtests named after it.
func forEachFormat(t *testing.T, test func(t *testing.T, format string)) {
	for _, f := range pushFormats {
		t.Run(f, func(t *testing.T) { test(t, f) })
	}
}

// TestLokiPushToVictoriaLogs pushes entries of three streams with structured metadata (hostile bytes included, in
// lines, metadata and a label value) through the client and reads every one back from a real server, labels and
// metadata intact, in each push format.
func TestLokiPushToVictoriaLogs(t *testing.T) {
	forEachFormat(t, testLokiPushToVictoriaLogs)
}

func testLokiPushToVictoriaLogs(t *testing.T, format string) {
	v := startVictoriaLogs(t)
	worker := "w-" + uuid.NewString()[:8]
	client, err := NewLoki(LokiConfig{URL: v.lokiURL(), Format: format, BatchEntries: 7, BatchWait: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	base := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	const n = 60
	want := map[string]Entry{}
	for i := 0; i < n; i++ {
		kind, service := KindExec, "aetherium"
		switch i % 3 {
		case 0:
			kind = KindConsole
		case 1:
			service = "aeth \"quoted\" back\\slash, {brace}=\nnewline" // escaped in protobuf's label string
		}
		e := Entry{Time: base.Add(time.Duration(i) * time.Millisecond),
			Line:   fmt.Sprintf("line %d \"quoted\" {brace} ünïcode \t tab", i),
			Labels: Labels{Service: service, Role: "worker", Worker: worker, Level: "info", Kind: kind},
			Metadata: map[string]string{"seq": strconv.Itoa(i), MetaVMID: "vm-" + strconv.Itoa(i%4),
				MetaExecutionID: uuid.NewString(), MetaOwnerID: "owner-1", "hostile": "a \"b\" \\ c\nd, {e}=f"}}
		want[strconv.Itoa(i)] = e
		if err := client.Push(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := client.Stats(); st.Sent != n || st.Dropped != 0 || st.Queued != 0 {
		t.Fatalf("stats %+v, want %d sent and none dropped or queued", st, n)
	}
	got := v.queryUntil(fmt.Sprintf(`_stream:{worker=%q}`, worker), n)
	if len(got) != n {
		t.Fatalf("server has %d entries of worker %s, want %d", len(got), worker, n)
	}
	for _, g := range got {
		w, ok := want[g["seq"]]
		if !ok {
			t.Fatalf("unexpected entry %v", g)
		}
		delete(want, g["seq"])
		if g["_msg"] != w.Line {
			t.Errorf("seq %s: line %q, want %q", g["seq"], g["_msg"], w.Line)
		}
		ts, err := time.Parse(time.RFC3339Nano, g["_time"])
		if err != nil || !ts.Equal(w.Time) {
			t.Errorf("seq %s: time %q (%v), want %s", g["seq"], g["_time"], err, w.Time.UTC().Format(time.RFC3339Nano))
		}
		for k, val := range w.Labels.Map() {
			if g[k] != val {
				t.Errorf("seq %s: label %s = %q, want %q", g["seq"], k, g[k], val)
			}
			if !strings.Contains(g["_stream"], k+"=") {
				t.Errorf("seq %s: label %s is not a stream field (%s)", g["seq"], k, g["_stream"])
			}
		}
		for k, val := range w.Metadata {
			if g[k] != val {
				t.Errorf("seq %s: metadata %s = %q, want %q", g["seq"], k, g[k], val)
			}
			if strings.Contains(g["_stream"], k+"=") {
				t.Errorf("seq %s: metadata %s became a stream label (%s)", g["seq"], k, g["_stream"])
			}
		}
	}
	if len(want) != 0 {
		t.Fatalf("%d entries missing", len(want))
	}
}

// TestLokiServerRestartMidBurst stops the server in the middle of a burst and starts it again on the same data
// directory: every entry either arrives or is counted as dropped by the bounded buffer, exactly, and the
// metrics scraped from the process's registry say the same, in each push format.
func TestLokiServerRestartMidBurst(t *testing.T) {
	forEachFormat(t, testLokiServerRestartMidBurst)
}

func testLokiServerRestartMidBurst(t *testing.T, format string) {
	v := startVictoriaLogs(t)
	worker := "w-" + uuid.NewString()[:8]
	const bufferEntries, batch = 500, 50
	client, err := NewLoki(LokiConfig{URL: v.lokiURL(), Format: format, BatchEntries: batch, BatchWait: 10 * time.Millisecond,
		MaxBufferEntries: bufferEntries, MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	// Registered as internal/server does: the collector reads the client's Stats at each scrape.
	ms := metrics.New("test")
	if err := ms.WatchLogs(func() metrics.LogStats {
		st := client.Stats()
		return metrics.LogStats{Sent: st.Sent, Dropped: st.Dropped, Queued: st.Queued, Rejected: st.Rejected}
	}); err != nil {
		t.Fatal(err)
	}
	seq := 0
	push := func(count int) {
		for i := 0; i < count; i++ {
			e := Entry{Line: "burst " + strconv.Itoa(seq),
				Labels:   Labels{Service: "aetherium", Role: "worker", Worker: worker, Level: "info", Kind: KindExec},
				Metadata: map[string]string{"seq": strconv.Itoa(seq)}}
			seq++
			if err := client.Push(context.Background(), e); err != nil {
				t.Fatal(err)
			}
			if i%100 == 99 {
				time.Sleep(time.Millisecond) // a burst, not one call: the sender gets to run
			}
		}
	}
	push(3000)
	v.stop() // mid-burst: batches in flight fail and are retried
	// While the server is down nothing can be sent: of these 4*buffer entries at least 3*buffer-batch cannot fit.
	push(4 * bufferEntries)
	if st := client.Stats(); st.Dropped < 3*bufferEntries-batch {
		t.Fatalf("with the server down the buffer dropped only %d entries (stats %+v)", st.Dropped, st)
	}
	if s := metricstest.Render(t, ms); s.Value("aetherium_log_entries_dropped_total", nil) < 3*bufferEntries-batch ||
		s.Value("aetherium_log_entries_queued", nil) == 0 {
		t.Fatalf("with the server down: dropped metric %v, queued metric %v", s.Value("aetherium_log_entries_dropped_total", nil),
			s.Value("aetherium_log_entries_queued", nil))
	}
	v.start()
	push(3000) // while the sender may still be backing off: the buffer drops what does not fit, and counts it
	// Recovery: once the queue has drained, chunks that fit the buffer all arrive, and nothing more is dropped.
	drain := func() {
		for client.Stats().Queued != 0 {
			time.Sleep(10 * time.Millisecond)
		}
	}
	drain()
	droppedBefore, recoveredFrom := client.Stats().Dropped, seq
	for range 4 {
		push(bufferEntries / 2)
		drain()
	}
	if d := client.Stats().Dropped; d != droppedBefore {
		t.Fatalf("after recovery %d more entries were dropped", d-droppedBefore)
	}
	n := seq
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := client.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st := client.Stats()
	if st.Queued != 0 || st.Sent+st.Dropped != int64(n) {
		t.Fatalf("stats %+v do not account for the %d entries pushed", st, n)
	}
	got := v.queryUntil(fmt.Sprintf(`_stream:{worker=%q} | fields seq`, worker), int(st.Sent))
	seen := map[string]int{}
	for _, g := range got {
		seen[g["seq"]]++
	}
	dups := len(got) - len(seen)
	t.Logf("pushed %d, received %d distinct (%d duplicates from retried batches), dropped %d (counter)", n, len(seen), dups, st.Dropped)
	if int64(len(seen))+st.Dropped != int64(n) {
		t.Fatalf("received %d + dropped %d != pushed %d: entries were lost without being counted", len(seen), st.Dropped, n)
	}
	if int64(len(seen)) != st.Sent {
		t.Fatalf("received %d distinct, client counted %d sent", len(seen), st.Sent)
	}
	scrape := metricstest.Render(t, ms)
	for name, want := range map[string]int64{"aetherium_log_entries_dropped_total": int64(n - len(seen)),
		"aetherium_log_entries_sent_total": int64(len(seen)), "aetherium_log_entries_queued": 0,
		"aetherium_log_batches_rejected_total": 0} {
		if got := scrape.Value(name, nil); got != float64(want) {
			t.Errorf("%s = %v, want %d (pushed %d, received %d)", name, got, want, n, len(seen))
		}
	}
	if got := scrape.Value("aetherium_log_entries_dropped_total", nil); got != float64(st.Dropped) {
		t.Errorf("aetherium_log_entries_dropped_total = %v, Stats.Dropped = %d", got, st.Dropped)
	}
	for i := recoveredFrom; i < n; i++ {
		if seen[strconv.Itoa(i)] == 0 {
			t.Fatalf("entry %d, pushed after the server was back and the queue drained, did not arrive", i)
		}
	}
}
