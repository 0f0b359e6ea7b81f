//go:build linux

package firecracker

import (
	"context"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/internal/vmm/vmmtest/eventcheck"
)

// eventWithin is how soon a VM's exit must be reported: the worker promises 10 s, the watch itself takes far less.
const eventWithin = 2 * time.Second

// TestKilledVMIsAnEvent: a VM whose firecracker is killed behind the backend's back is reported within 2 s with
// its id and wait status, and GetVMStatus says the same; the backend's own stop and delete are no event, and
// Close ends the subscription.
func TestKilledVMIsAnEvent(t *testing.T) {
	e := newEnv(t, "")
	b := e.backend(t, nil)
	ctx := ctxT(t, time.Minute)
	evs := b.Events(ctx)
	if _, err := b.CreateVM(ctx, vmm.VMConfig{ID: "vm-ev"}); err != nil {
		t.Fatal(err)
	}
	start := func() *vmState {
		t.Helper()
		if err := b.StartVM(ctx, "vm-ev"); err != nil {
			t.Fatal(err)
		}
		st, err := b.loadState("vm-ev")
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	st := start()
	eventcheck.None(t, evs, "a running vm", 500*time.Millisecond)
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := eventcheck.Expect(t, evs, "vm-ev", eventWithin)
	if want := "firecracker process " + strconv.Itoa(st.PID) + " exited (signal: killed)"; !strings.HasPrefix(ev.Detail, want) {
		t.Fatalf("detail %q, want it to begin %q", ev.Detail, want)
	}
	if inst, err := b.GetVMStatus(ctx, "vm-ev"); err != nil || inst.State != vmm.StateStopped || inst.Detail != ev.Detail {
		t.Fatalf("status after the kill: %+v %v; want stopped with the event's detail", inst, err)
	}

	st = start()
	if err := b.StopVM(ctx, "vm-ev"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	eventcheck.None(t, evs, "StopVM", 500*time.Millisecond)
	st = start()
	if err := b.DeleteVM(ctx, "vm-ev"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	eventcheck.None(t, evs, "DeleteVM", 500*time.Millisecond)
	_ = b.Close()
	if _, ok := <-evs; ok {
		t.Fatal("an event after Close")
	}
}

// TestAdoptedVMKilledIsAnEvent: a firecracker adopted from a worker killed with SIGKILL (so not this process's
// child) is reported within 2 s when it is killed.
func TestAdoptedVMKilledIsAnEvent(t *testing.T) {
	e := newEnv(t, "")
	cfg := e.config()
	pid := startAndKillTestWorker(t, cfg)
	b := e.backend(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	evs := b.Events(ctx)
	if inst, err := b.GetVMStatus(ctx, "vm-restart"); err != nil || inst.State != vmm.StateRunning {
		t.Fatalf("after adoption: %+v %v", inst, err)
	}
	eventcheck.None(t, evs, "an adopted vm that runs", 500*time.Millisecond)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := eventcheck.Expect(t, evs, "vm-restart", eventWithin)
	if want := "firecracker process " + strconv.Itoa(pid) + " exited"; !strings.HasPrefix(ev.Detail, want) {
		t.Fatalf("detail %q, want it to begin %q", ev.Detail, want)
	}
	if inst, err := b.GetVMStatus(ctx, "vm-restart"); err != nil || inst.State != vmm.StateStopped || inst.Detail != ev.Detail {
		t.Fatalf("status after the kill: %+v %v; want stopped with the event's detail", inst, err)
	}
}
