//go:build linux

package server_test

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/server"
)

func benchClient(b *testing.B) *client.Client {
	b.Helper()
	path := unixServer(b, server.Config{})
	c := client.New(agent.UnixDialer(path))
	b.Cleanup(func() { _ = c.Close() })
	if _, err := c.WaitReady(b.Context()); err != nil {
		b.Fatal(err)
	}
	return c
}

// reportLatency records the median and 99th percentile of per-operation latencies.
func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))].Nanoseconds()) }
	b.ReportMetric(pct(0.50), "p50-ns")
	b.ReportMetric(pct(0.99), "p99-ns")
}

// BenchmarkHealth is the agent-direct round trip of a no-op request over a Unix socket, on a warm connection.
func BenchmarkHealth(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	lat := make([]time.Duration, 0, 1024)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		if _, err := c.Health(ctx); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
	}
	reportLatency(b, lat)
}

// BenchmarkHealthParallel is many concurrent callers sharing one connection.
func BenchmarkHealthParallel(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Health(ctx); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkExecTrue is the round trip of running `true`: fork, exec, wait, and the protocol around them.
func BenchmarkExecTrue(b *testing.B) {
	c := benchClient(b)
	ctx := context.Background()
	lat := make([]time.Duration, 0, 1024)
	req := agent.ExecRequest{Argv: []string{"true"}}
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		res, err := c.Exec(ctx, req)
		if err != nil || res.ExitCode != 0 {
			b.Fatal(res, err)
		}
		lat = append(lat, time.Since(start))
	}
	reportLatency(b, lat)
}

type counter int64

func (c *counter) Write(p []byte) (int, error) {
	*c += counter(len(p))
	return len(p), nil
}

// BenchmarkStreamCat100MB is the streamed throughput of `cat` of a 100 MB file (b.SetBytes: see MB/s).
func BenchmarkStreamCat100MB(b *testing.B) {
	const size = 100 << 20
	path := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i * 7)
	}
	for range size / len(block) {
		if _, err := f.Write(block); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	c := benchClient(b)
	ctx := context.Background()
	req := agent.ExecRequest{Argv: []string{"cat", path}}
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		var n counter
		res, err := c.ExecStream(ctx, req, &n, nil)
		if err != nil || res.ExitCode != 0 || n != size {
			b.Fatal(res, err, n)
		}
	}
}

// benchFile writes a file of size bytes (a repeating pattern) and returns its path.
func benchFile(b *testing.B, size int) string {
	b.Helper()
	path := filepath.Join(b.TempDir(), "big")
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	block := make([]byte, 1<<20)
	for i := range block {
		block[i] = byte(i * 7)
	}
	for range size / len(block) {
		if _, err := f.Write(block); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		b.Fatal(err)
	}
	return path
}

// patternReader produces n bytes of a pattern without holding them.
type patternReader struct{ left int }

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), r.left)
	for i := range n {
		p[i] = byte(i)
	}
	r.left -= n
	return n, nil
}

// BenchmarkUpload100MB is the throughput of a streamed upload (b.SetBytes: see MB/s), fsync and rename included.
func BenchmarkUpload100MB(b *testing.B) {
	const size = 100 << 20
	c := benchClient(b)
	ctx := context.Background()
	target := filepath.Join(b.TempDir(), "up")
	lat := make([]time.Duration, 0, 64)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		info, err := c.Upload(ctx, agent.UploadRequest{Path: target}, &patternReader{left: size})
		if err != nil || info.Size != size {
			b.Fatal(info, err)
		}
		lat = append(lat, time.Since(start))
	}
	reportLatency(b, lat)
}

// BenchmarkDownload100MB is the throughput of a streamed download (b.SetBytes: see MB/s).
func BenchmarkDownload100MB(b *testing.B) {
	const size = 100 << 20
	path := benchFile(b, size)
	c := benchClient(b)
	ctx := context.Background()
	lat := make([]time.Duration, 0, 64)
	b.SetBytes(size)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		var n counter
		info, err := c.Download(ctx, path, &n)
		if err != nil || n != size || info.Size != size {
			b.Fatal(info, err, n)
		}
		lat = append(lat, time.Since(start))
	}
	reportLatency(b, lat)
}
