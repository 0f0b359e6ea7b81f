// Package eventcheck holds the assertions the backends' tests make about vmm.VMEvents. It imports nothing but vmm,
// so that every backend's own (in-package) tests can use it.
package eventcheck

import (
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/vmm"
)

// Expect waits up to within for the next event on c, which must say that VM id stopped, and returns it.
func Expect(t testing.TB, c <-chan vmm.Event, id string, within time.Duration) vmm.Event {
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
	case <-time.After(within):
		t.Fatalf("no event for vm %s within %s", id, within)
	}
	return vmm.Event{}
}

// None checks that c delivers nothing, and stays open, for quiet: what (a deliberate stop, say) made no event.
func None(t testing.TB, c <-chan vmm.Event, what string, quiet time.Duration) {
	t.Helper()
	select {
	case ev, ok := <-c:
		if ok {
			t.Fatalf("%s: event %+v", what, ev)
		}
		t.Fatalf("%s: events channel closed", what)
	case <-time.After(quiet):
	}
}
