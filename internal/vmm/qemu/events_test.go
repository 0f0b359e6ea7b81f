//go:build linux

package qemu

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest/eventcheck"
)

// eventWithin is how soon a VM's exit must be reported: the worker promises 10 s, the watch itself takes far less.
const eventWithin = 2 * time.Second

// bootSmall creates and starts a 256 MB guest.
func bootSmall(t *testing.T, b *Backend, id string) *vmState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: id, Name: id, MemoryMB: 256}); err != nil {
		t.Fatal(err)
	}
	return startAgain(t, b, id)
}

func startAgain(t *testing.T, b *Backend, id string) *vmState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := b.StartVM(ctx, id); err != nil {
		t.Fatal(err)
	}
	st, err := b.loadState(id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestKilledGuestIsAnEvent: a guest whose QEMU is killed behind the backend's back is reported within 2 s with
// its id and the wait status, and GetVMStatus says the same; the backend's own stop and delete are no event.
func TestKilledGuestIsAnEvent(t *testing.T) {
	b, _ := newBackend(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := b.Events(ctx)
	st := bootSmall(t, b, "victim")
	eventcheck.None(t, evs, "a running guest", time.Second)

	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := eventcheck.Expect(t, evs, "victim", eventWithin)
	want := "qemu process " + strconv.Itoa(st.PID) + " exited (signal: killed)"
	if !strings.HasPrefix(ev.Detail, want) {
		t.Fatalf("detail %q, want it to begin %q", ev.Detail, want)
	}
	inst, err := b.GetVMStatus(ctx, "victim")
	if err != nil || inst.State != vmm.StateStopped || inst.Detail != ev.Detail {
		t.Fatalf("status after the kill: %+v %v; want stopped with the event's detail", inst, err)
	}

	// Started again, the new QEMU is watched; a stop and a delete are the backend's own doing.
	startAgain(t, b, "victim")
	if err := b.StopVM(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	eventcheck.None(t, evs, "StopVM", time.Second)
	startAgain(t, b, "victim")
	if err := b.DeleteVM(ctx, "victim"); err != nil {
		t.Fatal(err)
	}
	eventcheck.None(t, evs, "DeleteVM", time.Second)
}

// TestAdoptedGuestKilledIsAnEvent: a backend that adopted a running guest from a closed one (the QEMU is not
// its child) reports it within 2 s when it is killed; the closed backend's subscription ended with it.
func TestAdoptedGuestKilledIsAnEvent(t *testing.T) {
	b1, cfg := newBackend(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs1 := b1.Events(ctx)
	st := bootSmall(t, b1, "adopted")
	if err := b1.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case _, ok := <-evs1:
		if ok {
			t.Fatal("an event from the closed backend")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the subscription")
	}
	b2, _ := newBackendAt(t, cfg.DataDir, testInstallation)
	evs2 := b2.Events(ctx)
	if inst, err := b2.GetVMStatus(ctx, "adopted"); err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("after adoption: %+v %v", inst, err)
	}
	eventcheck.None(t, evs2, "an adopted guest that runs", time.Second)
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := eventcheck.Expect(t, evs2, "adopted", eventWithin)
	if want := "qemu process " + strconv.Itoa(st.PID) + " exited"; !strings.HasPrefix(ev.Detail, want) {
		t.Fatalf("detail %q, want it to begin %q", ev.Detail, want)
	}
	if inst, err := b2.GetVMStatus(ctx, "adopted"); err != nil || inst.State != vmm.StateStopped || inst.Detail != ev.Detail {
		t.Fatalf("status after the kill: %+v %v; want stopped with the event's detail", inst, err)
	}
	if err := b2.DeleteVM(ctx, "adopted"); err != nil {
		t.Fatal(err)
	}
}

// TestGuestPanicIsAnEventWithTheConsole: a guest whose kernel panics (its init, the agent, crashed) makes QEMU exit
// on its own (panic=-1, -no-reboot): the event says so with the panic from the console.
func TestGuestPanicIsAnEventWithTheConsole(t *testing.T) {
	b, _ := newBackend(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	evs := b.Events(ctx)
	bootSmall(t, b, "panicky")
	// A SIGSEGV sent to a Go program crashes it; the kernel panics when init exits.
	ectx, ecancel := context.WithTimeout(ctx, 30*time.Second)
	_, err := b.ExecuteCommand(ectx, "panicky", agent.ExecRequest{Argv: []string{"sh", "-c", "kill -SEGV 1"}})
	ecancel()
	t.Logf("the crashing command: %v", err)
	var ev vmm.Event
	select {
	case ev = <-evs:
	case <-time.After(30 * time.Second):
		t.Fatal("no event after the guest's init crashed")
	}
	if ev.VMID != "panicky" || !strings.Contains(ev.Detail, "exit status 0") || !strings.Contains(ev.Detail, "guest kernel panic: \"Kernel panic - not syncing: Attempted to kill init!") {
		t.Fatalf("event %+v, want QEMU's clean exit and the guest's panic", ev)
	}
	t.Logf("event: %s", ev.Detail)
}
