package e2e

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// timedChunk is a chunk and when the client got it.
type timedChunk struct {
	client.Chunk
	at time.Time
}

// TestStreamedExec: live output through the whole product (serve): a client sees output while the command runs,
// output beyond the stored cap streams in full while the stored copy is truncated, and a finished execution is
// replayed from the store; the CLI streams by default and keeps the command's exit code.
func TestStreamedExec(t *testing.T) {
	requireDocker(t)
	dataDir := t.TempDir()
	addr := freePort(t)
	workerID := "e2e-stream"
	removeWorkerContainers(t, workerID)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID, "AETHERIUM_MAX_OUTPUT_BYTES=4096"), "serve")
	waitHTTP(t, addr, p)
	key := readLine(t, filepath.Join(dataDir, "admin-api-key"))
	c := newClient(t, addr, key)
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "streamer"})
	if err != nil {
		t.Fatal(err)
	}

	// 1. "one" reaches the client before the command ends. Every command here waits for a file that the client
	// creates once its stream is open, so that it surely listens before the first byte.
	acc, err := c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", waitFor("/tmp/go1") + "echo one; sleep 1; echo two"}})
	if err != nil {
		t.Fatal(err)
	}
	var chunks []timedChunk
	open, opened := gate(ctx, c, vm.ID, "/tmp/go1")
	end, err := c.StreamExecutionFrom(ctx, acc.ExecutionID, client.StreamOptions{OnOpen: open}, func(ch client.Chunk) error {
		chunks = append(chunks, timedChunk{ch, time.Now()})
		return nil
	})
	endAt := time.Now()
	if err != nil {
		t.Fatal(err)
	}
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	if len(chunks) != 2 || string(chunks[0].Data) != "one\n" || string(chunks[1].Data) != "two\n" || chunks[1].Offset != 4 {
		t.Fatalf("chunks %+v, want \"one\\n\" then \"two\\n\"", chunks)
	}
	if end.Status != "completed" || end.ExitCode == nil || *end.ExitCode != 0 {
		t.Fatalf("end %+v", end)
	}
	ex, err := c.GetExecution(ctx, acc.ExecutionID)
	if err != nil || ex.CompletedAt == nil {
		t.Fatalf("execution %+v %v", ex, err)
	}
	// Docker guests share the host's clock, so the command's end time compares with the client's.
	if !chunks[0].at.Before(*ex.CompletedAt) || !chunks[0].at.Before(chunks[1].at) || chunks[1].at.After(endAt) {
		t.Fatalf("\"one\" arrived at %v, the command ended at %v, \"two\" arrived at %v, the end at %v",
			chunks[0].at, *ex.CompletedAt, chunks[1].at, endAt)
	}

	// 2. Past the stored cap (4096 bytes here) the stream goes on; the stored copy is cut and says so.
	const total = 200000
	script := waitFor("/tmp/go2") + "yes 0123456789abcdefghijklmnopqrstuvwxyz | head -c " + strconv.Itoa(total) + "; echo fin >&2; exit 5"
	acc, err = c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", script}})
	if err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	open, opened = gate(ctx, c, vm.ID, "/tmp/go2")
	end, err = c.StreamExecutionFrom(ctx, acc.ExecutionID, client.StreamOptions{OnOpen: open}, func(ch client.Chunk) error {
		buf := &stdout
		if ch.Stream == "stderr" {
			buf = &stderr
		}
		if ch.Offset != int64(buf.Len()) {
			return errors.New("a hole in " + ch.Stream + " at " + strconv.FormatInt(ch.Offset, 10))
		}
		buf.Write(ch.Data)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-opened; err != nil {
		t.Fatal(err)
	}
	want := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyz\n"), total/37+1)[:total]
	if !bytes.Equal(stdout.Bytes(), want) || stderr.String() != "fin\n" {
		t.Fatalf("streamed %d bytes of stdout (want %d, equal %v); stderr %q", stdout.Len(), len(want), bytes.Equal(stdout.Bytes(), want), stderr.String())
	}
	if end.ExitCode == nil || *end.ExitCode != 5 || !end.StdoutTruncated || end.StdoutBytes == nil || *end.StdoutBytes != int64(len(want)) {
		t.Fatalf("end %+v", end)
	}
	ex, err = c.GetExecution(ctx, acc.ExecutionID)
	if err != nil {
		t.Fatal(err)
	}
	if !ex.StdoutTruncated || ex.Stdout != string(want[:4096]) || ex.Stderr != "fin\n" {
		t.Fatalf("stored %d bytes of stdout, truncated=%v, stderr %q", len(ex.Stdout), ex.StdoutTruncated, ex.Stderr)
	}

	// 3. The finished execution replays from the store: what it kept, then the end.
	stdout.Reset()
	end, err = c.StreamExecution(ctx, acc.ExecutionID, func(ch client.Chunk) error {
		if ch.Stream == "stdout" {
			stdout.Write(ch.Data)
		}
		return nil
	})
	if err != nil || stdout.String() != ex.Stdout || !end.StdoutTruncated || *end.ExitCode != 5 {
		t.Fatalf("replay: %v, %d bytes, end %+v", err, stdout.Len(), end)
	}

	// 4. The CLI streams by default: stdout and stderr to their own descriptors, and the command's exit code.
	env := []string{"AETHERIUM_SERVER=http://" + addr, "AETHERIUM_API_KEY=" + key}
	out, errOut, code := runCLI(t, env, "vm", "exec", "streamer", "--", "sh", "-c", "echo out; echo err >&2; exit 4")
	if code != 4 || out != "out\n" || errOut != "err\n" {
		t.Fatalf("cli vm exec: exit %d, stdout %q, stderr %q; want 4, out, err", code, out, errOut)
	}

	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		t.Fatal(err)
	}
}

// waitFor is a shell prefix that waits until path exists.
func waitFor(path string) string { return "while [ ! -e " + path + " ]; do sleep 0.01; done; " }

// gate returns an OnOpen function that creates path in the VM (in the background), and where the outcome comes.
func gate(ctx context.Context, c *client.Client, vmID, path string) (func(), <-chan error) {
	done := make(chan error, 1)
	return func() {
		go func() {
			_, err := c.ExecAndWait(ctx, vmID, client.ExecuteRequest{Command: "touch", Args: []string{path}})
			done <- err
		}()
	}, done
}

// BenchmarkStreamFirstByte measures the time from a write in the guest to its arrival at an API client through the
// whole product (agent, worker, event bus, API, SSE): the guest prints its clock with microseconds (busybox
// adjtimex) every 20 ms, and the client compares it with its own clock on arrival (Docker guests share the host's
// clock). One sample per write; b.N writes in one execution. "serve" is the embedded mode (in-process bus),
// "gateway" a gateway and a worker in separate processes on PostgreSQL and Redis pub/sub.
func BenchmarkStreamFirstByte(b *testing.B) {
	requireDocker(b)
	b.Run("serve", func(b *testing.B) {
		dataDir := b.TempDir()
		addr := freePort(b)
		removeWorkerContainers(b, "e2e-bench-stream")
		p := start(b, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-bench-stream", "AETHERIUM_LOG_LEVEL=warn"), "serve")
		waitHTTP(b, addr, p)
		benchFirstByte(b, newClient(b, addr, readLine(b, filepath.Join(dataDir, "admin-api-key"))))
	})
	b.Run("gateway", func(b *testing.B) {
		common := []string{
			"AETHERIUM_DATABASE_URL=" + newPostgresDB(b), "AETHERIUM_REDIS_URL=" + flushRedis(b),
			"AETHERIUM_AGENT_BINARY=" + filepath.Join(binDir, "aetherium-agent"), "AETHERIUM_LOG_LEVEL=warn",
			"AETHERIUM_CLUSTER_TOKEN=e2e-cluster-token-0123456789abcdef0123456789abcdef",
		}
		if _, errOut, code := runCLI(b, append(common, "AETHERIUM_DATA_DIR="+b.TempDir()), "migrate"); code != 0 {
			b.Fatalf("migrate: %s", errOut)
		}
		key, errOut, code := runCLI(b, append(common, "AETHERIUM_DATA_DIR="+b.TempDir()), "apikey", "create", "--name", "bench")
		if code != 0 {
			b.Fatalf("apikey create: %s", errOut)
		}
		addr := freePort(b)
		gw := start(b, "gateway", append(common, "AETHERIUM_DATA_DIR="+b.TempDir(), "AETHERIUM_LISTEN="+addr), "gateway")
		removeWorkerContainers(b, "e2e-bench-stream-w")
		start(b, "worker", append(common, "AETHERIUM_DATA_DIR="+b.TempDir(), "AETHERIUM_WORKER_ID=e2e-bench-stream-w"), "worker")
		waitHTTP(b, addr, gw)
		benchFirstByte(b, newClient(b, addr, strings.TrimSpace(key)))
	})
}

func benchFirstByte(b *testing.B, c *client.Client) {
	waitReady(b, c)
	ctx := context.Background()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "bench-stream"})
	if err != nil {
		b.Fatal(err)
	}
	script := waitFor("/tmp/go") + "i=0; while [ $i -lt " + strconv.Itoa(b.N) + " ]; do adjtimex; sleep 0.02; i=$((i+1)); done"
	acc, err := c.Execute(ctx, vm.ID, client.ExecuteRequest{Command: "sh", Args: []string{"-c", script}})
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	var (
		text strings.Builder
		sec  int64
	)
	open, opened := gate(ctx, c, vm.ID, "/tmp/go")
	b.ResetTimer()
	_, err = c.StreamExecutionFrom(ctx, acc.ExecutionID, client.StreamOptions{OnOpen: open}, func(ch client.Chunk) error {
		at := time.Now()
		text.Write(ch.Data)
		s := text.String()
		// Complete lines only; a partial one waits for the next chunk.
		cut := strings.LastIndexByte(s, '\n') + 1
		for _, line := range strings.Split(s[:cut], "\n") {
			k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
			if !ok {
				continue
			}
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			switch {
			case err != nil:
			case k == "time.tv_sec":
				sec = n
			case k == "time.tv_usec":
				lat = append(lat, at.Sub(time.Unix(sec, n*1000)))
			}
		}
		text.Reset()
		text.WriteString(s[cut:])
		return nil
	})
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	if err := <-opened; err != nil {
		b.Fatal(err)
	}
	if len(lat) != b.N {
		b.Fatalf("%d samples, want %d", len(lat), b.N)
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		b.Fatal(err)
	}
}
