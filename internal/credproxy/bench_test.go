package credproxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
)

// BenchmarkStream measures one streamed Messages response (the eight events of sseEvents, flushed one by one)
// read to its end by a client, straight from the scripted upstream and through the proxy (token check, VM
// lookup, secret, forwarding, usage parsing). The difference is the proxy's added latency per response; run with
// -count to take medians.
func BenchmarkStream(b *testing.B) {
	up := httptest.NewServer(&scriptedAnthropic{})
	defer up.Close()
	f := newFixture(b, func(c *Config) { c.AnthropicUpstream = up.URL })
	run := func(b *testing.B, url, tok string) {
		client := f.client[vmAIP]
		for b.Loop() {
			req, _ := http.NewRequest("POST", url, strings.NewReader(streamBody))
			if tok != "" {
				req.Header.Set("Authorization", "Bearer "+tok)
			}
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil || resp.StatusCode != 200 || n < 500 {
				b.Fatalf("status %d, %d bytes, %v", resp.StatusCode, n, err)
			}
		}
	}
	b.Run("direct", func(b *testing.B) { run(b, up.URL+"/v1/messages", "") })
	b.Run("proxy", func(b *testing.B) { run(b, f.url+"/anthropic/v1/messages", f.tokA) })
	// As a worker runs it: the VM is looked up in the store (SQLite here) on every request.
	st := sqliteStore(b)
	vm := runningVM(b, st, "bench", "w1", &model.VMNetwork{IP: vmAIP})
	fs := newFixture(b, func(c *Config) { c.AnthropicUpstream = up.URL; c.VMs = StoreVMs(st.VMs(), "w1") })
	tok, err := fs.p.Token(Grant{VMID: vm.ID})
	if err != nil {
		b.Fatal(err)
	}
	b.Run("proxy-sqlite", func(b *testing.B) { run(b, fs.url+"/anthropic/v1/messages", tok) })
}
