//go:build linux

package network

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/agent"
	"github.com/aetherium/aetherium/internal/credproxy"
)

// Credentials of the owner in TestGuestCredProxyTools: they must never be readable in the guest.
const (
	toolsModelKey = "sk-ant-OWNER-model-key-7f3e9a"
	toolsGitCred  = "ghp_OWNERgitCredential5d1c0b"
)

type toolsSecrets struct{}

func (toolsSecrets) Secret(_ context.Context, _, name string) (string, error) {
	switch name {
	case credproxy.AnthropicKeySecret:
		return toolsModelKey, nil
	case "GIT_TOKEN":
		return toolsGitCred, nil
	}
	return "", credproxy.ErrSecretNotFound
}

// shEnv runs a shell command in the guest with env and returns its output and exit code.
func (g *testGuest) shEnv(t testing.TB, env map[string]string, command string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := g.client.Exec(ctx, agent.ExecRequest{Shell: command, Env: env, Timeout: 3 * time.Minute})
	if err != nil {
		t.Fatalf("guest %s: exec %q: %v", g.att.VMID, command, err)
	}
	return string(res.Stdout) + string(res.Stderr), res.ExitCode
}

func (g *testGuest) mustEnv(t testing.TB, what string, env map[string]string, command string) string {
	t.Helper()
	out, code := g.shEnv(t, env, command)
	if code != 0 {
		t.Fatalf("guest %s: %s: exited %d:\n%s", g.att.VMID, what, code, out)
	}
	return out
}

// requireToolsTemplate returns the default template with tools (AETHERIUM_TEST_TOOLS_TEMPLATE, which scripts/test.sh
// builds), skipping loudly without it (failing under AETHERIUM_REQUIRE_SERVICES=1).
func requireToolsTemplate(t *testing.T) string {
	t.Helper()
	tmpl := os.Getenv("AETHERIUM_TEST_TOOLS_TEMPLATE")
	if tmpl == "" {
		if requireServices() {
			t.Fatal("AETHERIUM_REQUIRE_SERVICES=1 but AETHERIUM_TEST_TOOLS_TEMPLATE (the default template, made by scripts/test.sh) is unset")
		}
		t.Skip("SKIPPED: AETHERIUM_TEST_TOOLS_TEMPLATE (the default template with git and node) is unset")
	}
	return tmpl
}

// TestGuestCredProxyTools is the credential proxy from inside a real VM of the default template (git, node): with
// only the environment the worker gives an execution (credproxy.GuestEnv), the guest clones a repository through
// the proxy from a git server that wants the owner's credential, pushes a branch to it, and streams a Messages
// API response with node's fetch, and claude-code answers a prompt headless (claude -p); and neither credential is anywhere the guest can read it: not in any process's
// environment, not in git's configuration or the clone, not under /root (claude's own files), /etc, /tmp or
// /run.
func TestGuestCredProxyTools(t *testing.T) {
	tmpl := requireToolsTemplate(t)
	requireGuests(t)
	topo := newTopology(t)
	st := sqliteStore(t)
	m := newManager(t, topo.host, st.Leases(), func(c *Config) { c.GuestOnlyPorts = []uint16{proxyPort} })
	att := mustAttach(t, m, "proxy-tools", Policy{})
	g := bootGuestFrom(t, topo.host, att, tmpl, "max", 1024)
	gw := m.Gateway().String()

	// The upstreams, in the test's namespace on loopback (the proxy's outgoing connections start there).
	root := t.TempDir()
	bare := filepath.Join(root, "org", "repo.git")
	seed := t.TempDir()
	for _, c := range [][]string{{"init", "-q", "--bare", "-b", "main", bare}, {"-C", bare, "config", "http.receivepack", "true"},
		{"-C", seed, "init", "-q", "-b", "main"}, {"-C", seed, "commit", "-q", "--allow-empty", "-m", "upstream commit"},
		{"-C", seed, "push", "-q", bare, "main"}} {
		cmd := exec.Command("git", c...)
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=u", "GIT_AUTHOR_EMAIL=u@x", "GIT_COMMITTER_NAME=u", "GIT_COMMITTER_EMAIL=u@x")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", c, err, out)
		}
	}
	execPath, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		t.Fatal(err)
	}
	gitSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, pw, ok := r.BasicAuth(); !ok || u != "git" || pw != toolsGitCred {
			http.Error(w, "auth required", http.StatusUnauthorized)
			return
		}
		(&cgi.Handler{Path: filepath.Join(strings.TrimSpace(string(execPath)), "git-http-backend"),
			Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1", "REMOTE_USER=git"}}).ServeHTTP(w, r)
	}))
	defer gitSrv.Close()
	var modelPaths []string
	var modelMu sync.Mutex
	modelSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		modelMu.Lock()
		modelPaths = append(modelPaths, r.Method+" "+r.URL.Path)
		modelMu.Unlock()
		if r.Header.Get("X-Api-Key") != toolsModelKey {
			http.Error(w, `{"type":"error","error":{"type":"authentication_error","message":"bad key"}}`, 401)
			return
		}
		if !strings.HasSuffix(r.URL.Path, "/v1/messages") {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"input_tokens":5}`)
			return
		}
		if !strings.Contains(string(body), `"stream":true`) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"id":"m0","type":"message","role":"assistant","model":"claude-test","content":[{"type":"text","text":"streamed-through-proxy"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":9}}`)
			return
		}
		w.Header().Set("Content-Type", "text/event-stream")
		for _, e := range []string{
			`event: message_start` + "\n" + `data: {"type":"message_start","message":{"id":"m","type":"message","role":"assistant","content":[],"model":"claude-test","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":12,"output_tokens":1}}}`,
			`event: content_block_start` + "\n" + `data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`,
			`event: content_block_delta` + "\n" + `data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"streamed-through-proxy"}}`,
			`event: content_block_stop` + "\n" + `data: {"type":"content_block_stop","index":0}`,
			`event: message_delta` + "\n" + `data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":9}}`,
			`event: message_stop` + "\n" + `data: {"type":"message_stop"}`,
		} {
			io.WriteString(w, e+"\n\n")
			w.(http.Flusher).Flush()
		}
	}))
	defer modelSrv.Close()

	usage := &credproxy.MemoryUsage{}
	p, err := credproxy.New(credproxy.Config{Key: make([]byte, credproxy.KeySize), AnthropicUpstream: modelSrv.URL,
		VMs: attachedVMs{att.VMID: att}, Secrets: toolsSecrets{}, Usage: usage,
		GitHosts: map[string]credproxy.GitHost{"git.test": {URL: gitSrv.URL, Secret: "GIT_TOKEN", Username: "git"}}})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := p.Token(credproxy.Grant{VMID: att.VMID, RunID: "run-1", GitRepos: []string{"git.test/org/repo"}, GitPush: true})
	ln := listen(t, topo.host, "tcp4", net.JoinHostPort(gw, fmt.Sprint(proxyPort)))
	srv := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Close()
	env := credproxy.GuestEnv(fmt.Sprintf("http://%s:%d", gw, proxyPort), tok)

	out := g.mustEnv(t, "clone through the proxy", env,
		`git clone -q "$AETHERIUM_GIT_PROXY/git.test/org/repo.git" /root/repo && git -C /root/repo log --format=%s`)
	if !strings.Contains(out, "upstream commit") {
		t.Fatalf("clone: %s", out)
	}
	g.mustEnv(t, "push a branch through the proxy", env, `cd /root/repo && echo change > CHANGE && git add CHANGE &&
		git -c user.name=agent -c user.email=agent@vm commit -q -m "from the vm" && git push -q origin HEAD:refs/heads/agent/run-1`)
	if log, err := exec.Command("git", "--git-dir", bare, "log", "--format=%s", "agent/run-1").CombinedOutput(); err != nil ||
		!strings.Contains(string(log), "from the vm") {
		t.Fatalf("the pushed branch upstream: %v %s", err, log)
	}

	out = g.mustEnv(t, "stream a Messages response with node's fetch", env, `node -e '
		(async () => {
			const r = await fetch(process.env.ANTHROPIC_BASE_URL + "/v1/messages", {method: "POST",
				headers: {"authorization": "Bearer " + process.env.ANTHROPIC_AUTH_TOKEN, "anthropic-version": "2023-06-01",
					"content-type": "application/json"},
				body: JSON.stringify({model: "claude-test", max_tokens: 16, stream: true, messages: [{role: "user", content: "hi"}]})});
			let chunks = 0, text = "";
			for await (const c of r.body) { chunks++; text += new TextDecoder().decode(c); }
			console.log(r.status, r.headers.get("content-type"), "chunks=" + chunks);
			console.log(text);
		})().catch(e => { console.error(e); process.exit(1); });'`)
	if !strings.Contains(out, "200 text/event-stream") || !strings.Contains(out, "streamed-through-proxy") ||
		!strings.Contains(out, "message_stop") {
		t.Fatalf("node fetch through the proxy:\n%s", out)
	}
	u := usage.Totals(func(u credproxy.Usage) bool { return u.RunID == "run-1" })
	if u.InputTokens != 12 || u.OutputTokens != 9 {
		t.Fatalf("usage of run-1: %+v", u)
	}

	// claude-code headless, the way runs will start it: its model calls go through the proxy with the token only.
	before := len(usage.Records())
	out, code := g.shEnv(t, env, `cd /root/repo && timeout 170 claude -p "say hi" --output-format text 2>&1 </dev/null`)
	modelMu.Lock()
	paths := append([]string(nil), modelPaths...)
	modelMu.Unlock()
	if code != 0 || !strings.Contains(out, "streamed-through-proxy") || len(usage.Records()) <= before {
		t.Fatalf("claude -p through the proxy exited %d:\n%s\nthe upstream saw %v", code, out, paths)
	}

	// Where a credential could be: every process's environment (a command of the same execution env runs while
	// this reads), git's configuration and the clone, and the writable trees.
	for _, secret := range []string{toolsModelKey, toolsGitCred} {
		cmd := fmt.Sprintf(`cat /proc/[0-9]*/environ 2>/dev/null | tr '\0' '\n' | grep -c -F %[1]q;
			git -C /root/repo config --list --show-origin | grep -c -F %[1]q;
			grep -r -l -F %[1]q /root /etc /tmp /run 2>/dev/null; true`, secret)
		out := g.mustEnv(t, "look for the owner's credential", env, cmd)
		if strings.Contains(out, secret[:12]) || strings.TrimSpace(out) != "0\n0" {
			t.Fatalf("the owner's credential is readable in the guest:\n%s", out)
		}
	}
	// The token the guest holds is the proxy's own, which is no use off the proxy.
	if out := g.mustEnv(t, "show git's view of the remote", env, `git -C /root/repo remote get-url origin`); strings.Contains(out, tok) {
		t.Fatalf("the token was written into the clone's remote URL: %s", out)
	}
}
