package github_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/github"
	"github.com/aetherium/aetherium/internal/integrations/github/githubtest"
)

const secret = "It's a Secret to Everybody"

// fakeActions is Aetherium as Handle sees it: one link, and work that ends with a given outcome.
type fakeActions struct {
	mu       sync.Mutex
	link     *integrations.Link
	commands []integrations.CommandRequest
	runs     []integrations.RunRequest
	outcome  integrations.Outcome
}

func (a *fakeActions) Link(_ context.Context, integration, source string) (*integrations.Link, error) {
	if a.link == nil || integration != "github" || source != a.link.Source {
		return nil, integrations.ErrNotLinked
	}
	return a.link, nil
}

func (a *fakeActions) StartCommand(_ context.Context, owner string, req integrations.CommandRequest) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.commands = append(a.commands, req)
	return "job-1", nil
}

func (a *fakeActions) StartRun(_ context.Context, owner string, req integrations.RunRequest) (string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.runs = append(a.runs, req)
	return "run-1", nil
}

func (a *fakeActions) Wait(_ context.Context, owner, kind, id string) (*integrations.Outcome, error) {
	o := a.outcome
	return &o, nil
}

// delivery derives an App delivery from a package example: the comment's body set, the installation (which the
// package's issue_comment examples lack) taken from another of its payloads.
func delivery(t *testing.T, event string, x map[string]any, body string) *integrations.Delivery {
	t.Helper()
	if body != "" {
		x["comment"].(map[string]any)["body"] = body
	}
	if x["installation"] == nil {
		x["installation"] = githubtest.Installation(t)
	}
	raw, err := json.Marshal(x)
	if err != nil {
		t.Fatal(err)
	}
	return &integrations.Delivery{ID: "rec-1", Integration: "github", DeliveryID: "d-1", Event: event, Body: raw,
		Header: http.Header{"X-Github-Event": {event}}}
}

func newGitHub(t *testing.T, f *githubtest.Fake) (*github.GitHub, *rsa.PrivateKey) {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	g, err := github.New(github.Config{WebhookSecret: secret, ClientID: "Iv1.client", PrivateKey: key, APIURL: f.URL})
	if err != nil {
		t.Fatal(err)
	}
	return g, key
}

func TestVerify(t *testing.T) {
	x := githubtest.Example(t, "issue_comment", "created", nil)
	body, _ := json.Marshal(x)
	g, err := github.New(github.Config{WebhookSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	hook := func(sig string, b []byte) *integrations.Webhook {
		h := http.Header{}
		if sig != "" {
			h.Set("X-Hub-Signature-256", sig)
		}
		return &integrations.Webhook{Header: h, Body: b}
	}
	if err := g.Verify(t.Context(), hook(github.Sign(secret, body), body)); err != nil {
		t.Fatalf("Verify of a correctly signed example: %v", err)
	}
	tampered := append([]byte{}, body...)
	tampered[len(tampered)-2] ^= 1
	for name, h := range map[string]*integrations.Webhook{
		"missing":      hook("", body),
		"sha1":         hook("sha1="+strings.Repeat("0", 40), body),
		"not hex":      hook("sha256=zz", body),
		"other secret": hook(github.Sign("other", body), body),
		"tampered":     hook(github.Sign(secret, body), tampered),
	} {
		if err := g.Verify(t.Context(), h); !errors.Is(err, integrations.ErrBadSignature) {
			t.Errorf("%s: Verify = %v, want ErrBadSignature", name, err)
		}
	}
}

func TestAcceptPing(t *testing.T) {
	x := githubtest.Example(t, "ping", "", nil)
	body, _ := json.Marshal(x)
	g, _ := github.New(github.Config{WebhookSecret: secret})
	acc, err := g.Accept(t.Context(), &integrations.Webhook{Header: http.Header{"X-Github-Event": {"ping"},
		"X-Github-Delivery": {"p-1"}}, Body: body})
	if err != nil || acc.DeliveryID != "" || acc.Reply == nil || acc.Reply.Status != 200 {
		t.Fatalf("Accept(ping) = %+v, %v; want an immediate 200 and nothing recorded", acc, err)
	}
	acc, err = g.Accept(t.Context(), &integrations.Webhook{Header: http.Header{"X-Github-Event": {"issue_comment"},
		"X-Github-Delivery": {"d-9"}}, Body: body})
	if err != nil || acc.DeliveryID != "d-9" || acc.Reply != nil {
		t.Fatalf("Accept(issue_comment) = %+v, %v", acc, err)
	}
}

func linkFor(x map[string]any) *integrations.Link {
	return &integrations.Link{OwnerID: "alice", Integration: "github", Commands: true, Runs: true,
		Source: "github.com/" + githubtest.Get(x, "repository", "full_name").(string)}
}

func TestCommandOnIssueComment(t *testing.T) {
	f := githubtest.NewFake(t)
	g, key := newGitHub(t, f)
	x := githubtest.Example(t, "issue_comment", "created", func(x map[string]any) bool {
		return githubtest.Get(x, "issue", "pull_request") == nil
	})
	code := 0
	a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "completed", ExitCode: &code, OutputTail: "hi\n"}}
	if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "please\n/aetherium run echo hi\nthanks"), a); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if len(a.commands) != 1 || a.commands[0].Command != "echo hi" ||
		a.commands[0].RepoURL != githubtest.Get(x, "repository", "clone_url") {
		t.Fatalf("commands started = %+v", a.commands)
	}
	repo := "/repos/" + githubtest.Get(x, "repository", "full_name").(string)
	tok := f.Find("POST", "/access_tokens")
	if len(tok) != 1 {
		t.Fatalf("%d token requests, want 1", len(tok))
	}
	if got := tok[0].Body["repositories"]; len(got.([]any)) != 1 || got.([]any)[0] != githubtest.Get(x, "repository", "name") {
		t.Errorf("token narrowed to %v, want the one repository", got)
	}
	checkJWT(t, tok[0].Auth, &key.PublicKey, "Iv1.client")
	login := githubtest.Get(x, "comment", "user", "login").(string)
	if n := len(f.Find("GET", repo+"/collaborators/"+login+"/permission")); n != 1 {
		t.Errorf("%d permission checks of %s, want 1", n, login)
	}
	commentID := int64(githubtest.Get(x, "comment", "id").(float64))
	react := f.Find("POST", repo+"/issues/comments/"+itoa(commentID)+"/reactions")
	if len(react) != 1 || react[0].Body["content"] != "eyes" {
		t.Errorf("reactions = %+v, want one eyes", react)
	}
	for _, r := range f.Requests() {
		if !strings.HasSuffix(r.Path, "/access_tokens") && !strings.HasPrefix(r.Auth, "token ghs_fake") {
			t.Errorf("%s %s authorised with %q, want the installation token", r.Method, r.Path, r.Auth)
		}
	}
	posts := f.Find("POST", "/comments")
	if len(posts) != 1 {
		t.Fatalf("%d comments posted, want one tracking comment", len(posts))
	}
	patches := f.Find("PATCH", "")
	var last string
	for _, p := range patches {
		if strings.Contains(p.Path, "/issues/comments/") {
			last = p.Body["body"].(string)
		}
	}
	if !strings.Contains(last, "hi") || !strings.Contains(last, "Exit code: 0") {
		t.Errorf("last tracking comment edit = %q, want the output and exit code", last)
	}
	checks := f.Find("POST", repo+"/check-runs")
	if len(checks) != 1 || checks[0].Body["head_sha"] == "" {
		t.Fatalf("check runs = %+v", checks)
	}
	var done bool
	for _, p := range patches {
		if strings.Contains(p.Path, "/check-runs/") && p.Body["conclusion"] == "success" {
			done = true
		}
	}
	if !done {
		t.Errorf("the check run was not completed with success: %+v", patches)
	}

	// The token is cached: a second delivery asks for none.
	if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "/aetherium run true"), a); err != nil {
		t.Fatal(err)
	}
	if n := len(f.Find("POST", "/access_tokens")); n != 1 {
		t.Errorf("%d token requests after two deliveries, want 1 (cached)", n)
	}
}

// TestRetriesResumeWithoutRepeating: GitHub failing one request after another (500, 429, 502) makes the delivery
// fail and be retried; with its saved progress each retry resumes where the last stopped, so the pull request gets
// one reaction, one tracking comment, one check run and one draft pull request, and one run is started, however
// many attempts it takes. The final report is retried until it is made.
func TestRetriesResumeWithoutRepeating(t *testing.T) {
	f := githubtest.NewFake(t)
	g, _ := newGitHub(t, f)
	x := githubtest.PullRequestComment(t)
	a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "completed", Branch: "aetherium/pr-1"}}
	a.link.DraftPR = true
	d := delivery(t, "issue_comment", x, "@aetherium make the tests pass")
	var saves int
	d.Checkpoint = func(_ context.Context, p []byte) error {
		saves++
		d.Progress = append([]byte(nil), p...) // as the store keeps it for the next attempt
		return nil
	}
	f.FailNext("POST", "/reactions", 500, 1)
	f.FailNext("POST", "/comments", 502, 1) // the tracking comment
	f.FailNext("POST", "/check-runs", 429, 1)
	f.FailNext("POST", "/pulls", 500, 1)        // the draft pull request: reported as not opened, then retried? no: once
	f.FailNext("PATCH", "/check-runs/", 500, 2) // the final check run edit (the first PATCH of a check run is the last)
	attempts := 0
	for {
		attempts++
		err := g.Handle(t.Context(), d, a)
		if err == nil {
			break
		}
		if attempts == 10 {
			t.Fatalf("still failing after %d attempts: %v", attempts, err)
		}
	}
	repo := "/repos/" + githubtest.Get(x, "repository", "full_name").(string)
	count := func(method, part string) int {
		n := 0
		for _, r := range f.Requests() {
			if r.Method == method && strings.Contains(r.Path, repo) && strings.HasSuffix(r.Path, part) {
				n++
			}
		}
		return n
	}
	if len(a.runs) != 1 {
		t.Fatalf("%d runs started over %d attempts, want 1", len(a.runs), attempts)
	}
	for what, n := range map[string]int{"reactions": count("POST", "/reactions"),
		"tracking comments": count("POST", "/comments"), "check runs": count("POST", "/check-runs")} {
		if n != 1 {
			t.Errorf("%d %s over %d attempts, want 1", n, what, attempts)
		}
	}
	if n := count("POST", "/pulls"); n != 1 || !strings.Contains(lastCommentOf(f), "Draft pull request: https://") {
		t.Errorf("%d draft pull requests, tracking comment %q; want one, linked", n, lastCommentOf(f))
	}
	if f.Failed() != 6 || attempts < 6 {
		t.Fatalf("%d requests failed over %d attempts; the faults were not all met", f.Failed(), attempts)
	}
	var completed bool
	var lastComment string
	for _, r := range f.Find("PATCH", "") {
		if strings.Contains(r.Path, "/check-runs/") && r.Body["conclusion"] == "success" {
			completed = true
		}
		if strings.Contains(r.Path, "/issues/comments/") {
			lastComment = r.Body["body"].(string)
		}
	}
	if !completed || !strings.Contains(lastComment, "completed") {
		t.Fatalf("final report: check run completed %v, tracking comment %q", completed, lastComment)
	}
	t.Logf("%d attempts, %d progress saves, %d failed requests", attempts, saves, f.Failed())
}

// lastCommentOf is the last body the tracking comment was edited to.
func lastCommentOf(f *githubtest.Fake) string {
	var last string
	for _, r := range f.Find("PATCH", "") {
		if strings.Contains(r.Path, "/issues/comments/") {
			last, _ = r.Body["body"].(string)
		}
	}
	return last
}

func TestAgentRunOnPullRequestComment(t *testing.T) {
	f := githubtest.NewFake(t)
	g, _ := newGitHub(t, f)
	x := githubtest.PullRequestComment(t)
	a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "failed", Error: "agent crashed: stderr tail"}}
	a.link.DraftPR = true
	if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "@aetherium fix the tests"), a); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if len(a.runs) != 1 || a.runs[0].Prompt != "fix the tests" || a.runs[0].Ref != "feature" || a.runs[0].Branch == "" {
		t.Fatalf("runs started = %+v (want the prompt at the PR's head, pushed to a branch)", a.runs)
	}
	var failed bool
	for _, p := range f.Find("PATCH", "") {
		if strings.Contains(p.Path, "/check-runs/") && p.Body["conclusion"] == "failure" &&
			strings.Contains(p.Body["output"].(map[string]any)["summary"].(string), "stderr tail") {
			failed = true
		}
	}
	if !failed {
		t.Errorf("the failure and its stderr were not reported on the check run")
	}
}

func TestReviewComment(t *testing.T) {
	f := githubtest.NewFake(t)
	g, _ := newGitHub(t, f)
	x := githubtest.Example(t, "pull_request_review_comment", "created", nil)
	code := 0
	a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "completed", ExitCode: &code}}
	if err := g.Handle(t.Context(), delivery(t, "pull_request_review_comment", x, "/aetherium run make test"), a); err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if len(a.commands) != 1 || a.commands[0].Ref != githubtest.Get(x, "pull_request", "head", "ref") {
		t.Fatalf("commands = %+v, want one at the PR's head", a.commands)
	}
	if n := len(f.Find("POST", "/pulls/comments/"+itoa(int64(githubtest.Get(x, "comment", "id").(float64)))+"/reactions")); n != 1 {
		t.Errorf("%d reactions on the review comment, want 1", n)
	}
}

func TestRefusals(t *testing.T) {
	x := githubtest.Example(t, "issue_comment", "created", nil)
	t.Run("Unlinked", func(t *testing.T) {
		f := githubtest.NewFake(t)
		g, _ := newGitHub(t, f)
		a := &fakeActions{}
		if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "/aetherium run echo hi"), a); err != nil {
			t.Fatal(err)
		}
		posts := f.Find("POST", "/comments")
		if len(posts) != 1 || !strings.Contains(posts[0].Body["body"].(string), "aetherium integration link github github.com/") {
			t.Fatalf("comments = %+v, want one saying how to link", posts)
		}
		if len(a.commands) != 0 {
			t.Fatal("an unlinked repository started work")
		}
	})
	t.Run("ReadPermission", func(t *testing.T) {
		f := githubtest.NewFake(t)
		f.Permission = "read"
		g, _ := newGitHub(t, f)
		a := &fakeActions{link: linkFor(x)}
		if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "/aetherium run echo hi"), a); err != nil {
			t.Fatal(err)
		}
		if len(a.commands) != 0 || len(f.Find("POST", "/reactions")) != 0 {
			t.Fatal("a reader's comment started work")
		}
	})
	t.Run("NoTrigger", func(t *testing.T) {
		f := githubtest.NewFake(t)
		g, _ := newGitHub(t, f)
		a := &fakeActions{link: linkFor(x)}
		if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "just a comment"), a); err != nil {
			t.Fatal(err)
		}
		if len(f.Requests()) != 0 {
			t.Fatalf("a comment without a trigger made %d API calls", len(f.Requests()))
		}
	})
	t.Run("CommandNotInTheAllowList", func(t *testing.T) {
		f := githubtest.NewFake(t)
		g, _ := newGitHub(t, f)
		a := &fakeActions{link: linkFor(x)}
		a.link.AllowedCommands = []string{"make test"}
		if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "/aetherium run make test && curl evil"), a); err != nil {
			t.Fatal(err)
		}
		posts := f.Find("POST", "/comments")
		if len(a.commands) != 0 || len(posts) != 1 || !strings.Contains(posts[0].Body["body"].(string), "`make test`") {
			t.Fatalf("commands %v, comments %+v: want none run and a refusal naming the allowed command", a.commands, posts)
		}
		if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "/aetherium run make test"), a); err != nil {
			t.Fatal(err)
		}
		if len(a.commands) != 1 || a.commands[0].Command != "make test" {
			t.Fatalf("the allowed command: %v", a.commands)
		}
	})
	t.Run("CommandsNotAllowed", func(t *testing.T) {
		f := githubtest.NewFake(t)
		g, _ := newGitHub(t, f)
		a := &fakeActions{link: linkFor(x)}
		a.link.Commands = false
		if err := g.Handle(t.Context(), delivery(t, "issue_comment", x, "/aetherium run echo hi"), a); err != nil {
			t.Fatal(err)
		}
		if len(a.commands) != 0 || len(f.Find("POST", "/comments")) != 1 {
			t.Fatal("a link without commands ran one, or said nothing")
		}
	})
}

// TestPullRequestCommand: a link's pull request command runs on a pushed pull request (the package's synchronize
// example) at its head, reported by a check run and nothing else; a fork's head is checked out from the fork;
// other actions, and links without a command, do nothing and call nobody.
func TestPullRequestCommand(t *testing.T) {
	code := 0
	for _, action := range []string{"opened", "reopened", "synchronize"} {
		t.Run(action, func(t *testing.T) {
			f := githubtest.NewFake(t)
			g, _ := newGitHub(t, f)
			x := githubtest.Example(t, "pull_request", action, nil)
			a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "completed", ExitCode: &code}}
			a.link.PRCommand = "make test"
			if err := g.Handle(t.Context(), delivery(t, "pull_request", x, ""), a); err != nil {
				t.Fatalf("Handle: %v", err)
			}
			head := githubtest.Get(x, "pull_request", "head").(map[string]any)
			if len(a.commands) != 1 || a.commands[0].Command != "make test" || a.commands[0].Ref != head["ref"] ||
				a.commands[0].RepoURL != githubtest.Get(x, "repository", "clone_url") {
				t.Fatalf("commands = %+v, want make test at the head %v", a.commands, head["ref"])
			}
			checks := f.Find("POST", "/check-runs")
			if len(checks) != 1 || checks[0].Body["head_sha"] != head["sha"] {
				t.Fatalf("check runs = %+v, want one on the head %v", checks, head["sha"])
			}
			if n := len(f.Find("POST", "/comments")) + len(f.Find("POST", "/reactions")); n != 0 {
				t.Fatalf("%d comments or reactions for a pushed pull request, want none", n)
			}
			sender := githubtest.Get(x, "sender", "login").(string)
			if n := len(f.Find("GET", "/collaborators/"+sender+"/permission")); n != 1 {
				t.Fatalf("%d permission checks of the sender, want 1", n)
			}
		})
	}
	t.Run("Fork", func(t *testing.T) {
		f := githubtest.NewFake(t)
		g, _ := newGitHub(t, f)
		x := githubtest.Example(t, "pull_request", "synchronize", nil)
		// Derived: the head is a fork's.
		repo := githubtest.Get(x, "pull_request", "head", "repo").(map[string]any)
		repo["full_name"], repo["clone_url"] = "someone/Hello-World", "https://github.com/someone/Hello-World.git"
		a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "completed", ExitCode: &code}}
		a.link.PRCommand = "make test"
		if err := g.Handle(t.Context(), delivery(t, "pull_request", x, ""), a); err != nil {
			t.Fatal(err)
		}
		if len(a.commands) != 1 || a.commands[0].RepoURL != "https://github.com/someone/Hello-World.git" {
			t.Fatalf("commands = %+v, want the fork's head checked out", a.commands)
		}
	})
	for name, c := range map[string]struct {
		action, command string
		linked          bool
	}{"NoCommand": {"synchronize", "", true}, "Unlinked": {"opened", "make test", false}, "Closed": {"closed", "make test", true}} {
		t.Run(name, func(t *testing.T) {
			f := githubtest.NewFake(t)
			g, _ := newGitHub(t, f)
			x := githubtest.Example(t, "pull_request", c.action, nil)
			a := &fakeActions{}
			if c.linked {
				a.link = linkFor(x)
				a.link.PRCommand = c.command
			}
			if err := g.Handle(t.Context(), delivery(t, "pull_request", x, ""), a); err != nil {
				t.Fatal(err)
			}
			if len(a.commands) != 0 || len(f.Requests()) != 0 {
				t.Fatalf("%d commands and %d GitHub calls, want none", len(a.commands), len(f.Requests()))
			}
		})
	}
}

func TestCheckRunRerequested(t *testing.T) {
	f := githubtest.NewFake(t)
	g, _ := newGitHub(t, f)
	x := githubtest.Example(t, "check_run", "rerequested", nil)
	// Derived: the check run is one of ours (its external_id is what the integration writes).
	x["check_run"].(map[string]any)["external_id"] = `{"k":"command","t":"echo again","r":"main"}`
	code := 0
	a := &fakeActions{link: linkFor(x), outcome: integrations.Outcome{Status: "completed", ExitCode: &code}}
	raw, _ := json.Marshal(x)
	if err := g.Handle(t.Context(), &integrations.Delivery{Event: "check_run", Body: raw}, a); err != nil {
		t.Fatal(err)
	}
	if len(a.commands) != 1 || a.commands[0].Command != "echo again" {
		t.Fatalf("commands = %+v, want the check run's command again", a.commands)
	}
}

func checkJWT(t *testing.T, auth string, pub *rsa.PublicKey, iss string) {
	t.Helper()
	jwt, ok := strings.CutPrefix(auth, "Bearer ")
	parts := strings.Split(jwt, ".")
	if !ok || len(parts) != 3 {
		t.Fatalf("token request authorised with %q, want Bearer <jwt>", auth)
	}
	sum := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	sig, _ := base64.RawURLEncoding.DecodeString(parts[2])
	if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, sum[:], sig); err != nil {
		t.Fatalf("JWT signature: %v", err)
	}
	var claims struct {
		Iat, Exp int64
		Iss      string
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	_ = json.Unmarshal(b, &claims)
	now := time.Now().Unix()
	if claims.Iss != iss || now-claims.Iat < 50 || now-claims.Iat > 70 || claims.Exp-now > 600 || claims.Exp <= now {
		t.Fatalf("JWT claims %+v: want iss %s, iat 60 s ago, exp within 10 min", claims, iss)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
