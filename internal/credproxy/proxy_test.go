package credproxy

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
)

// fakeVMs is a VMSource over a map; deleting a VM revokes its tokens.
type fakeVMs struct {
	mu  sync.Mutex
	vms map[string]VM
}

func (f *fakeVMs) ProxyVM(_ context.Context, id string) (VM, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	vm, ok := f.vms[id]
	if !ok {
		return VM{}, fmt.Errorf("vm %s: %w", id, ErrVMGone)
	}
	return vm, nil
}

func (f *fakeVMs) delete(id string) {
	f.mu.Lock()
	delete(f.vms, id)
	f.mu.Unlock()
}

// fakeSecrets is a SecretSource over a map of owner -> name -> value, answering like the real store.
type fakeSecrets map[string]map[string]string

func (f fakeSecrets) Secret(_ context.Context, owner, name string) (string, error) {
	v, ok := f[owner][name]
	if !ok {
		return "", fmt.Errorf("secret %s: %w", name, model.ErrNotFound)
	}
	return v, nil
}

const (
	ownerKey    = "sk-ant-owner-secret-0123456789"
	openaiKey   = "sk-openai-owner-secret-42"
	gitCred     = "ghp_ownerGitCredential0123456789"
	vmAIP       = "127.0.0.2"
	vmBIP       = "127.0.0.3"
	guestOwnKey = "sk-guest-own-key"
)

// fixture is a proxy on loopback with two VMs of one owner at 127.0.0.2 and 127.0.0.3 (Linux routes all of
// 127/8 to lo, so a client bound to one of them has that source address), and a third owner without secrets.
type fixture struct {
	p      *Proxy
	url    string
	vms    *fakeVMs
	usage  *MemoryUsage
	tokA   string
	tokB   string
	tokC   string
	client map[string]*http.Client // by source IP
}

func newFixture(t testing.TB, mod func(*Config)) *fixture {
	t.Helper()
	f := &fixture{usage: &MemoryUsage{}, client: map[string]*http.Client{}}
	f.vms = &fakeVMs{vms: map[string]VM{
		"vm-a": {ID: "vm-a", OwnerID: "alice", IP: netip.MustParseAddr(vmAIP)},
		"vm-b": {ID: "vm-b", OwnerID: "alice", IP: netip.MustParseAddr(vmBIP)},
		"vm-c": {ID: "vm-c", OwnerID: "carol", IP: netip.MustParseAddr("127.0.0.4")},
	}}
	key, err := LoadKey(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Key: key, VMs: f.vms, Usage: f.usage,
		Secrets: fakeSecrets{"alice": {AnthropicKeySecret: ownerKey, OpenAIKeySecret: openaiKey, "GIT_TOKEN": gitCred}}}
	if mod != nil {
		mod(&cfg)
	}
	if f.p, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(f.p)
	t.Cleanup(srv.Close)
	f.url = srv.URL
	for id, tok := range map[string]*string{"vm-a": &f.tokA, "vm-b": &f.tokB, "vm-c": &f.tokC} {
		g := Grant{VMID: id, RunID: "run-" + id}
		if id == "vm-a" {
			g.GitRepos, g.GitPush = []string{"git.test/org/repo"}, true
		}
		if *tok, err = f.p.Token(g); err != nil {
			t.Fatal(err)
		}
	}
	for _, ip := range []string{vmAIP, vmBIP, "127.0.0.4"} {
		d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 10 * time.Second}
		f.client[ip] = &http.Client{Transport: &http.Transport{DialContext: d.DialContext, DisableCompression: true}}
	}
	return f
}

func (f *fixture) do(t testing.TB, from, method, path, tok string, body string, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := f.client[from].Do(req)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", method, path, from, err)
	}
	return resp
}

func readAll(t testing.TB, resp *http.Response) string {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sseEvents is a streamed Messages API response in Anthropic's documented event format.
var sseEvents = []string{
	"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":7,\"cache_read_input_tokens\":100,\"output_tokens\":1}}}\n\n",
	"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
	"event: ping\ndata: {\"type\": \"ping\"}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
	"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"!\"}}\n\n",
	"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
	"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
	"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
}

// scriptedAnthropic streams sseEvents, waiting on next (if not nil) before each event after the first, and
// records what it was sent.
type scriptedAnthropic struct {
	next chan struct{}
	mu   sync.Mutex
	reqs []*http.Request
	body []string
}

func (s *scriptedAnthropic) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b, _ := io.ReadAll(r.Body)
	s.mu.Lock()
	s.reqs, s.body = append(s.reqs, r), append(s.body, string(b))
	s.mu.Unlock()
	if !strings.Contains(string(b), `"stream":true`) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"msg_2","type":"message","role":"assistant","model":"claude-haiku-4-5",`+
			`"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":11,"output_tokens":3}}`)
		return
	}
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Set-Cookie", "upstream=1")
	fl := w.(http.Flusher)
	for i, e := range sseEvents {
		if i > 0 && s.next != nil {
			select {
			case <-s.next:
			case <-r.Context().Done():
				return
			}
		}
		_, _ = io.WriteString(w, e)
		fl.Flush()
	}
}

func (s *scriptedAnthropic) last() (*http.Request, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reqs[len(s.reqs)-1], s.body[len(s.body)-1]
}

const streamBody = `{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}`

// TestAnthropicStream: every event reaches the guest before the upstream sends the next one (nothing is
// buffered), the upstream gets the owner's key and neither the proxy token nor the guest's own key, the Anthropic
// headers pass, and the usage of message_start and message_delta is recorded for the VM and its run.
func TestAnthropicStream(t *testing.T) {
	up := &scriptedAnthropic{next: make(chan struct{})}
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) { c.AnthropicUpstream = upSrv.URL + "/corp" })

	resp := f.do(t, vmAIP, "POST", "/anthropic/v1/messages?beta=true", f.tokA, streamBody, map[string]string{
		"x-api-key": guestOwnKey, "anthropic-version": "2023-06-01", "anthropic-beta": "fine-grained-tool-streaming-2025-05-14",
		"Content-Type": "application/json"})
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d: %s", resp.StatusCode, readAll(t, resp))
	}
	if resp.Header.Get("Set-Cookie") != "" {
		t.Error("an upstream cookie reached the guest")
	}
	br := bufio.NewReader(resp.Body)
	readEvent := func() string {
		var ev strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				t.Fatalf("read event: %v (so far %q)", err, ev.String())
			}
			ev.WriteString(line)
			if line == "\n" {
				return ev.String()
			}
		}
	}
	for i := range sseEvents {
		done := make(chan string, 1)
		go func() { done <- readEvent() }()
		var got string
		select {
		case got = <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("event %d did not arrive while the upstream waits to send event %d: the proxy buffers", i, i+1)
		}
		if got != sseEvents[i] {
			t.Fatalf("event %d: got %q, want %q", i, got, sseEvents[i])
		}
		if i+1 < len(sseEvents) {
			up.next <- struct{}{}
		}
	}
	if rest, _ := io.ReadAll(br); len(rest) != 0 {
		t.Fatalf("extra bytes after the last event: %q", rest)
	}
	resp.Body.Close()

	r, body := up.last()
	if r.URL.Path != "/corp/v1/messages" || r.URL.RawQuery != "beta=true" {
		t.Errorf("upstream got path %s?%s", r.URL.Path, r.URL.RawQuery)
	}
	if got := r.Header.Get("X-Api-Key"); got != ownerKey {
		t.Errorf("upstream x-api-key %q, want the owner's key", got)
	}
	if r.Header.Get("Authorization") != "" {
		t.Errorf("upstream saw Authorization %q (the proxy token)", r.Header.Get("Authorization"))
	}
	for k, vs := range r.Header {
		for _, v := range vs {
			if strings.Contains(v, f.tokA) || strings.Contains(v, guestOwnKey) {
				t.Errorf("upstream header %s carries the guest's token or key", k)
			}
		}
	}
	if r.Header.Get("Anthropic-Version") != "2023-06-01" || r.Header.Get("Anthropic-Beta") == "" {
		t.Errorf("anthropic headers lost: %v", r.Header)
	}
	if body != streamBody {
		t.Errorf("upstream body %q", body)
	}
	u := waitUsage(t, f.usage, 1)[0]
	want := Usage{VMID: "vm-a", RunID: "run-vm-a", OwnerID: "alice", Provider: "anthropic", Path: "/v1/messages",
		Model: "claude-sonnet-4-5", Status: 200, Streamed: true, InputTokens: 25, OutputTokens: 15,
		CacheCreationInputTokens: 7, CacheReadInputTokens: 100}
	u.Time = time.Time{}
	if u != want {
		t.Fatalf("usage\n got %+v\nwant %+v", u, want)
	}
}

func waitUsage(t testing.TB, m *MemoryUsage, n int) []Usage {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if r := m.Records(); len(r) >= n {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d usage records, have %v", n, m.Records())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestAnthropicJSON: a response that is not streamed passes whole and its usage is recorded; x-api-key works as
// the token's header too (the Anthropic SDKs' ANTHROPIC_API_KEY).
func TestAnthropicJSON(t *testing.T) {
	up := &scriptedAnthropic{}
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) { c.AnthropicUpstream = upSrv.URL })
	resp := f.do(t, vmBIP, "POST", "/anthropic/v1/messages", "", `{"model":"claude-haiku-4-5"}`,
		map[string]string{"x-api-key": f.tokB})
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, `"text":"hi"`) {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if r, _ := up.last(); r.Header.Get("X-Api-Key") != ownerKey {
		t.Fatalf("upstream x-api-key %q", r.Header.Get("X-Api-Key"))
	}
	u := waitUsage(t, f.usage, 1)[0]
	if u.VMID != "vm-b" || u.InputTokens != 11 || u.OutputTokens != 3 || u.Streamed || u.Model != "claude-haiku-4-5" {
		t.Fatalf("usage %+v", u)
	}
	if tot := f.usage.Totals(func(u Usage) bool { return u.RunID == "run-vm-b" }); tot.InputTokens != 11 {
		t.Fatalf("run totals %+v", tot)
	}
}

// TestGzipUpstream: an upstream that compresses when asked still has its usage read, and the guest gets the body
// decoded, whatever Accept-Encoding it sent.
func TestGzipUpstream(t *testing.T) {
	upSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		body := `{"type":"message","model":"claude-x","usage":{"input_tokens":21,"output_tokens":2}}`
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			io.WriteString(w, body)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzip.NewWriter(w)
		io.WriteString(zw, body)
		zw.Close()
	}))
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) { c.AnthropicUpstream = upSrv.URL })
	resp := f.do(t, vmAIP, "POST", "/anthropic/v1/messages", f.tokA, `{}`, map[string]string{"Accept-Encoding": "gzip, br"})
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.Contains(body, `"input_tokens":21`) {
		t.Fatalf("status %d, encoding %q: %q", resp.StatusCode, resp.Header.Get("Content-Encoding"), body)
	}
	if u := waitUsage(t, f.usage, 1)[0]; u.InputTokens != 21 || u.OutputTokens != 2 {
		t.Fatalf("usage %+v", u)
	}
}

// TestOpenAI: bearer key upstream, usage from a streamed chat completion's last chunk.
func TestOpenAI(t *testing.T) {
	var gotAuth string
	upSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "text/event-stream")
		io.WriteString(w, "data: {\"id\":\"c1\",\"model\":\"gpt-5\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n")
		io.WriteString(w, "data: {\"id\":\"c1\",\"model\":\"gpt-5\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":4,\"total_tokens\":13,\"prompt_tokens_details\":{\"cached_tokens\":2}}}\n\n")
		io.WriteString(w, "data: [DONE]\n\n")
	}))
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) { c.OpenAIUpstream = upSrv.URL })
	resp := f.do(t, vmAIP, "POST", "/openai/v1/chat/completions", f.tokA, `{"stream":true}`, nil)
	if body := readAll(t, resp); resp.StatusCode != 200 || !strings.HasSuffix(body, "data: [DONE]\n\n") {
		t.Fatalf("status %d: %q", resp.StatusCode, body)
	}
	if gotAuth != "Bearer "+openaiKey {
		t.Fatalf("upstream Authorization %q", gotAuth)
	}
	u := waitUsage(t, f.usage, 1)[0]
	if u.Provider != "openai" || u.InputTokens != 9 || u.OutputTokens != 4 || u.CacheReadInputTokens != 2 || u.Model != "gpt-5" {
		t.Fatalf("usage %+v", u)
	}
}

// TestAuth: the refusals, each beside a request that differs only in what is tested and succeeds.
func TestAuth(t *testing.T) {
	var hits int
	var mu sync.Mutex
	upSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		hits++
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"data":[]}`)
	}))
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) { c.AnthropicUpstream = upSrv.URL })
	check := func(name, from, tok string, want int, wantMsg string) {
		t.Helper()
		resp := f.do(t, from, "GET", "/anthropic/v1/models", tok, "", nil)
		body := readAll(t, resp)
		if resp.StatusCode != want || !strings.Contains(body, wantMsg) {
			t.Errorf("%s: status %d %s, want %d with %q", name, resp.StatusCode, body, want, wantMsg)
		}
	}
	check("own token from own address", vmAIP, f.tokA, 200, "data")
	for _, path := range []string{"/anthropic/v1/files", "/anthropic/v1/messages/batches", "/anthropic/v1/organizations/me",
		"/anthropic/v1/models/a/b", "/openai/v1/files", "/openai/v1/responses/resp_1"} {
		resp := f.do(t, vmAIP, "GET", path, f.tokA, "", nil)
		if body := readAll(t, resp); resp.StatusCode != 403 || !strings.Contains(body, "model endpoints only") {
			t.Errorf("GET %s: %d %s, want 403", path, resp.StatusCode, body)
		}
	}
	if resp := f.do(t, vmAIP, "GET", "/anthropic/v1/models/claude-x", f.tokA, "", nil); resp.StatusCode != 200 {
		t.Errorf("GET a model: %d", resp.StatusCode)
	}
	check("vm b's token from its address", vmBIP, f.tokB, 200, "data")
	check("vm a's token from vm b's address", vmBIP, f.tokA, 403, "belongs to another vm")
	check("vm b's token from vm a's address", vmAIP, f.tokB, 403, "belongs to another vm")
	check("no token", vmAIP, "", 401, "no proxy token")
	check("garbage", vmAIP, "aep1.e30.AAAA", 401, "invalid proxy token")
	tampered := strings.Replace(f.tokA, "aep1.", "aep1.x", 1)
	check("tampered token", vmAIP, tampered, 401, "invalid proxy token")
	other, _ := (signer{key: make([]byte, 32)}).issue(Grant{VMID: "vm-a"})
	check("token of another key", vmAIP, other, 401, "invalid proxy token")
	check("owner without the secret", "127.0.0.4", f.tokC, 502,
		"owner has no ANTHROPIC_API_KEY secret: aetherium secret set ANTHROPIC_API_KEY")
	f.vms.delete("vm-a")
	check("token of a deleted vm", vmAIP, f.tokA, 401, "revoked")
	check("the other vm still works", vmBIP, f.tokB, 200, "data")
	mu.Lock()
	defer mu.Unlock()
	if hits != 4 {
		t.Fatalf("the upstream got %d requests, want 4 (only the accepted ones)", hits)
	}
}

// TestTokensSurviveRestart: the key persists (0600) and a new proxy on the same data directory accepts the old
// tokens, which is what lets VMs outlive their worker.
func TestTokensSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	k1, err := LoadKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v %v", fi.Mode(), err)
	}
	k2, err := LoadKey(dir)
	if err != nil || string(k1) != string(k2) {
		t.Fatalf("second load: %v, same=%v", err, string(k1) == string(k2))
	}
	tok, _ := signer{k1}.issue(Grant{VMID: "vm-x", GitRepos: []string{"https://GitHub.com/Org/Repo.git"}})
	g, err := signer{k2}.verify(tok)
	if err != nil || g.VMID != "vm-x" || !g.allowsRepo("github.com/org/repo") {
		t.Fatalf("verify with the reloaded key: %+v %v", g, err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), []byte("short"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadKey(dir); err == nil {
		t.Fatal("a corrupt key file was accepted")
	}
}

func TestGuestEnv(t *testing.T) {
	env := GuestEnv("http://172.16.0.1:8091/", "TOK")
	want := map[string]string{"ANTHROPIC_BASE_URL": "http://172.16.0.1:8091/anthropic", "ANTHROPIC_AUTH_TOKEN": "TOK",
		"GIT_CONFIG_KEY_0": "http.http://172.16.0.1:8091/git/.extraHeader", "GIT_CONFIG_VALUE_0": "Authorization: Bearer TOK"}
	for k, v := range want {
		if env[k] != v {
			t.Errorf("%s=%q, want %q", k, env[k], v)
		}
	}
	b, _ := json.Marshal(env)
	if strings.Contains(string(b), ownerKey) {
		t.Fatal("impossible")
	}
}
