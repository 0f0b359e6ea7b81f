package api

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/auth"
	"github.com/aetherium/aetherium/internal/vmm"
	"github.com/aetherium/aetherium/pkg/client"
)

func TestShellTicket(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.ClusterToken = clusterToken })
	w := newWorkerRig(t, clusterToken, noVMs{err: vmm.ErrNotFound})
	id := e.runningVM("box", "w-ticket", w.srv.URL, time.Now())
	other := e.runningVM("other", "w-ticket", w.srv.URL, time.Now())
	upgrade := map[string]string{"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
		"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
	mint := func(vm, key string) (ShellTicket, response) {
		r := e.call("POST", "/api/v1/vms/"+vm+"/shell/ticket", key, "")
		var tk ShellTicket
		if r.status == http.StatusCreated {
			if err := json.Unmarshal(r.body, &tk); err != nil {
				t.Fatal(err)
			}
		}
		return tk, r
	}
	shell := func(vm, ticket string) response {
		return e.do(req{method: "GET", path: "/api/v1/vms/" + vm + "/shell?ticket=" + ticket, header: upgrade})
	}

	tk, r := mint(id, e.keyA)
	if r.status != http.StatusCreated || len(tk.Ticket) < 40 || time.Until(tk.ExpiresAt) > ShellTicketTTL+time.Second ||
		time.Until(tk.ExpiresAt) < ShellTicketTTL-5*time.Second {
		t.Fatalf("mint: %d %s", r.status, r.body)
	}
	if r.header.Get("Cache-Control") != "no-store" {
		t.Errorf("Cache-Control %q", r.header.Get("Cache-Control"))
	}
	before := w.count()
	// Accepted once: the handshake reaches the worker (which knows no VM here, so its 404 comes back).
	if r := shell(id, tk.Ticket); r.status != http.StatusNotFound || !strings.Contains(r.errMessage(), "not on this worker") {
		t.Errorf("first use: %d %s, want the worker's 404", r.status, r.body)
	}
	if n := w.count() - before; n != 1 {
		t.Fatalf("%d requests reached the worker, want 1", n)
	}
	got := w.last(t)
	if strings.Contains(got.query, "ticket") || got.header.Get("Authorization") != "Bearer "+clusterToken {
		t.Errorf("the worker saw query %q, Authorization %q", got.query, got.header.Get("Authorization"))
	}
	// Used up.
	if r := shell(id, tk.Ticket); r.status != http.StatusUnauthorized || r.errCode() != client.CodeUnauthorized {
		t.Errorf("second use: %d %s", r.status, r.body)
	}
	// Bound to its VM (and used up by the attempt).
	tk2, _ := mint(id, e.keyA)
	if r := shell(other, tk2.Ticket); r.status != http.StatusUnauthorized {
		t.Errorf("other VM: %d %s", r.status, r.body)
	}
	if r := shell(id, tk2.Ticket); r.status != http.StatusUnauthorized {
		t.Errorf("after a use on another VM: %d %s", r.status, r.body)
	}
	for _, bad := range []string{"", "nope"} {
		if r := shell(id, bad); r.status != http.StatusUnauthorized {
			t.Errorf("ticket %q: %d %s", bad, r.status, r.body)
		}
	}
	if n := w.count() - before; n != 1 {
		t.Errorf("%d requests reached the worker, want 1", n)
	}
	// Only the VM's owner gets one, and only with a key.
	if _, r := mint(id, e.keyB); r.status != http.StatusNotFound {
		t.Errorf("other owner: %d %s", r.status, r.body)
	}
	if _, r := mint(id, ""); r.status != http.StatusUnauthorized {
		t.Errorf("no key: %d %s", r.status, r.body)
	}
}

func TestShellTicketsExpire(t *testing.T) {
	var ts shellTickets
	id := ts.mint(shellTicket{principal: auth.Principal{OwnerID: "o"}, vmID: "v", expires: time.Now().Add(-time.Millisecond)})
	if _, ok := ts.take(id); ok {
		t.Error("an expired ticket was accepted")
	}
	id = ts.mint(shellTicket{principal: auth.Principal{OwnerID: "o"}, vmID: "v", expires: time.Now().Add(time.Minute)})
	if tk, ok := ts.take(id); !ok || tk.principal.OwnerID != "o" {
		t.Errorf("take = %v, %v", tk, ok)
	}
	if len(ts.m) != 0 {
		t.Errorf("%d tickets kept", len(ts.m))
	}
}
