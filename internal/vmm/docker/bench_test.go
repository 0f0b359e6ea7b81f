package docker

import (
	"io"
	"log/slog"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
)

// BenchmarkCreateToReady measures CreateVM + StartVM until the agent answers (the base image already built).
// Deleting each VM is left out of the timing.
func BenchmarkCreateToReady(b *testing.B) {
	e := newEnv(b, quiet)
	ctx := ctxFor(b, 30*time.Minute)
	if _, err := e.b.baseImage(ctx); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		id := uuid.NewString()
		start := time.Now()
		if _, err := e.b.CreateVM(ctx, vmm.VMConfig{ID: id, Name: "bench", VCPUs: 1, MemoryMB: 128}); err != nil {
			b.Fatal(err)
		}
		if err := e.b.StartVM(ctx, id); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		b.StopTimer()
		if err := e.b.DeleteVM(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportPercentiles(b, lat, "ms", time.Millisecond, 50)
}

// BenchmarkExecTrue measures one ExecuteCommand round trip of `true` through the agent of a running VM.
func BenchmarkExecTrue(b *testing.B) {
	e := newEnv(b, quiet)
	ctx := ctxFor(b, 30*time.Minute)
	id := uuid.NewString()
	e.createStart(b, ctx, vmm.VMConfig{ID: id, Name: "bench", VCPUs: 1, MemoryMB: 128})
	req := agent.ExecRequest{Argv: []string{"true"}}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		start := time.Now()
		res, err := e.b.ExecuteCommand(ctx, id, req)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if res.ExitCode != 0 {
			b.Fatalf("true exited %d", res.ExitCode)
		}
	}
	reportPercentiles(b, lat, "us", time.Microsecond, 50, 99)
}

func reportPercentiles(b *testing.B, lat []time.Duration, unit string, scale time.Duration, ps ...int) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	for _, p := range ps {
		i := (len(lat)*p + 99) / 100 // nearest rank
		if i > 0 {
			i--
		}
		b.ReportMetric(float64(lat[i])/float64(scale), "p"+strconv.Itoa(p)+"-"+unit)
	}
}

// quiet drops the backend's logs, which would drown the benchmark's output.
func quiet(c *Config) { c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil)) }
