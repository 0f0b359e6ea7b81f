//go:build linux

package server

import (
	"context"
	"github.com/aetherium/aetherium/internal/network"
	"testing"

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

// TestBackendNetworkSeesEveryWrapper: the credential proxy finds the network of a backend that reports VM events
// too (qemu and firecracker are wrapped in withNetworkEvents); missing it turned the proxy off on those backends.
func TestBackendNetworkSeesEveryWrapper(t *testing.T) {
	m := &network.Manager{}
	plain := &withNetwork{net: m}
	if backendNetwork(plain) != m || backendNetwork(withNetworkEvents{withNetwork: plain}) != m {
		t.Fatal("backendNetwork misses a wrapped backend's network")
	}
	if backendNetwork(nil) != nil {
		t.Fatal("a backend without a network has one")
	}
}
