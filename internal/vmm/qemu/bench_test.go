//go:build linux

package qemu

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	agentclient "github.com/aetherium/aetherium/internal/agent/client"
	"github.com/aetherium/aetherium/internal/agent/transport"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmproc"
)

// reportPercentiles reports p50 and p90 of the samples in milliseconds (medians: these machines are noisy).
func reportPercentiles(b *testing.B, samples []time.Duration) {
	if len(samples) == 0 {
		return
	}
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	b.ReportMetric(ms(samples[len(samples)/2]), "p50-ms")
	b.ReportMetric(ms(samples[len(samples)*9/10]), "p90-ms")
	b.ReportMetric(0, "ns/op")
}

// BenchmarkRawBoot is the VMM alone: QEMU started by hand with the backend's own command line, until the agent
// answers over virtio-serial. No state files, no disk creation, no locks: the floor CreateToReady is compared with.
func BenchmarkRawBoot(b *testing.B) {
	be, _ := newBackend(b, nil)
	ctx := context.Background()
	st := &vmState{ID: "raw", Name: "raw", VCPUs: 1, MemoryMB: 512}
	dir := be.vmDir(st.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		b.Fatal(err)
	}
	st.AgentSock, st.QMPSock = filepath.Join(dir, agentSock), filepath.Join(dir, qmpSock)
	if err := be.makeDisk(ctx, st, templatePath); err != nil {
		b.Fatal(err)
	}
	var samples []time.Duration
	for b.Loop() {
		_ = vmproc.RemoveFiles(st.AgentSock, st.QMPSock)
		start := time.Now()
		p, err := vmproc.Start(be.command(st), vmproc.StartOptions{DieWithParent: true})
		if err != nil {
			b.Fatal(err)
		}
		dial, session := transport.Multiplexed(func(ctx context.Context) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", st.AgentSock)
		})
		c := agentclient.New(dial)
		rctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err = c.WaitReady(rctx)
		cancel()
		samples = append(samples, time.Since(start))
		_ = c.Close()
		_ = session.Close()
		_ = vmproc.KillGroup(p.PID)
		<-p.Done()
		if err != nil {
			b.Fatalf("raw boot: %v\n%s", err, vmproc.ConsoleTail(filepath.Join(dir, consoleFile), 2048))
		}
	}
	_ = os.RemoveAll(dir)
	reportPercentiles(b, samples)
}

// BenchmarkCreateToReady is what a task pays: CreateVM (copy-on-write disk, state) and StartVM (boot, agent ready).
func BenchmarkCreateToReady(b *testing.B) {
	be, _ := newBackend(b, nil)
	ctx := context.Background()
	var samples []time.Duration
	i := 0
	for b.Loop() {
		id := fmt.Sprintf("bench-%d", i)
		i++
		start := time.Now()
		if _, err := be.CreateVM(ctx, vmm.VMConfig{ID: id}); err != nil {
			b.Fatal(err)
		}
		if err := be.StartVM(ctx, id); err != nil {
			b.Fatal(err)
		}
		samples = append(samples, time.Since(start))
		b.StopTimer()
		if err := be.DeleteVM(ctx, id); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
	reportPercentiles(b, samples)
}

// BenchmarkExecTrue is one command's round trip through the backend to a running guest and back.
func BenchmarkExecTrue(b *testing.B) {
	be, _ := newBackend(b, nil)
	ctx := context.Background()
	boot(b, be, "exec")
	var samples []time.Duration
	for b.Loop() {
		start := time.Now()
		res, err := be.ExecuteCommand(ctx, "exec", agent.ExecRequest{Argv: []string{"true"}})
		if err != nil || res.ExitCode != 0 {
			b.Fatalf("exec true: %+v %v", res, err)
		}
		samples = append(samples, time.Since(start))
	}
	reportPercentiles(b, samples)
}
