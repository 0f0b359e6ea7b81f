package github_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/github"
	"github.com/aetherium/aetherium/internal/integrations/github/githubtest"
	"github.com/aetherium/aetherium/internal/integrations/integrationstest"
)

// nowhere is a GitHub that is not on the network: it hands out an installation token and says the author may
// write, and answers everything else 404.
var nowhere = integrationstest.Offline(func(r *http.Request) (int, string) {
	switch {
	case strings.HasSuffix(r.URL.Path, "/access_tokens"):
		return http.StatusCreated, `{"token":"ghs_fuzz","expires_at":"` + time.Now().Add(time.Hour).UTC().Format(time.RFC3339) + `"}`
	case strings.HasSuffix(r.URL.Path, "/permission"):
		return http.StatusOK, `{"permission":"write"}`
	}
	return http.StatusNotFound, `{"message":"Not Found"}`
})

// The shapes of GitHub's deliveries that the integration reads, small and hand-made (the package's real examples
// are added when AETHERIUM_TEST_OCTOKIT_DIR names them).
const (
	fuzzRepo = `"repository":{"id":1,"name":"r","full_name":"o/r","html_url":"https://github.com/o/r",` +
		`"clone_url":"https://github.com/o/r.git","default_branch":"main","owner":{"login":"o","type":"User"}}`
	fuzzUser = `{"login":"octocat","id":1,"type":"User"}`
	fuzzInst = `"installation":{"id":42,"node_id":"MDIz"}`
)

var fuzzSeeds = []struct{ event, body string }{
	{"issue_comment", `{"action":"created","issue":{"number":1,"title":"t","user":` + fuzzUser + `},"comment":{"id":11,` +
		`"body":"please\n/aetherium run echo hi","user":` + fuzzUser + `,"html_url":"https://github.com/o/r/issues/1#issuecomment-11"},` +
		fuzzRepo + `,"sender":` + fuzzUser + `,` + fuzzInst + `}`},
	{"issue_comment", `{"action":"created","issue":{"number":2,"pull_request":{"url":"https://api.github.com/repos/o/r/pulls/2",` +
		`"html_url":"https://github.com/o/r/pull/2","merged_at":null}},"comment":{"id":12,"body":"@aetherium fix the tests",` +
		`"user":` + fuzzUser + `},` + fuzzRepo + `,"sender":` + fuzzUser + `,` + fuzzInst + `}`},
	{"issue_comment", `{"action":"edited","issue":{"number":1},"comment":{"id":13,"body":"/aetherium run true","user":` +
		fuzzUser + `},` + fuzzRepo + `,` + fuzzInst + `}`},
	{"pull_request_review_comment", `{"action":"created","pull_request":{"number":3,"head":{"ref":"feature","sha":"ec26c3e5"},` +
		`"base":{"ref":"main"}},"comment":{"id":14,"body":"/aetherium run make test","user":{"login":"bot[bot]","type":"Bot"}},` +
		fuzzRepo + `,"sender":` + fuzzUser + `,` + fuzzInst + `}`},
	{"check_run", `{"action":"rerequested","check_run":{"id":5,"head_sha":"6dcb09b5","external_id":"{\"k\":\"command\",` +
		`\"t\":\"echo again\",\"i\":1,\"r\":\"main\"}"},` + fuzzRepo + `,"sender":` + fuzzUser + `,` + fuzzInst + `}`},
	{"check_run", `{"action":"rerequested","check_run":{"id":6,"head_sha":"6dcb","external_id":"not ours"},` + fuzzRepo + `,` + fuzzInst + `}`},
	{"ping", `{"zen":"Keep it logically awesome.","hook_id":1,"hook":{"type":"App","events":["issue_comment"]}}`},
	{"push", `{"ref":"refs/heads/main",` + fuzzRepo + `,` + fuzzInst + `}`},
	{"issue_comment", `{"action":"created","comment":null,"repository":null}`},
	{"issue_comment", `[]`},
	{"", `{}`},
}

// FuzzGitHubWebhook sends any body, signed with the webhook secret, through the route's steps: Verify accepts it,
// Accept says what it is or refuses it, and Handle (against a GitHub that is not on the network and Actions that
// start nothing) never panics, returns within its context's time and fails only with an error that says
// something. The same body under a wrong signature is refused by Verify.
func FuzzGitHubWebhook(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add(s.event, []byte(s.body))
	}
	if os.Getenv("AETHERIUM_TEST_OCTOKIT_DIR") != "" {
		for _, ev := range []string{"issue_comment", "pull_request_review_comment", "check_run", "ping"} {
			for _, x := range githubtest.Examples(f, ev) {
				if x["installation"] == nil {
					x["installation"] = map[string]any{"id": 42}
				}
				b, _ := json.Marshal(x)
				f.Add(ev, b)
			}
		}
	}
	key, err := rsa.GenerateKey(rand.Reader, 1024) // a test key: small, so each delivery's App JWT is cheap
	if err != nil {
		f.Fatal(err)
	}
	quiet := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, event string, body []byte) {
		g, err := github.New(github.Config{WebhookSecret: secret, AppID: "1", PrivateKey: key, APIURL: "https://github.invalid/api/v3",
			HTTPClient: &http.Client{Transport: nowhere}, Logger: quiet, CommandTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		header := func(sig string) http.Header {
			h := http.Header{}
			h.Set("X-GitHub-Event", event)
			h.Set("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958")
			h.Set("X-Hub-Signature-256", sig)
			return h
		}
		ctx := context.Background()
		for _, sig := range []string{github.Sign("another secret", body), github.Sign(secret, append(bytes.Clone(body), ' ')), ""} {
			if err := g.Verify(ctx, &integrations.Webhook{Header: header(sig), Body: body}); !errors.Is(err, integrations.ErrBadSignature) {
				t.Fatalf("wrong signature %q: Verify = %v, want ErrBadSignature", sig, err)
			}
		}
		hook := &integrations.Webhook{Header: header(github.Sign(secret, body)), Body: body, ReceivedAt: time.Now()}
		if err := g.Verify(ctx, hook); err != nil {
			t.Fatalf("Verify of a signed body: %v", err)
		}
		acc, err := g.Accept(ctx, hook)
		if !integrationstest.Accepted(t, acc, err, false) {
			return
		}
		a := &fakeActions{link: &integrations.Link{OwnerID: "alice", Integration: "github", Source: "github.com/o/r",
			Commands: true, Runs: true, DraftPR: true}, outcome: integrations.Outcome{Status: "completed"}}
		integrationstest.HandleWithin(t, func(ctx context.Context) error {
			return g.Handle(ctx, &integrations.Delivery{ID: "rec-1", Integration: "github", DeliveryID: acc.DeliveryID,
				Event: acc.Event, Header: hook.Header, Body: body, ReceivedAt: hook.ReceivedAt, Attempts: 1}, a)
		})
	})
}
