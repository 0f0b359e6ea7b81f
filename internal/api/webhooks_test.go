package api

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/pkg/client"
)

// signedHook is an integration of the test: X-Sig is the hex HMAC-SHA256 of the body, X-Id the delivery id, and
// X-Kind "ping" asks for an immediate answer.
type signedHook struct{ max int64 }

func (signedHook) Name() string                                            { return "test" }
func (h signedHook) MaxBodyBytes() int64                                   { return h.max }
func (signedHook) Notify(context.Context, integrations.Notification) error { return nil }
func (signedHook) Health(context.Context) error                            { return nil }
func (signedHook) Handle(context.Context, *integrations.Delivery, integrations.Actions) error {
	return nil
}

func hookSig(body []byte) string {
	m := hmac.New(sha256.New, []byte("k"))
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

func (signedHook) Verify(_ context.Context, w *integrations.Webhook) error {
	got, _ := hex.DecodeString(w.Header.Get("X-Sig"))
	want, _ := hex.DecodeString(hookSig(w.Body))
	if len(got) == 0 || !hmac.Equal(got, want) {
		return integrations.ErrBadSignature
	}
	return nil
}

func (signedHook) Accept(_ context.Context, w *integrations.Webhook) (*integrations.Acceptance, error) {
	if w.Header.Get("X-Kind") == "ping" {
		return &integrations.Acceptance{Reply: &integrations.Reply{Status: 200, Body: []byte(`{"pong":true}`)}}, nil
	}
	if !strings.HasPrefix(string(w.Body), "{") {
		return nil, errors.New("not an event")
	}
	return &integrations.Acceptance{DeliveryID: w.Header.Get("X-Id"), Event: "thing"}, nil
}

func webhookEnv(t *testing.T) *testEnv {
	return newEnv(t, func(c *Config) { c.Integrations = integrations.NewRegistry(signedHook{max: 64}) })
}

func (e *testEnv) hook(name, id, sig, kind string, body []byte) response {
	h := map[string]string{"X-Id": id, "X-Kind": kind}
	if sig != "" {
		h["X-Sig"] = sig
	}
	return e.do(req{method: "POST", path: "/api/v1/webhooks/" + name, body: bytes.NewReader(body), header: h})
}

func (e *testEnv) webhookTasks(t *testing.T) []*model.Task {
	t.Helper()
	ts, err := e.st.Tasks().List(t.Context(), store.TaskFilter{OwnerID: task.WebhookOwner})
	if err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestWebhookRoute(t *testing.T) {
	e := webhookEnv(t)
	body := []byte(`{"a":1}`)
	if r := e.hook("nope", "d1", hookSig(body), "", body); r.status != http.StatusNotFound {
		t.Fatalf("unknown integration: %d %s", r.status, r.body)
	}
	for _, sig := range []string{"", hookSig([]byte("other")), "zz"} {
		if r := e.hook("test", "d1", sig, "", body); r.status != http.StatusUnauthorized {
			t.Fatalf("signature %q: %d %s, want 401", sig, r.status, r.body)
		}
	}
	if n := len(e.webhookTasks(t)); n != 0 {
		t.Fatalf("bad signatures queued %d tasks", n)
	}
	big := []byte(`{"a":"` + strings.Repeat("x", 64) + `"}`)
	if r := e.hook("test", "d2", hookSig(big), "", big); r.status != http.StatusRequestEntityTooLarge {
		t.Fatalf("body over the limit: %d %s, want 413", r.status, r.body)
	}
	if r := e.hook("test", "d3", hookSig([]byte("x")), "", []byte("x")); r.status != http.StatusBadRequest {
		t.Fatalf("body Accept refuses: %d %s, want 400", r.status, r.body)
	}
	if r := e.hook("test", "p", hookSig(body), "ping", body); r.status != 200 || string(r.body) != `{"pong":true}` {
		t.Fatalf("ping: %d %s", r.status, r.body)
	}
	if n := len(e.webhookTasks(t)); n != 0 {
		t.Fatalf("refused deliveries and pings queued %d tasks", n)
	}
	// An API key is not needed, and not a substitute for the signature.
	r := e.hook("test", "d1", hookSig(body), "", body)
	if r.status != http.StatusAccepted {
		t.Fatalf("signed delivery: %d %s, want 202", r.status, r.body)
	}
	ts := e.webhookTasks(t)
	if len(ts) != 1 || ts[0].Type != model.TaskWebhookProcess {
		t.Fatalf("tasks after one delivery = %+v", ts)
	}
	again := e.hook("test", "d1", hookSig(body), "", body)
	if again.status != http.StatusOK || !strings.Contains(string(again.body), `"duplicate":true`) {
		t.Fatalf("redelivery: %d %s, want 200 duplicate", again.status, again.body)
	}
	if n := len(e.webhookTasks(t)); n != 1 {
		t.Fatalf("the redelivery queued a task: %d tasks", n)
	}
	if r := e.do(req{method: "POST", path: "/api/v1/webhooks/test", key: e.keyA, body: bytes.NewReader(body),
		header: map[string]string{"X-Id": "d9"}}); r.status != http.StatusUnauthorized {
		t.Fatalf("API key without signature: %d, want 401", r.status)
	}
}

func TestIntegrationLinksRoutes(t *testing.T) {
	e := webhookEnv(t)
	r := e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"test","source":"github.com/o/r","draft_pr":true}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create: %d %s", r.status, r.body)
	}
	l := decodeAs[client.IntegrationLink](t, r)
	if !l.Commands || !l.Runs || !l.DraftPR || l.Source != "github.com/o/r" {
		t.Fatalf("created %+v, want commands and runs by default", l)
	}
	if r := e.call("POST", "/api/v1/integrations/links", e.keyB, `{"integration":"test","source":"github.com/o/r"}`); r.status != http.StatusConflict {
		t.Fatalf("another owner linking a linked source: %d %s, want 409", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"gitlab","source":"x"}`); r.status != http.StatusBadRequest {
		t.Fatalf("unknown integration: %d %s, want 400", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"test","source":"o/x","runs":true}`); r.status != 201 ||
		decodeAs[client.IntegrationLink](t, r).Commands {
		t.Fatalf("runs only: %d %s, want commands off", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"test","source":"o/pr","runs":true,"pr_command":"make test"}`); r.status != http.StatusUnprocessableEntity ||
		!strings.Contains(string(r.body), "pr_command") {
		t.Fatalf("a pull request command on a link without commands: %d %s, want 422 naming pr_command", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"test","source":"o/pr","pr_command":"`+strings.Repeat("x", 5000)+`"}`); r.status != http.StatusUnprocessableEntity ||
		!strings.Contains(string(r.body), "at most 4096") {
		t.Fatalf("a 5,000-byte pull request command: %d %s, want 422 with the limit", r.status, r.body)
	}
	if r := e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"test","source":"o/al","runs":true,"allowed_commands":["make test"]}`); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("allowed commands on a link without commands: %d %s, want 422", r.status, r.body)
	}
	r = e.call("POST", "/api/v1/integrations/links", e.keyA, `{"integration":"test","source":"o/pr","pr_command":"  make test ","allowed_commands":["make test","npm run *"]}`)
	if l := decodeAs[client.IntegrationLink](t, r); len(l.AllowedCommands) != 2 || l.AllowedCommands[1] != "npm run *" {
		t.Fatalf("allowed commands of the created link: %v", l.AllowedCommands)
	}
	if r.status != http.StatusCreated || decodeAs[client.IntegrationLink](t, r).PRCommand != "make test" {
		t.Fatalf("a link with a pull request command: %d %s", r.status, r.body)
	}
	if got := decodeAs[client.IntegrationLinkList](t, e.okCall("GET", "/api/v1/integrations/links", e.keyB, "")); len(got.Links) != 0 {
		t.Fatalf("owner B sees %d links of A", len(got.Links))
	}
	if got := decodeAs[client.IntegrationLinkList](t, e.okCall("GET", "/api/v1/integrations/links", e.keyA, "")); len(got.Links) != 3 {
		t.Fatalf("owner A lists %d links, want 3", len(got.Links))
	}
	if r := e.call("DELETE", "/api/v1/integrations/links/"+l.ID, e.keyB, ""); r.status != http.StatusNotFound {
		t.Fatalf("B deleting A's link: %d, want 404", r.status)
	}
	if r := e.call("DELETE", "/api/v1/integrations/links/"+l.ID, e.keyA, ""); r.status != http.StatusNoContent {
		t.Fatalf("delete: %d %s", r.status, r.body)
	}
	if r := e.call("GET", "/api/v1/integrations/links", "", ""); r.status != http.StatusUnauthorized {
		t.Fatalf("links without a key: %d, want 401", r.status)
	}
}

// BenchmarkWebhookRoute measures a signed delivery from request to 202 (verify, record, queue) on SQLite: what
// must stay well under the second GitHub and Slack allow.
func BenchmarkWebhookRoute(b *testing.B) {
	e := newEnv(b, func(c *Config) { c.Integrations = integrations.NewRegistry(signedHook{max: 1 << 20}) })
	body := []byte(`{"action":"created","comment":{"body":"/aetherium run echo hi"}}`)
	sig := hookSig(body)
	i := 0
	for b.Loop() {
		i++
		if r := e.hook("test", "d-"+strconv.Itoa(i), sig, "", body); r.status != http.StatusAccepted {
			b.Fatalf("%d %s", r.status, r.body)
		}
	}
}

// TestOrphanedDeliveryIsQueued: a delivery recorded by a gateway that stopped before queueing its task (simulated
// by recording it in the store alone) is queued by the sweep once it is old enough, exactly once, with the task its
// record names; a delivery that has its task, and a fresh one, are left alone.
func TestOrphanedDeliveryIsQueued(t *testing.T) {
	e := webhookEnv(t)
	ctx := t.Context()
	old := time.Now().Add(-10 * time.Minute)
	orphan := &store.WebhookDelivery{Integration: "test", DeliveryID: "orphan", Event: "e", Body: []byte(`{}`), ReceivedAt: old}
	fresh := &store.WebhookDelivery{Integration: "test", DeliveryID: "fresh", Event: "e", Body: []byte(`{}`), ReceivedAt: time.Now()}
	for _, d := range []*store.WebhookDelivery{orphan, fresh} {
		if _, err := e.st.Webhooks().Record(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	queued := &store.WebhookDelivery{Integration: "test", DeliveryID: "queued", Event: "e", Body: []byte(`{}`), ReceivedAt: old}
	if dup, err := e.svc.RecordWebhook(ctx, queued); err != nil || dup {
		t.Fatalf("RecordWebhook = %v, %v", dup, err)
	}
	if n := len(e.webhookTasks(t)); n != 1 {
		t.Fatalf("%d webhook tasks before the sweep, want 1", n)
	}
	n, err := e.svc.RequeueOrphanedWebhooks(ctx, 2*time.Minute)
	if err != nil || n != 1 {
		t.Fatalf("sweep queued %d (%v), want 1", n, err)
	}
	tk, err := e.st.Tasks().Get(ctx, orphan.ID)
	if err != nil || tk.Type != model.TaskWebhookProcess || !strings.Contains(string(tk.Payload), orphan.ID) {
		t.Fatalf("the orphan's task: %+v %v", tk, err)
	}
	if n, err := e.svc.RequeueOrphanedWebhooks(ctx, 2*time.Minute); err != nil || n != 0 {
		t.Fatalf("second sweep queued %d (%v), want 0", n, err)
	}
	if n := len(e.webhookTasks(t)); n != 2 {
		t.Fatalf("%d webhook tasks after the sweeps, want 2 (the fresh delivery is not old enough)", n)
	}
}
