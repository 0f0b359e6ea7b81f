//go:build linux

package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
)

var _ vmm.Pauser = (*Backend)(nil)

// cpuTicks is the user and system time of process pid so far, in clock ticks (USER_HZ, 100 a second on Linux).
func cpuTicks(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name (field 2) is in parentheses and may hold spaces: count fields after its ')'.
	rest := string(data[strings.LastIndexByte(string(data), ')')+2:])
	f := strings.Fields(rest) // f[0] is field 3 (state); utime and stime are fields 14 and 15
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, data)
	}
	return utime + stime
}

// TestPauseUsesNoCPUAndResumes: a paused guest's QEMU uses under 1% of a core over 10 s (issue 15), the VM still
// lists as running (so a restarted worker adopts it as it is), pausing and resuming are idempotent, and after
// resume the guest's background processes go on where they stopped. It also measures how long a resume takes
// until the guest answers a command again (the median of several).
func TestPauseUsesNoCPUAndResumes(t *testing.T) {
	b, _ := newBackend(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const id = "0a0a0a0a-1111-2222-3333-444444444444"
	boot(t, b, id)
	c, err := b.Agent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartProcess(ctx, agent.ExecRequest{Shell: "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done"}); err != nil {
		t.Fatal(err)
	}
	counter := func() int {
		t.Helper()
		res := run(t, b, id, "cat", "/tmp/counter")
		n, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
		if err != nil {
			t.Fatalf("counter %q: %v", res.Stdout, err)
		}
		return n
	}
	deadline := time.Now().Add(30 * time.Second)
	for run(t, b, id, "test", "-s", "/tmp/counter").ExitCode != 0 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	st, err := b.loadState(id)
	if err != nil {
		t.Fatal(err)
	}

	before := counter()
	if err := b.PauseVM(ctx, id); err != nil {
		t.Fatalf("PauseVM: %v", err)
	}
	if err := b.PauseVM(ctx, id); err != nil {
		t.Fatalf("PauseVM of a paused vm: %v", err)
	}
	if p, err := b.Paused(ctx, id); err != nil || !p {
		t.Fatalf("Paused = %v, %v; want true", p, err)
	}
	if inst, err := b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("a paused vm's status: %+v, %v; want running", inst, err)
	}
	time.Sleep(time.Second) // let the pause settle (the QMP connection, the vCPU threads parking)
	t0, w0 := cpuTicks(t, st.PID), time.Now()
	time.Sleep(10 * time.Second)
	t1, w1 := cpuTicks(t, st.PID), time.Now()
	share := float64(t1-t0) / 100 / w1.Sub(w0).Seconds()
	t.Logf("paused QEMU used %.2f%% of a core over %s (%d ticks)", share*100, w1.Sub(w0).Round(time.Millisecond), t1-t0)
	if share >= 0.01 {
		t.Fatalf("paused QEMU used %.2f%% of a core; want under 1%%", share*100)
	}

	if err := b.ResumeVM(ctx, id); err != nil {
		t.Fatalf("ResumeVM: %v", err)
	}
	if err := b.ResumeVM(ctx, id); err != nil {
		t.Fatalf("ResumeVM of a running vm: %v", err)
	}
	if p, err := b.Paused(ctx, id); err != nil || p {
		t.Fatalf("Paused after resume = %v, %v; want false", p, err)
	}
	after := counter()
	// 11 s passed paused at 10 ticks a second: the counter moved only around the calls.
	if after-before > 30 {
		t.Fatalf("counter went from %d to %d across an 11 s pause: the guest was not paused", before, after)
	}
	time.Sleep(time.Second)
	if later := counter(); later <= after {
		t.Fatalf("counter stuck at %d after resume: the background process did not survive", later)
	}

	// Resume latency: from the resume call until the guest has answered a command again.
	var resume, ready []time.Duration
	for range 5 {
		if err := b.PauseVM(ctx, id); err != nil {
			t.Fatal(err)
		}
		time.Sleep(200 * time.Millisecond)
		start := time.Now()
		if err := b.ResumeVM(ctx, id); err != nil {
			t.Fatal(err)
		}
		resume = append(resume, time.Since(start))
		run(t, b, id, "true")
		ready = append(ready, time.Since(start))
	}
	median := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	t.Logf("resume: QMP cont took %s (median of %d), until the guest answers a command %s (median; all %v)",
		median(resume), len(resume), median(ready), ready)

	if err := b.PauseVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteVM(ctx, id); err != nil {
		t.Fatalf("DeleteVM of a paused vm: %v", err)
	}
	if err := b.ResumeVM(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("ResumeVM of a deleted vm: %v; want ErrNotFound", err)
	}
}
