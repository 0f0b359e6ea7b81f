package credproxy

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
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
)

// gitUpstream is a real git smart-HTTP server: git http-backend (through net/http/cgi) over bare repositories
// under root, which requires basic auth with the owner's credential.
type gitUpstream struct {
	root string
	mu   sync.Mutex
	seen []string // the Authorization headers it got
}

func (g *gitUpstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.mu.Lock()
	g.seen = append(g.seen, r.Header.Get("Authorization"))
	g.mu.Unlock()
	if u, pw, ok := r.BasicAuth(); !ok || u != "git" || pw != gitCred {
		w.Header().Set("WWW-Authenticate", `Basic realm="git"`)
		http.Error(w, "auth required", http.StatusUnauthorized)
		return
	}
	// git-http-backend spins when its input ends early (a push the proxy cut at its limit), so the test server
	// takes the whole body first and refuses a truncated one, as a real server would.
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "truncated request body", http.StatusBadRequest)
		return
	}
	r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
	r.Header.Del("Transfer-Encoding")
	r.TransferEncoding = nil
	backend := filepath.Join(gitExecPath(), "git-http-backend")
	h := &cgi.Handler{Path: backend, Env: []string{"GIT_PROJECT_ROOT=" + g.root, "GIT_HTTP_EXPORT_ALL=1",
		"REMOTE_USER=git"}}
	h.ServeHTTP(w, r)
}

func gitExecPath() string {
	out, err := exec.Command("git", "--exec-path").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func requireGit(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("git"); err != nil || gitExecPath() == "" {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatal("AETHERIUM_REQUIRE_SERVICES=1 but git is not installed")
		}
		t.Skip("SKIPPED: git is not installed")
	}
	if _, err := os.Stat(filepath.Join(gitExecPath(), "git-http-backend")); err != nil {
		t.Fatalf("git is installed without git-http-backend: %v", err)
	}
}

// forwarder accepts on 127.0.0.1 and connects to target from source: how a git client on the test host speaks
// to the proxy from a VM's address.
func forwarder(t *testing.T, source, target string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(source)}, Timeout: 10 * time.Second}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := d.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c); u.(*net.TCPConn).CloseWrite() }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
	return ln.Addr().String()
}

// tee records every byte of every response the proxy sends, headers included.
type tee struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	codes []int
}

func (t *tee) lastCode() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.codes) == 0 {
		return 0
	}
	return t.codes[len(t.codes)-1]
}

type teeWriter struct {
	http.ResponseWriter
	t *tee
}

func (w teeWriter) Write(b []byte) (int, error) {
	w.t.mu.Lock()
	w.t.buf.Write(b)
	w.t.mu.Unlock()
	return w.ResponseWriter.Write(b)
}

func (w teeWriter) WriteHeader(code int) {
	w.t.mu.Lock()
	_ = w.Header().Write(&w.t.buf)
	w.t.codes = append(w.t.codes, code)
	w.t.mu.Unlock()
	w.ResponseWriter.WriteHeader(code)
}

func (w teeWriter) Flush() { w.ResponseWriter.(http.Flusher).Flush() }

func (t *tee) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(teeWriter{w, t}, r) })
}

func (t *tee) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

func runGit(t *testing.T, dir string, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = dir
	cmd.Env = append([]string{"HOME=" + dir, "GIT_CONFIG_NOSYSTEM=1", "GIT_TERMINAL_PROMPT=0", "PATH=" + os.Getenv("PATH"),
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com"}, env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustGit(t *testing.T, dir string, env []string, args ...string) string {
	t.Helper()
	out, err := runGit(t, dir, env, args...)
	if err != nil {
		t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// TestGit clones and pushes through the proxy against a real git server that wants the owner's credential, with
// the token in git's environment the way GuestEnv puts it there, and checks every refusal: no token, another
// VM's address, a repository the token does not name, a push the token does not allow, an unconfigured host. The
// owner's credential appears in no byte the proxy sends back.
func TestGit(t *testing.T) {
	requireGit(t)
	root := t.TempDir()
	work := t.TempDir()
	// Upstream: org/repo.git with one commit, and org/other.git.
	for _, name := range []string{"repo", "other"} {
		bare := filepath.Join(root, "org", name+".git")
		mustGit(t, work, nil, "init", "-q", "--bare", "-b", "main", bare)
		mustGit(t, bare, nil, "config", "http.receivepack", "true")
	}
	seed := filepath.Join(work, "seed")
	mustGit(t, work, nil, "init", "-q", "-b", "main", seed)
	if err := os.WriteFile(filepath.Join(seed, "README"), []byte("hello from upstream\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, seed, nil, "add", "README")
	mustGit(t, seed, nil, "commit", "-q", "-m", "first")
	mustGit(t, seed, nil, "push", "-q", filepath.Join(root, "org", "repo.git"), "main")

	up := &gitUpstream{root: root}
	upSrv := httptest.NewServer(up)
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) {
		c.GitHosts = map[string]GitHost{"git.test": {URL: upSrv.URL, Secret: "GIT_TOKEN", Username: "git"}}
	})
	seen := &tee{}
	px := httptest.NewServer(seen.wrap(f.p))
	defer px.Close()
	target := strings.TrimPrefix(px.URL, "http://")
	fromA, fromB := forwarder(t, vmAIP, target), forwarder(t, vmBIP, target)
	// The environment a guest gets: only the per-VM token, in a header scoped to the proxy's /git/ URLs.
	envVia := func(via, tok string) []string {
		var env []string
		for k, v := range GuestEnv("http://"+via, tok) {
			env = append(env, k+"="+v)
		}
		return env
	}
	envA := func(tok string) []string { return envVia(fromA, tok) }
	repoURL := func(via, repo string) string { return "http://" + via + "/git/git.test/org/" + repo + ".git" }

	mustGit(t, work, envA(f.tokA), "clone", "-q", repoURL(fromA, "repo"), "clone-a")
	if b, err := os.ReadFile(filepath.Join(work, "clone-a", "README")); err != nil || string(b) != "hello from upstream\n" {
		t.Fatalf("cloned README: %q %v", b, err)
	}
	clone := filepath.Join(work, "clone-a")
	if err := os.WriteFile(filepath.Join(clone, "CHANGE"), bytes.Repeat([]byte("change\n"), 50000), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, clone, envA(f.tokA), "add", "CHANGE")
	mustGit(t, clone, envA(f.tokA), "commit", "-q", "-m", "from the vm")
	mustGit(t, clone, envA(f.tokA), "push", "-q", "origin", "HEAD:refs/heads/agent/run-1")
	out := mustGit(t, root, nil, "--git-dir", filepath.Join(root, "org", "repo.git"), "log", "--format=%s", "agent/run-1")
	if !strings.Contains(out, "from the vm") {
		t.Fatalf("the pushed branch is not upstream: %q", out)
	}
	mustGit(t, clone, envA(f.tokA), "fetch", "-q", "origin")

	// git answers a 401 by asking for a password (which fails, prompts being off), a 403 with the status.
	fail := func(name string, wantCode int, dir string, env []string, args ...string) {
		t.Helper()
		out, err := runGit(t, dir, env, args...)
		if err == nil {
			t.Errorf("%s: git %s succeeded, want a refusal", name, strings.Join(args, " "))
			return
		}
		if got := seen.lastCode(); got != wantCode {
			t.Errorf("%s: the proxy answered %d, want %d (git: %s)", name, got, wantCode, out)
		}
	}
	fail("no token", 401, work, nil, "clone", "-q", repoURL(fromA, "repo"), "c1")
	fail("vm a's token from vm b's address", 403, work, envVia(fromB, f.tokA), "clone", "-q", repoURL(fromB, "repo"), "c2")
	fail("a repository the token does not name", 403, work, envA(f.tokA), "clone", "-q", repoURL(fromA, "other"), "c3")
	fail("vm b's token (no git grant)", 403, work, envVia(fromB, f.tokB), "clone", "-q", repoURL(fromB, "repo"), "c4")
	readOnly, _ := f.p.Token(Grant{VMID: "vm-a", GitRepos: []string{"git.test/org/repo"}})
	mustGit(t, clone, envA(readOnly), "fetch", "-q", "origin")
	fail("a push with a read-only grant", 403, clone, envA(readOnly), "push", "-q", "origin", "HEAD:refs/heads/agent/run-2")
	fail("an unconfigured host", 403, work, envA(f.tokA), "clone", "-q", "http://"+fromA+"/git/github.com/org/repo.git", "c5")
	f.vms.delete("vm-a")
	fail("the token of a deleted vm", 401, clone, envA(f.tokA), "fetch", "-q", "origin")

	all := seen.String()
	basic := base64.StdEncoding.EncodeToString([]byte("git:" + gitCred))
	if len(all) < 1000 {
		t.Fatalf("recorded only %d bytes of responses", len(all))
	}
	if strings.Contains(all, gitCred) || strings.Contains(all, basic) {
		t.Fatal("the owner's git credential appears in a response of the proxy")
	}
	up.mu.Lock()
	defer up.mu.Unlock()
	for _, a := range up.seen {
		if a != "Basic "+basic {
			t.Fatalf("the upstream got Authorization %q, want the owner's basic credential only", a)
		}
	}
}

// TestGitLimits: a fetch over MaxGitFetch is cut and a push over MaxGitPush refused (413), each beside the same
// operation under the limit.
func TestGitLimits(t *testing.T) {
	requireGit(t)
	root, work := t.TempDir(), t.TempDir()
	bare := filepath.Join(root, "org", "repo.git")
	mustGit(t, work, nil, "init", "-q", "--bare", "-b", "main", bare)
	mustGit(t, bare, nil, "config", "http.receivepack", "true")
	seed := filepath.Join(work, "seed")
	mustGit(t, work, nil, "init", "-q", "-b", "main", seed)
	big := make([]byte, 300<<10)
	_, _ = rand.Read(big) // incompressible: the pack is as large as the file
	if err := os.WriteFile(filepath.Join(seed, "BIG"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, seed, nil, "add", "BIG")
	mustGit(t, seed, nil, "commit", "-q", "-m", "big")
	mustGit(t, seed, nil, "push", "-q", bare, "main")
	upSrv := httptest.NewServer(&gitUpstream{root: root})
	defer upSrv.Close()
	limited := func(push, fetch int64) (string, []string) {
		f := newFixture(t, func(c *Config) {
			c.GitHosts = map[string]GitHost{"git.test": {URL: upSrv.URL, Secret: "GIT_TOKEN", Username: "git"}}
			c.MaxGitPush, c.MaxGitFetch = push, fetch
		})
		via := forwarder(t, vmAIP, strings.TrimPrefix(f.url, "http://"))
		var env []string
		for k, v := range GuestEnv("http://"+via, f.tokA) {
			env = append(env, k+"="+v)
		}
		return "http://" + via + "/git/git.test/org/repo.git", env
	}
	url, env := limited(100<<10, 100<<10)
	if out, err := runGit(t, work, env, "clone", "-q", url, "small-fetch"); err == nil {
		t.Fatalf("a 300 KiB clone passed a 100 KiB fetch limit: %s", out)
	}
	url, env = limited(100<<10, 10<<20)
	clone := filepath.Join(work, "clone")
	mustGit(t, work, env, "clone", "-q", url, clone)
	_, _ = rand.Read(big)
	if err := os.WriteFile(filepath.Join(clone, "BIG2"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, clone, env, "add", "BIG2")
	mustGit(t, clone, env, "commit", "-q", "-m", "big2")
	out, err := runGit(t, clone, env, "push", "-q", "origin", "HEAD:refs/heads/big")
	if err == nil || !strings.Contains(out, "413") {
		t.Fatalf("a 300 KiB push passed a 100 KiB push limit (or not with 413): %v %s", err, out)
	}
	// Over git's post buffer, the push is sent chunked: the proxy cuts it at the limit.
	out, err = runGit(t, clone, env, "-c", "http.postBuffer=65536", "push", "-q", "origin", "HEAD:refs/heads/big")
	if err == nil || !strings.Contains(out, "413") {
		t.Fatalf("a chunked 300 KiB push passed a 100 KiB push limit (or not with 413): %v %s", err, out)
	}
	url, env = limited(10<<20, 10<<20)
	mustGit(t, clone, env, "remote", "set-url", "origin", url)
	mustGit(t, clone, env, "push", "-q", "origin", "HEAD:refs/heads/big")
}

// TestGitPushRefs: with PushRefs [refs/heads/agent/x], real git pushes that ref (and a pack of some MB of random
// data to it, which arrives intact), while pushing main, a second ref beside it, a deletion and a tag are
// refused (403; the proxy's plain-text message names the ref, though git does not print the body of a failed
// POST), and the upstream's refs do not change.
func TestGitPushRefs(t *testing.T) {
	requireGit(t)
	root, work := t.TempDir(), t.TempDir()
	bare := filepath.Join(root, "org", "repo.git")
	mustGit(t, work, nil, "init", "-q", "--bare", "-b", "main", bare)
	mustGit(t, bare, nil, "config", "http.receivepack", "true")
	seed := filepath.Join(work, "seed")
	mustGit(t, work, nil, "init", "-q", "-b", "main", seed)
	if err := os.WriteFile(filepath.Join(seed, "README"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, seed, nil, "add", "README")
	mustGit(t, seed, nil, "commit", "-q", "-m", "first")
	mustGit(t, seed, nil, "push", "-q", bare, "main")
	upSrv := httptest.NewServer(&gitUpstream{root: root})
	defer upSrv.Close()
	f := newFixture(t, func(c *Config) {
		c.GitHosts = map[string]GitHost{"git.test": {URL: upSrv.URL, Secret: "GIT_TOKEN", Username: "git"}}
		c.MaxGitPush = 64 << 20
	})
	tok, err := f.p.Token(Grant{VMID: "vm-a", GitRepos: []string{"git.test/org/repo"}, GitPush: true,
		PushRefs: []string{"refs/heads/agent/x"}})
	if err != nil {
		t.Fatal(err)
	}
	via := forwarder(t, vmAIP, strings.TrimPrefix(f.url, "http://"))
	var env []string
	for k, v := range GuestEnv("http://"+via, tok) {
		env = append(env, k+"="+v)
	}
	clone := filepath.Join(work, "clone")
	mustGit(t, work, env, "clone", "-q", "http://"+via+"/git/git.test/org/repo.git", clone)
	showRef := func() string { return mustGit(t, root, nil, "--git-dir", bare, "show-ref") }

	big := make([]byte, 6<<20)
	_, _ = rand.Read(big) // incompressible: the pack is some MB
	if err := os.WriteFile(filepath.Join(clone, "BIG"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, clone, env, "add", "BIG")
	mustGit(t, clone, env, "commit", "-q", "-m", "big")
	mustGit(t, clone, env, "push", "-q", "origin", "HEAD:refs/heads/agent/x")
	got := mustGit(t, root, nil, "--git-dir", bare, "cat-file", "blob", "agent/x:BIG")
	if got != string(big) {
		t.Fatalf("the pushed BIG upstream is %d bytes and differs from the %d pushed", len(got), len(big))
	}
	before := showRef()
	if !strings.Contains(before, "refs/heads/agent/x") {
		t.Fatalf("agent/x is not upstream: %s", before)
	}

	if err := os.WriteFile(filepath.Join(clone, "MORE"), []byte("more\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, clone, env, "add", "MORE")
	mustGit(t, clone, env, "commit", "-q", "-m", "more")
	mustGit(t, clone, env, "tag", "v1")
	for _, c := range []struct {
		name string
		args []string
	}{
		{"main", []string{"push", "origin", "HEAD:refs/heads/main"}},
		{"a second ref", []string{"push", "origin", "HEAD:refs/heads/agent/x", "HEAD:refs/heads/agent/y"}},
		{"a deletion", []string{"push", "origin", "--delete", "agent/x"}},
		{"a tag", []string{"push", "origin", "v1"}},
		{"a ref the allowed one is a prefix of", []string{"push", "origin", "HEAD:refs/heads/agent/xy"}},
	} {
		out, err := runGit(t, clone, env, c.args...)
		if err == nil {
			t.Errorf("%s: git %s succeeded", c.name, strings.Join(c.args, " "))
			continue
		}
		if !strings.Contains(out, "403") {
			t.Errorf("%s: not refused with 403: %s", c.name, out)
		}
		if after := showRef(); after != before {
			t.Fatalf("%s changed the upstream's refs:\n%s\nwas\n%s", c.name, after, before)
		}
	}

	// The refusal itself, as the proxy sends it: plain text naming the ref.
	body := pkt(strings.Repeat("0", 40)+" "+strings.Repeat("1", 40)+" refs/heads/main\x00report-status") + "0000"
	req, _ := http.NewRequest(http.MethodPost, f.url+"/git/git.test/org/repo.git/git-receive-pack", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/x-git-receive-pack-request")
	resp, err := f.client[vmAIP].Do(req)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain") ||
		!strings.Contains(string(msg), "pushing to refs/heads/main is not allowed") {
		t.Fatalf("refusal: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), msg)
	}
	// A compressed push cannot be checked.
	req, _ = http.NewRequest(http.MethodPost, f.url+"/git/git.test/org/repo.git/git-receive-pack", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Encoding", "gzip")
	resp, err = f.client[vmAIP].Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Fatalf("a gzip push: %d, want 415", resp.StatusCode)
	}
	if after := showRef(); after != before {
		t.Fatalf("the refused requests changed the upstream's refs:\n%s", after)
	}
}
