package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/github"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
)

const githubTestSecret = "It's a Secret to Everybody"

// issueCommentCreated is an issue_comment created delivery as a GitHub App receives it (the fields of GitHub's
// payload that matter here, and a few beside them).
func issueCommentCreated(commentID int) []byte {
	user := map[string]any{"login": "octocat", "id": 1, "node_id": "MDQ6VXNlcjE=", "type": "User", "site_admin": false}
	b, _ := json.Marshal(map[string]any{
		"action": "created",
		"issue": map[string]any{"url": "https://api.github.com/repos/o/r/issues/1", "number": 1, "title": "Found a bug",
			"user": user, "state": "open", "comments": commentID, "author_association": "OWNER"},
		"comment": map[string]any{"id": commentID, "node_id": "MDEyOklzc3VlQ29tbWVudA==", "user": user,
			"html_url": fmt.Sprintf("https://github.com/o/r/issues/1#issuecomment-%d", commentID),
			"body":     "/aetherium run echo hi", "author_association": "OWNER",
			"created_at": "2026-01-02T03:04:05Z", "updated_at": "2026-01-02T03:04:05Z"},
		"repository": map[string]any{"id": 1296269, "name": "r", "full_name": "o/r", "private": false, "owner": user,
			"html_url": "https://github.com/o/r", "clone_url": "https://github.com/o/r.git", "default_branch": "main"},
		"sender":       user,
		"installation": map[string]any{"id": 42, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9uNDI="},
	})
	return b
}

// TestGitHubWebhookConcurrentRedeliveries sends 100 signed GitHub deliveries at once, 50 delivery ids each twice:
// every answer is 202 or 200 (never a 5xx), each id is recorded once with one webhook:process task, and the
// second of each pair is answered 200 as a duplicate.
func TestGitHubWebhookConcurrentRedeliveries(t *testing.T) {
	g, err := github.New(github.Config{WebhookSecret: githubTestSecret})
	if err != nil {
		t.Fatal(err)
	}
	onStores(t, func(c *Config) { c.Integrations = integrations.NewRegistry(g) }, testGitHubWebhookConcurrentRedeliveries)
}

func testGitHubWebhookConcurrentRedeliveries(t *testing.T, e *testEnv) {
	const ids = 50
	type answer struct {
		delivery string
		status   int
		body     map[string]any
		err      error
	}
	answers := make(chan answer, 2*ids)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 2 * ids {
		delivery := fmt.Sprintf("72d3162e-cc78-11e3-81ab-%012d", i%ids)
		body := issueCommentCreated(1000 + i%ids)
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, err := http.NewRequest(http.MethodPost, e.srv.URL+"/api/v1/webhooks/github", bytes.NewReader(body))
			if err != nil {
				answers <- answer{delivery: delivery, err: err}
				return
			}
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("User-Agent", "GitHub-Hookshot/044aadd")
			req.Header.Set("X-GitHub-Event", "issue_comment")
			req.Header.Set("X-GitHub-Delivery", delivery)
			req.Header.Set("X-GitHub-Hook-ID", "292430182")
			req.Header.Set("X-Hub-Signature-256", github.Sign(githubTestSecret, body))
			<-start
			res, err := e.srv.Client().Do(req)
			if err != nil {
				answers <- answer{delivery: delivery, err: err}
				return
			}
			defer res.Body.Close()
			raw, _ := io.ReadAll(res.Body)
			a := answer{delivery: delivery, status: res.StatusCode}
			if err := json.Unmarshal(raw, &a.body); err != nil {
				a.err = fmt.Errorf("answer %q: %w", raw, err)
			}
			answers <- a
		}()
	}
	close(start)
	wg.Wait()
	close(answers)

	accepted := map[string]string{} // delivery id → the record's id of its 202
	duplicates := map[string]int{}
	for a := range answers {
		switch {
		case a.err != nil:
			t.Errorf("delivery %s: %v", a.delivery, a.err)
		case a.status == http.StatusAccepted:
			if _, twice := accepted[a.delivery]; twice {
				t.Errorf("delivery %s accepted (202) twice", a.delivery)
			}
			id, _ := a.body["id"].(string)
			if id == "" || a.body["delivery_id"] != a.delivery {
				t.Errorf("delivery %s: 202 %v, want its delivery id and record id", a.delivery, a.body)
			}
			accepted[a.delivery] = id
		case a.status == http.StatusOK:
			if a.body["duplicate"] != true || a.body["delivery_id"] != a.delivery {
				t.Errorf("delivery %s: 200 %v, want a duplicate", a.delivery, a.body)
			}
			duplicates[a.delivery]++
		default:
			t.Errorf("delivery %s: answered %d %v, want 202 or 200", a.delivery, a.status, a.body)
		}
	}
	if len(accepted) != ids || len(duplicates) != ids {
		t.Fatalf("%d ids accepted, %d answered as duplicates; want %d of each", len(accepted), len(duplicates), ids)
	}
	for d, n := range duplicates {
		if n != 1 {
			t.Errorf("delivery %s answered as a duplicate %d times, want once", d, n)
		}
	}

	// The store: one webhook:process task per delivery, each naming a distinct record of a distinct delivery id,
	// the record of that id's 202.
	tasks, err := e.st.Tasks().List(t.Context(), store.TaskFilter{OwnerID: task.WebhookOwner, Page: store.Page{Limit: 500}})
	if err != nil {
		t.Fatal(err)
	}
	if len(tasks) != ids {
		t.Fatalf("%d tasks queued, want %d", len(tasks), ids)
	}
	recorded := map[string]string{} // delivery id → record id
	for _, tk := range tasks {
		var p task.WebhookPayload
		if tk.Type != model.TaskWebhookProcess || json.Unmarshal(tk.Payload, &p) != nil || p.DeliveryID == "" {
			t.Fatalf("task %+v is not a webhook:process task of a delivery", tk)
		}
		d, err := e.st.Webhooks().Get(t.Context(), p.DeliveryID)
		if err != nil {
			t.Fatalf("task %s names record %s: %v", tk.ID, p.DeliveryID, err)
		}
		if prev, twice := recorded[d.DeliveryID]; twice {
			t.Fatalf("delivery %s has two tasks (records %s and %s)", d.DeliveryID, prev, d.ID)
		}
		recorded[d.DeliveryID] = d.ID
		if d.Integration != "github" || d.Event != "issue_comment" || d.Status != store.DeliveryReceived {
			t.Errorf("record %s: %s/%s %s", d.ID, d.Integration, d.Event, d.Status)
		}
		if accepted[d.DeliveryID] != d.ID {
			t.Errorf("delivery %s: recorded as %s, its 202 said %s", d.DeliveryID, d.ID, accepted[d.DeliveryID])
		}
	}
	// And no other record of these ids: recording each again finds the one that is there.
	for delivery, id := range accepted {
		probe := &store.WebhookDelivery{Integration: "github", DeliveryID: delivery, Event: "issue_comment",
			Header: http.Header{}, Body: []byte("{}"), ReceivedAt: time.Now().UTC()}
		created, err := e.st.Webhooks().Record(t.Context(), probe)
		if err != nil || created || probe.ID != id {
			t.Errorf("delivery %s recorded again: created %v, record %s, %v; want the existing record %s", delivery, created, probe.ID, err, id)
		}
	}
}
