package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations/github"
	"github.com/aetherium/aetherium/internal/integrations/github/githubtest"
	"github.com/aetherium/aetherium/pkg/client"
)

// TestGitHubCommandEndToEnd: a signed issue_comment "/aetherium run echo hi" (the package's issue_comment created
// example, with an installation from its other payloads) on a linked repository runs in a real VM (Docker), and
// the fake GitHub, which validates every request against GitHub's OpenAPI description, receives the reaction,
// the tracking comment with "hi" and exit code 0, and a completed check run. The same delivery again does
// nothing; a bad signature is 401 and records nothing; an unknown integration is 404.
func TestGitHubCommandEndToEnd(t *testing.T) {
	requireDocker(t)
	fake := githubtest.NewFake(t)
	const secret = "e2e webhook secret"
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	dataDir := t.TempDir()
	keyFile := filepath.Join(dataDir, "github-app.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY",
		Bytes: x509.MarshalPKCS1PrivateKey(key)}), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freePort(t)
	workerID := "e2e-github"
	removeWorkerContainers(t, workerID)
	p := start(t, "serve", serveEnv(dataDir, addr, "AETHERIUM_WORKER_ID="+workerID,
		"AETHERIUM_GITHUB_WEBHOOK_SECRET="+secret, "AETHERIUM_GITHUB_APP_ID=12345",
		"AETHERIUM_GITHUB_PRIVATE_KEY_FILE="+keyFile, "AETHERIUM_GITHUB_API_URL="+fake.URL), "serve")
	waitHTTP(t, addr, p)
	c := newClient(t, addr, readLine(t, filepath.Join(dataDir, "admin-api-key")))
	waitReady(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	x := githubtest.Example(t, "issue_comment", "created", nil)
	x["comment"].(map[string]any)["body"] = "/aetherium run echo hi"
	x["installation"] = githubtest.Installation(t)
	body, _ := json.Marshal(x)
	source := "github.com/" + githubtest.Get(x, "repository", "full_name").(string)
	if secretInLog := strings.Contains(p.out.String(), secret); secretInLog {
		t.Fatal("serve logged the webhook secret")
	}

	send := func(integration, delivery, sig string) (int, map[string]any) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+addr+"/api/v1/webhooks/"+integration, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GitHub-Event", "issue_comment")
		req.Header.Set("X-GitHub-Delivery", delivery)
		if sig != "" {
			req.Header.Set("X-Hub-Signature-256", sig)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	if code, _ := send("gitlab", "d-0", github.Sign(secret, body)); code != http.StatusNotFound {
		t.Fatalf("unknown integration: %d, want 404", code)
	}
	if _, err := c.CreateIntegrationLink(ctx, client.CreateIntegrationLinkRequest{Integration: "github", Source: source}); err != nil {
		t.Fatalf("link %s: %v", source, err)
	}
	const delivery = "72d3162e-cc78-11e3-81ab-4c9367dc0958"
	for _, sig := range []string{"", github.Sign("wrong secret", body)} {
		if code, _ := send("github", delivery, sig); code != http.StatusUnauthorized {
			t.Fatalf("signature %q: %d, want 401", sig, code)
		}
	}
	// Nothing was recorded: the same delivery id, now signed, is new.
	if code, m := send("github", delivery, github.Sign(secret, body)); code != http.StatusAccepted {
		t.Fatalf("signed delivery: %d %v, want 202", code, m)
	}

	var summary, tracking string
	for ctx.Err() == nil && summary == "" {
		for _, r := range fake.Find("PATCH", "") {
			if strings.Contains(r.Path, "/check-runs/") && r.Body["status"] == "completed" {
				summary = r.Body["output"].(map[string]any)["summary"].(string)
			}
			if strings.Contains(r.Path, "/issues/comments/") {
				tracking = r.Body["body"].(string)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if summary == "" {
		t.Fatalf("no completed check run; the fake received %+v\nserve:\n%s", fake.Requests(), p.out.String())
	}
	if !strings.Contains(tracking, "hi") || !strings.Contains(tracking, "Exit code: 0") {
		t.Fatalf("tracking comment = %q, want the output hi and exit code 0", tracking)
	}
	if n := len(fake.Find("POST", "/reactions")); n != 1 {
		t.Fatalf("%d reactions, want 1", n)
	}
	if n := len(fake.Find("POST", "/comments")); n != 1 {
		t.Fatalf("%d comments posted, want the one tracking comment", n)
	}
	if n := len(fake.Find("POST", "/check-runs")); n != 1 {
		t.Fatalf("%d check runs, want 1", n)
	}
	before := len(fake.Requests())
	code, m := send("github", delivery, github.Sign(secret, body))
	if code != http.StatusOK || m["duplicate"] != true {
		t.Fatalf("redelivery: %d %v, want 200 duplicate", code, m)
	}
	if after := len(fake.Requests()); after != before {
		t.Fatalf("the redelivery made %d GitHub calls", after-before)
	}
	if strings.Contains(p.out.String(), secret) {
		t.Fatal("serve logged the webhook secret")
	}
	for _, r := range fake.Requests() {
		if tok := strings.TrimPrefix(r.Auth, "token "); tok != r.Auth && strings.Contains(p.out.String(), tok) {
			t.Fatal("serve logged an installation token")
		}
	}
}
