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
)

// eventWithin is how soon a VM's exit must be reported: the worker promises 10 s, the watch itself takes far less.
const eventWithin = 2 * time.Second

func expectEvent(t *testing.T, c <-chan vmm.Event, id string) vmm.Event {
	t.Helper()
	start := time.Now()
	select {
	case ev, ok := <-c:
		if !ok {
			t.Fatal("events channel closed")
		}
		if ev.VMID != id || ev.State != vmm.StateStopped {
			t.Fatalf("event %+v, want vm %s stopped", ev, id)
		}
		t.Logf("event after %s: %s", time.Since(start).Round(time.Millisecond), ev.Detail)
		return ev
	case <-time.After(eventWithin):
		t.Fatalf("no event for vm %s within %s", id, eventWithin)
	}
	return vmm.Event{}
}

func expectNoEvent(t *testing.T, c <-chan vmm.Event, what string) {
	t.Helper()
	select {
	case ev, ok := <-c:
		t.Fatalf("%s: event %+v (open %v)", what, ev, ok)
	case <-time.After(500 * time.Millisecond):
	}
}

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
	expectNoEvent(t, evs, "a running vm")
	if err := syscall.Kill(st.PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := expectEvent(t, evs, "vm-ev")
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
	expectNoEvent(t, evs, "StopVM")
	st = start()
	if err := b.DeleteVM(ctx, "vm-ev"); err != nil {
		t.Fatal(err)
	}
	waitGone(t, st.PID)
	expectNoEvent(t, evs, "DeleteVM")
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
	expectNoEvent(t, evs, "an adopted vm that runs")
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ev := expectEvent(t, evs, "vm-restart")
	if want := "firecracker process " + strconv.Itoa(pid) + " exited"; !strings.HasPrefix(ev.Detail, want) {
		t.Fatalf("detail %q, want it to begin %q", ev.Detail, want)
	}
	if inst, err := b.GetVMStatus(ctx, "vm-restart"); err != nil || inst.State != vmm.StateStopped || inst.Detail != ev.Detail {
		t.Fatalf("status after the kill: %+v %v; want stopped with the event's detail", inst, err)
	}
}
