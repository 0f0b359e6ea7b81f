//go:build linux

package network

import (
	"net/netip"
	"testing"
)

func TestForwarderAdmitsBoundedQueriesPerGuest(t *testing.T) {
	f := &forwarder{}
	a, b := netip.MustParseAddr("172.16.0.2"), netip.MustParseAddr("172.16.0.3")
	var releases []func()
	for i := 0; i < maxInflightPerGuest; i++ {
		rel, ok := f.admit(a)
		if !ok {
			t.Fatalf("query %d of a guest refused under the limit", i)
		}
		releases = append(releases, rel)
	}
	if _, ok := f.admit(a); ok {
		t.Fatal("a guest got more queries in flight than the limit")
	}
	if rel, ok := f.admit(b); !ok {
		t.Fatal("another guest was refused because of the first one's queries")
	} else {
		rel()
	}
	releases[0]()
	if rel, ok := f.admit(a); !ok {
		t.Fatal("a released slot was not given back")
	} else {
		rel()
	}
	for _, rel := range releases[1:] {
		rel()
	}
	if len(f.inflight) != 0 {
		t.Fatalf("counts left after every query ended: %v", f.inflight)
	}
}
