package docker

import (
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest/eventcheck"
)

// eventWithin bounds how soon the engine's die reaches a subscriber.
const eventWithin = 5 * time.Second

// TestKilledContainerIsAnEvent: a container killed behind the backend's back (through the engine) is an event with
// the VM's id and exit code; the backend's own stop and delete are none, nor is the death of another worker's
// container; Close ends the subscription.
func TestKilledContainerIsAnEvent(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.InstallationID = "evtest" + uuid.NewString()[:8] })
	other := newEnv(t, func(c *Config) { c.InstallationID = e.cfg.InstallationID })
	ctx := ctxFor(t, 3*time.Minute)
	evs := e.b.Events(ctx)
	id := uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "victim", MemoryMB: 64})
	stranger := uuid.NewString()
	if _, err := other.b.CreateVM(ctx, vmm.VMConfig{ID: stranger, MemoryMB: 64}); err != nil {
		t.Fatal(err)
	}
	if err := other.b.StartVM(ctx, stranger); err != nil {
		t.Fatal(err)
	}
	eventcheck.None(t, evs, "running containers", time.Second)

	if err := engine.ContainerKill(ctx, containerName(stranger), "KILL"); err != nil {
		t.Fatal(err)
	}
	if err := engine.ContainerKill(ctx, containerName(id), "KILL"); err != nil {
		t.Fatal(err)
	}
	ev := eventcheck.Expect(t, evs, id, eventWithin) // not the stranger's
	if ev.Detail != "container died, exit code 137 (signal 9)" {
		t.Fatalf("detail %q", ev.Detail)
	}
	if inst, err := e.b.GetVMStatus(ctx, id); err != nil || inst.State != vmm.StateStopped {
		t.Fatalf("status after the kill: %+v %v", inst, err)
	}
	eventcheck.None(t, evs, "after the kill", time.Second)

	if err := e.b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.b.StopVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	eventcheck.None(t, evs, "StopVM", time.Second)
	if err := e.b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := e.b.DeleteVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	eventcheck.None(t, evs, "DeleteVM", time.Second)
	if err := e.b.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-evs:
		if ok {
			t.Fatal("an event after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the subscription")
	}
	if _, ok := <-e.b.Events(ctx); ok {
		t.Fatal("an event from a closed backend")
	}
}

// TestOOMKilledContainerIsAnEvent: a VM whose agent the kernel's OOM killer ends (its memory limit reached) is an
// event that says so.
func TestOOMKilledContainerIsAnEvent(t *testing.T) {
	e := newEnv(t, nil)
	ctx := ctxFor(t, 2*time.Minute)
	evs := e.b.Events(ctx)
	id := uuid.NewString()
	e.createStart(t, ctx, vmm.VMConfig{ID: id, Name: "hog", MemoryMB: 64})
	// The agent (PID 1) is made the OOM killer's first choice; then a hog overruns the 64 MB.
	_, err := e.b.ExecuteCommand(ctx, id, agent.ExecRequest{Argv: []string{"sh", "-c",
		"echo 1000 > /proc/1/oom_score_adj && dd if=/dev/zero of=/dev/null bs=256M count=1"}})
	t.Logf("the hog's command: %v", err)
	ev := eventcheck.Expect(t, evs, id, eventWithin)
	if !strings.Contains(ev.Detail, "OOM killed") {
		t.Fatalf("detail %q, want the OOM kill", ev.Detail)
	}
}
