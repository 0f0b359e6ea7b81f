package e2e

import (
	"context"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/aetherium/aetherium/pkg/client"
)

// BenchmarkAPIExecWait measures the round trip of a synchronous exec (`POST .../execute?wait=30s` of `true`)
// through the whole product: HTTP, auth, store, embedded queue, worker, Docker backend, agent and back.
func BenchmarkAPIExecWait(b *testing.B) {
	requireDocker(b)
	dataDir := b.TempDir()
	addr := freePort(b)
	removeWorkerContainers(b, "e2e-bench")
	p := start(b, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID=e2e-bench", "AETHERIUM_LOG_LEVEL=warn"), "serve")
	waitHTTP(b, addr, p)
	c := newClient(b, addr, readLine(b, filepath.Join(dataDir, "admin-api-key")))
	waitReady(b, c)
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
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
	if _, err := c.DeleteVMAndWait(ctx, vm.ID); err != nil {
		b.Fatal(err)
	}
}
