package docker

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
)

var _ vmm.Pauser = (*Backend)(nil)

// counter reads the background counter's last value.
func counter(t *testing.T, ctx context.Context, b *Backend, id string) int {
	t.Helper()
	res := run(t, ctx, b, id, "cat", "/tmp/counter")
	n, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if err != nil {
		t.Fatalf("counter: %q %q: %v", res.Stdout, res.Stderr, err)
	}
	return n
}

// TestPauseResume: a paused container's processes stop (a counter does not advance), the VM still lists as
// running (a restarted worker adopts it as it is), pause and resume are idempotent, the processes go on after
// resume, and a paused VM can be deleted without leftovers.
func TestPauseResume(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 2*time.Minute)
	id := uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "pause", VCPUs: 1, MemoryMB: 256})
	c, err := e.b.Agent(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartProcess(ctx, agent.ExecRequest{Shell: "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for run(t, ctx, e.b, id, "test", "-s", "/tmp/counter").ExitCode != 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}

	before := counter(t, ctx, e.b, id)
	if err := e.b.PauseVM(ctx, id); err != nil {
		t.Fatalf("PauseVM: %v", err)
	}
	if err := e.b.PauseVM(ctx, id); err != nil {
		t.Fatalf("PauseVM of a paused vm: %v", err)
	}
	if p, err := e.b.Paused(ctx, id); err != nil || !p {
		t.Fatalf("Paused = %v, %v; want true", p, err)
	}
	if inst, err := e.b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("status of a paused vm = %+v, %v; want running", inst, err)
	}
	// The agent is frozen with the rest: a command does not run.
	qctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = e.b.ExecuteCommand(qctx, id, agent.ExecRequest{Argv: []string{"true"}})
	cancel()
	if err == nil {
		t.Fatal("a command ran in a paused vm")
	}
	time.Sleep(1500 * time.Millisecond)
	if err := e.b.ResumeVM(ctx, id); err != nil {
		t.Fatalf("ResumeVM: %v", err)
	}
	if err := e.b.ResumeVM(ctx, id); err != nil {
		t.Fatalf("ResumeVM of a running vm: %v", err)
	}
	after := counter(t, ctx, e.b, id)
	// 2 s passed (20 ticks a second running); paused, the counter moved by at most the ticks around the calls.
	if after-before > 12 {
		t.Fatalf("counter went from %d to %d across a 2 s pause: the container was not frozen", before, after)
	}
	time.Sleep(500 * time.Millisecond)
	if later := counter(t, ctx, e.b, id); later <= after {
		t.Fatalf("counter stuck at %d after resume (was %d): the background process did not survive", later, after)
	}

	if err := e.b.PauseVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.b.DeleteVM(ctx, id); err != nil {
		t.Fatalf("DeleteVM of a paused vm: %v", err)
	}
	if _, err := e.b.GetVMStatus(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("status after delete: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dataDir, "vms", id)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("vm directory left: %v", err)
	}
	if err := e.b.PauseVM(ctx, id); !errors.Is(err, vmm.ErrNotFound) {
		t.Fatalf("PauseVM of a deleted vm: %v; want ErrNotFound", err)
	}
}
