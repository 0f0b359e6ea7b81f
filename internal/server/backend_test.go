//go:build linux

package server

import (
	"context"
	"testing"

	"github.com/aetherium/aetherium/internal/network"
	"github.com/aetherium/aetherium/internal/vmm"
)

// plainBackend is a backend without events; evBackend one with them (the methods the test calls are the only
// ones implemented).
type plainBackend struct{ vmm.Orchestrator }

type evBackend struct {
	plainBackend
	c chan vmm.Event
}

func (b evBackend) Events(context.Context) <-chan vmm.Event { return b.c }

// TestNetworkWrapperKeepsEvents: the wrapper that closes the network manager with a qemu or firecracker backend
// passes the backend's VM events through to the worker, and claims none for a backend without them.
func TestNetworkWrapperKeepsEvents(t *testing.T) {
	inner := evBackend{c: make(chan vmm.Event, 1)}
	w := wrapNetwork(inner, nil)
	src, ok := w.(vmm.VMEvents)
	if !ok {
		t.Fatal("the wrapped backend hides vmm.VMEvents")
	}
	inner.c <- vmm.Event{VMID: "vm1", State: vmm.StateStopped}
	if ev := <-src.Events(context.Background()); ev.VMID != "vm1" {
		t.Fatalf("event %+v", ev)
	}
	if _, ok := wrapNetwork(plainBackend{}, nil).(vmm.VMEvents); ok {
		t.Fatal("a backend without events claims them once wrapped")
	}
}

// TestBackendNetworkSeesThroughEvents: the credential proxy finds the network manager of a backend with VM
// events (qemu, firecracker) as well as of one without; it found none for the first, so no QEMU worker had a proxy.
func TestBackendNetworkSeesThroughEvents(t *testing.T) {
	m := &network.Manager{}
	if got := backendNetwork(wrapNetwork(evBackend{c: make(chan vmm.Event)}, m)); got != m {
		t.Errorf("backend with events: network %p, want %p", got, m)
	}
	if got := backendNetwork(wrapNetwork(plainBackend{}, m)); got != m {
		t.Errorf("backend without events: network %p, want %p", got, m)
	}
	if got := backendNetwork(plainBackend{}); got != nil {
		t.Errorf("unwrapped backend: network %p, want nil", got)
	}
}
