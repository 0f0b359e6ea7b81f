// Package githubtest is what the GitHub integration's tests share: real webhook payloads from the npm package
// @octokit/webhooks-examples and a fake GitHub REST API that validates every request against GitHub's own OpenAPI
// description (@octokit/openapi). scripts/octokit.sh installs both; AETHERIUM_TEST_OCTOKIT_DIR names the directory.
package githubtest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Dir returns the directory the npm packages are installed in. Without it the test is skipped loudly, or fails
// under AETHERIUM_REQUIRE_SERVICES=1.
func Dir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("AETHERIUM_TEST_OCTOKIT_DIR")
	if dir != "" {
		if _, err := os.Stat(filepath.Join(dir, "node_modules", "@octokit", "webhooks-examples")); err == nil {
			return dir
		}
	}
	msg := "SKIPPING: the GitHub tests need @octokit/webhooks-examples and @octokit/openapi: run scripts/octokit.sh " +
		"and set AETHERIUM_TEST_OCTOKIT_DIR to the directory it prints (scripts/test.sh does both)"
	if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

var (
	examplesOnce sync.Once
	examples     []struct {
		Name     string           `json:"name"`
		Examples []map[string]any `json:"examples"`
	}
	examplesErr error
)

// Examples returns the package's example payloads of event, as decoded JSON objects (fresh copies).
func Examples(t testing.TB, event string) []map[string]any {
	t.Helper()
	dir := Dir(t)
	examplesOnce.Do(func() {
		b, err := os.ReadFile(filepath.Join(dir, "node_modules", "@octokit", "webhooks-examples", "api.github.com", "index.json"))
		if err != nil {
			examplesErr = err
			return
		}
		examplesErr = json.Unmarshal(b, &examples)
	})
	if examplesErr != nil {
		t.Fatalf("webhooks-examples: %v", examplesErr)
	}
	for _, e := range examples {
		if e.Name == event {
			out := make([]map[string]any, 0, len(e.Examples))
			for _, x := range e.Examples {
				b, _ := json.Marshal(x)
				var c map[string]any
				_ = json.Unmarshal(b, &c)
				out = append(out, c)
			}
			return out
		}
	}
	t.Fatalf("webhooks-examples has no %s event", event)
	return nil
}

// Example returns the first example of event whose action is action ("": events without actions, such as ping)
// and that satisfies ok (nil: any).
func Example(t testing.TB, event, action string, ok func(map[string]any) bool) map[string]any {
	t.Helper()
	for _, x := range Examples(t, event) {
		a, _ := x["action"].(string)
		if a == action && (ok == nil || ok(x)) {
			return x
		}
	}
	t.Fatalf("webhooks-examples has no %s %s example that fits", event, action)
	return nil
}

// Installation returns an App installation object as the package's payloads carry it (taken from the first
// example of any event that has one), for deriving App deliveries from examples that lack it.
func Installation(t testing.TB) map[string]any {
	t.Helper()
	for _, ev := range []string{"check_run", "check_suite", "installation"} {
		for _, x := range Examples(t, ev) {
			if in, ok := x["installation"].(map[string]any); ok && in["id"] != nil {
				return in
			}
		}
	}
	t.Fatal("webhooks-examples has no payload with an installation")
	return nil
}

// PullRequestComment derives an issue_comment created delivery on a pull request, which the package lacks: its
// issue_comment created example with the pull_request links (url, html_url, diff_url, patch_url) taken
// from the package's pull_request opened example, as GitHub sends them for a comment on a pull request.
func PullRequestComment(t testing.TB) map[string]any {
	t.Helper()
	x := Example(t, "issue_comment", "created", nil)
	pr := Example(t, "pull_request", "opened", nil)["pull_request"].(map[string]any)
	x["issue"].(map[string]any)["pull_request"] = map[string]any{"url": pr["url"], "html_url": pr["html_url"],
		"diff_url": pr["diff_url"], "patch_url": pr["patch_url"], "merged_at": nil}
	x["issue"].(map[string]any)["number"] = pr["number"]
	return x
}

// Get walks a decoded payload: Get(x, "repository", "owner", "login").
func Get(x map[string]any, path ...string) any {
	var v any = x
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// Request is one request the fake received.
type Request struct {
	Method, Path string
	Auth         string
	Body         map[string]any
}

// Fake is a GitHub REST API: it validates each request against the OpenAPI description, records it and answers
// as GitHub would (the fields the integration reads).
type Fake struct {
	*httptest.Server
	t    testing.TB
	spec *Spec

	mu         sync.Mutex
	reqs       []Request
	nextID     int64
	Permission string // the collaborator permission answered (default "write")
	TokenTTL   time.Duration
	faults     []*fault
	failed     int
}

// fault makes the fake answer status to the next times requests of method whose path contains part.
type fault struct {
	method, part string
	status, left int
}

// FailNext makes the next times requests of method whose path contains part fail with status (500, 502, 429
// with Retry-After: 1, ...), as GitHub does when it is having a bad day; they are not recorded in Requests.
func (f *Fake) FailNext(method, part string, status, times int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.faults = append(f.faults, &fault{method: method, part: part, status: status, left: times})
}

// Failed returns how many requests FailNext made fail.
func (f *Fake) Failed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.failed
}

// NewFake starts a fake GitHub, closed at the end of the test.
func NewFake(t testing.TB) *Fake {
	t.Helper()
	f := &Fake{t: t, spec: LoadSpec(t), nextID: 1000, Permission: "write", TokenTTL: time.Hour}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// Requests returns what the fake received so far.
func (f *Fake) Requests() []Request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Request(nil), f.reqs...)
}

// Find returns the requests of method whose path ends with suffix.
func (f *Fake) Find(method, suffix string) []Request {
	var out []Request
	for _, r := range f.Requests() {
		if r.Method == method && strings.HasSuffix(r.Path, suffix) {
			out = append(out, r)
		}
	}
	return out
}

func (f *Fake) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	var body map[string]any
	if len(raw) > 0 {
		if err := json.Unmarshal(raw, &body); err != nil {
			f.t.Errorf("fake github: %s %s: body is not a JSON object: %v", r.Method, r.URL.Path, err)
		}
	}
	if err := f.spec.Validate(r.Method, r.URL.Path, body); err != nil {
		f.t.Errorf("fake github: request does not match GitHub's OpenAPI description: %v", err)
		http.Error(w, `{"message":"Validation Failed"}`, http.StatusUnprocessableEntity)
		return
	}
	f.mu.Lock()
	for _, x := range f.faults {
		if x.left > 0 && x.method == r.Method && strings.Contains(r.URL.Path, x.part) {
			x.left--
			f.failed++
			f.mu.Unlock()
			if x.status == http.StatusTooManyRequests {
				w.Header().Set("Retry-After", "1")
			}
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(x.status)
			_, _ = io.WriteString(w, `{"message":"Server Error"}`)
			return
		}
	}
	f.reqs = append(f.reqs, Request{Method: r.Method, Path: r.URL.Path, Auth: r.Header.Get("Authorization"), Body: body})
	f.nextID++
	id := f.nextID
	perm := f.Permission
	ttl := f.TokenTTL
	f.mu.Unlock()
	p := r.URL.Path
	answer := func(status int, v any) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(v)
	}
	switch {
	case strings.HasSuffix(p, "/access_tokens"):
		answer(201, map[string]any{"token": fmt.Sprintf("ghs_fake%d", id), "expires_at": time.Now().Add(ttl).UTC().Format(time.RFC3339)})
	case strings.HasSuffix(p, "/permission"):
		answer(200, map[string]any{"permission": perm, "role_name": perm, "user": map[string]any{"login": "x"}})
	case strings.HasSuffix(p, "/reactions"):
		answer(201, map[string]any{"id": id, "content": body["content"]})
	case strings.Contains(p, "/branches/"):
		answer(200, map[string]any{"name": p[strings.LastIndex(p, "/")+1:], "commit": map[string]any{"sha": "6dcb09b5b57875f334f61aebed695e2e4193db5e"}})
	case r.Method == http.MethodGet && strings.Contains(p, "/pulls/"):
		answer(200, map[string]any{"head": map[string]any{"ref": "feature", "sha": "ec26c3e57ca3a959ca5aad62de7213c562f8c821"}})
	case r.Method == http.MethodPost && strings.HasSuffix(p, "/pulls"):
		answer(201, map[string]any{"id": id, "html_url": "https://github.com/pull/" + fmt.Sprint(id)})
	case r.Method == http.MethodPost:
		answer(201, map[string]any{"id": id})
	default:
		answer(200, map[string]any{"id": id})
	}
}
