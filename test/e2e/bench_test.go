package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/tracing/tracingtest"
	"github.com/aetherium/aetherium/pkg/client"
)

// BenchmarkAPIExecWait measures the round trip of a synchronous exec (`POST .../execute?wait=30s` of `true`)
// through the whole product: HTTP, auth, store, embedded queue, worker, Docker backend, agent and back.
func BenchmarkAPIExecWait(b *testing.B) {
	b.Run("docker", func(b *testing.B) { benchExecWait(b, serveBench(b, "docker")) })
	b.Run("qemu", func(b *testing.B) { benchExecWait(b, serveBench(b, "qemu")) })
}

// BenchmarkAPICreateToReady measures `POST /vms?wait` until the VM is running, through the whole product, per
// backend (the QEMU backend's raw boot, without the product, is internal/vmm/qemu's BenchmarkRawBoot).
func BenchmarkAPICreateToReady(b *testing.B) {
	for _, backend := range []string{"docker", "qemu"} {
		b.Run(backend, func(b *testing.B) {
			c := serveBench(b, backend)
			ctx := context.Background()
			lat := make([]time.Duration, 0, b.N)
			for i := 0; b.Loop(); i++ {
				start := time.Now()
				vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: fmt.Sprintf("bench-%d", i)})
				if err != nil || vm.Status != "running" {
					b.Fatalf("create: %+v %v", vm, err)
				}
				lat = append(lat, time.Since(start))
				b.StopTimer()
				if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			reportLatency(b, lat)
		})
	}
}

// BenchmarkAPIExecWaitMetrics is BenchmarkAPIExecWait on Docker with metrics off and on, for their overhead. With
// them on, a scraper reads /metrics every second meanwhile (Prometheus scrapes every 15 s or so: this is the
// worse case), so the cost of the collectors that read the store and the queue at scrape time is in it too.
func BenchmarkAPIExecWaitMetrics(b *testing.B) {
	b.Run("off", func(b *testing.B) { benchExecWait(b, serveBench(b, "docker", "AETHERIUM_METRICS_LISTEN=off")) })
	b.Run("on", func(b *testing.B) {
		maddr := freePort(b)
		c := serveBench(b, "docker", "AETHERIUM_METRICS_LISTEN="+maddr)
		ctx, cancel := context.WithCancel(context.Background())
		scraped := make(chan int)
		go func() {
			n := 0
			defer func() { scraped <- n }()
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				resp, err := http.Get("http://" + maddr + "/metrics")
				if err != nil {
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					n++
				}
			}
		}()
		benchExecWait(b, c)
		cancel()
		b.ReportMetric(float64(<-scraped), "scrapes")
	})
}

// BenchmarkAPIExecWaitObservability is BenchmarkAPIExecWait on Docker with everything that observes off, then on:
// metrics (scraped every second), tracing (every request exported to an OTLP receiver in the test) and log
// shipping (every log line and the exec's output pushed as Loki protobuf to a receiver that takes it), for the
// overhead the issue bounds at 5 %.
func BenchmarkAPIExecWaitObservability(b *testing.B) {
	b.Run("off", func(b *testing.B) { benchExecWait(b, serveBench(b, "docker", "AETHERIUM_METRICS_LISTEN=off")) })
	b.Run("on", func(b *testing.B) {
		rcv := tracingtest.New(b)
		var pushes atomic.Int64
		loki := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			pushes.Add(1)
			w.WriteHeader(http.StatusNoContent)
		}))
		b.Cleanup(loki.Close)
		maddr := freePort(b)
		c := serveBench(b, "docker", "AETHERIUM_METRICS_LISTEN="+maddr, "AETHERIUM_OTLP_ENDPOINT="+rcv.URL,
			"AETHERIUM_LOKI_URL="+loki.URL)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			t := time.NewTicker(time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if resp, err := http.Get("http://" + maddr + "/metrics"); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			}
		}()
		benchExecWait(b, c)
		b.ReportMetric(float64(len(rcv.Spans())), "spans")
		b.ReportMetric(float64(pushes.Load()), "log-pushes")
	})
}

// serveBench starts `aetherium serve` on the given backend for a benchmark, with extra environment.
func serveBench(b *testing.B, backend string, extra ...string) *client.Client {
	var env []string
	switch backend {
	case "docker":
		requireDocker(b)
		removeWorkerContainers(b, "e2e-bench")
	case "qemu":
		env = requireGuests(b)
	}
	dataDir := shortDir(b)
	addr := freePort(b)
	p := start(b, "serve", append(append(serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-bench", "AETHERIUM_LOG_LEVEL=warn"), env...), extra...), "serve")
	waitHTTP(b, addr, p)
	c := newClient(b, addr, readLine(b, filepath.Join(dataDir, "admin-api-key")))
	waitReady(b, c)
	return c
}

func reportLatency(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	b.ReportMetric(0, "ns/op")
}

func benchExecWait(b *testing.B, c *client.Client) {
	ctx := context.Background()
	vm, err := c.CreateVMAndWait(ctx, client.CreateVMRequest{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		start := time.Now()
		acc, done, err := c.ExecuteWait(ctx, vm.ID, client.ExecuteRequest{Command: "true"}, 30*time.Second)
		if err != nil || !done || acc.Execution == nil || acc.Execution.ExitCode == nil || *acc.Execution.ExitCode != 0 {
			b.Fatalf("exec true: done=%v err=%v acc=%+v", done, err, acc)
		}
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	reportLatency(b, lat)
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		b.Fatal(err)
	}
}
