//go:build linux

package network

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/credproxy"
)

const proxyPort = 8091

// attachedVMs is a credproxy.VMSource over the test's attachments.
type attachedVMs map[string]Attachment

func (a attachedVMs) ProxyVM(_ context.Context, id string) (credproxy.VM, error) {
	att, ok := a[id]
	if !ok {
		return credproxy.VM{}, credproxy.ErrVMGone
	}
	return credproxy.VM{ID: id, OwnerID: "alice", IP: att.IP}, nil
}

type oneSecret string

func (s oneSecret) Secret(context.Context, string, string) (string, error) { return string(s), nil }

// proxyGet is an HTTP/1.0 request with a bearer token from the guest to the proxy, printing the answer. The
// sleep keeps nc from half-closing the connection as soon as the request is sent: Go's server takes a client's
// EOF for its going away and cancels the request.
func proxyGet(gw, token string) string {
	return fmt.Sprintf("(printf 'GET /anthropic/v1/models HTTP/1.0\\r\\nAuthorization: Bearer %s\\r\\n\\r\\n'; sleep 3) | nc -w 10 %s %d",
		token, gw, proxyPort)
}

// TestGuestCredProxy boots two guests and runs the credential proxy on the gateway's guest-only port: a guest
// reaches it with its own token and gets the upstream's answer, the other guest cannot use that token (403) but can
// use its own, and nothing but the bridge reaches the port: neither a host process (loopback) nor the uplink side,
// which reaches an ordinary host service on the same address.
func TestGuestCredProxy(t *testing.T) {
	requireGuests(t)
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), func(c *Config) { c.GuestOnlyPorts = []uint16{proxyPort} })
	attA := mustAttach(t, m, "proxy-a", Policy{})
	attB := mustAttach(t, m, "proxy-b", Policy{})
	a, b := bootGuest(t, topo.host, attA), bootGuest(t, topo.host, attB)
	gw := m.Gateway().String()

	// The upstream runs in the test's own namespace on loopback: the proxy's outgoing connections are made by
	// threads of this process, which are there, while its listener is in the host namespace.
	var upstreamKey string
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upstreamKey = r.Header.Get("X-Api-Key")
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"data":[{"id":"claude-test","type":"model"}],"proxied":"upstream-answer"}`)
	}))
	defer up.Close()
	p, err := credproxy.New(credproxy.Config{Key: make([]byte, credproxy.KeySize), AnthropicUpstream: up.URL,
		VMs: attachedVMs{attA.VMID: attA, attB.VMID: attB}, Secrets: oneSecret("sk-owner")})
	if err != nil {
		t.Fatal(err)
	}
	tokA, _ := p.Token(credproxy.Grant{VMID: attA.VMID})
	tokB, _ := p.Token(credproxy.Grant{VMID: attB.VMID})
	ln := listen(t, topo.host, "tcp4", net.JoinHostPort(gw, fmt.Sprint(proxyPort)))
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()

	out := a.must(t, "call the proxy with its own token", proxyGet(gw, tokA))
	if !strings.Contains(out, "200 OK") || !strings.Contains(out, "upstream-answer") {
		t.Fatalf("guest a through the proxy:\n%s", out)
	}
	if upstreamKey != "sk-owner" {
		t.Fatalf("upstream got x-api-key %q", upstreamKey)
	}
	out = b.must(t, "call the proxy with guest a's token", proxyGet(gw, tokA))
	if !strings.Contains(out, "403 Forbidden") || strings.Contains(out, "upstream-answer") {
		t.Fatalf("guest b with guest a's token:\n%s", out)
	}
	if out = b.must(t, "call the proxy with its own token", proxyGet(gw, tokB)); !strings.Contains(out, "upstream-answer") {
		t.Fatalf("guest b with its own token:\n%s", out)
	}
	b.mustFail(t, "reach the proxy port on the host's uplink address", tcp(uplinkHostAddr, proxyPort))

	// Not from the host itself: a process in the host namespace connecting to the gateway address.
	var derr error
	if err := topo.host.run().do(func() error {
		c, err := net.DialTimeout("tcp4", net.JoinHostPort(gw, fmt.Sprint(proxyPort)), 2*time.Second)
		if err == nil {
			c.Close()
		}
		derr = err
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if derr == nil {
		t.Fatal("a host process connected to the guest-only port")
	}
	// Not from the uplink side, which does reach an ordinary service on the gateway address.
	ipCmd(t, "-n", topo.inet.name, "route", "add", m.cfg.CIDR.String(), "via", uplinkHostAddr)
	inetDial := func(port int) error {
		return topo.inet.run().do(func() error {
			c, err := net.DialTimeout("tcp4", net.JoinHostPort(gw, fmt.Sprint(port)), 2*time.Second)
			if err == nil {
				c.Close()
			}
			return err
		})
	}
	if err := inetDial(hostPortOpen); err != nil {
		t.Fatalf("the uplink side cannot reach a host service on the gateway address (the next check would prove nothing): %v", err)
	}
	if err := inetDial(proxyPort); err == nil {
		t.Fatal("the uplink side connected to the guest-only port")
	}
}
