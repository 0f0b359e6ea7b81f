package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/discord"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/pkg/client"
)

func TestNotificationRoutes(t *testing.T) { onStores(t, nil, testNotificationRoutes) }

func testNotificationRoutes(t *testing.T, e *testEnv) {
	r := e.call("POST", "/api/v1/notifications/rules", e.keyA, `{"events":["run.finished","vm.failed"],"integration":"slack","destination":"C1"}`)
	if r.status != http.StatusCreated {
		t.Fatalf("create rule: %d %s", r.status, r.body)
	}
	rule := decodeAs[client.NotificationRule](t, r)
	for _, bad := range []string{`{"events":["vm.exploded"],"integration":"slack","destination":"C1"}`, `{"events":[],"integration":"slack","destination":"C1"}`, `{"events":["vm.failed"],"integration":"slack"}`} {
		if r := e.call("POST", "/api/v1/notifications/rules", e.keyA, bad); r.status != http.StatusUnprocessableEntity || !strings.Contains(string(r.body), "notification") {
			t.Errorf("create %s: %d %s, want 422 naming the problem", bad, r.status, r.body)
		}
	}
	if rules := decodeAs[client.NotificationRuleList](t, e.call("GET", "/api/v1/notifications/rules", e.keyB, "")); len(rules.Rules) != 0 {
		t.Fatalf("bob sees alice's rules: %+v", rules)
	}
	if rules := decodeAs[client.NotificationRuleList](t, e.call("GET", "/api/v1/notifications/rules", e.keyA, "")); len(rules.Rules) != 1 || rules.Rules[0].ID != rule.ID {
		t.Fatalf("alice's rules: %+v", rules)
	}
	if r := e.call("DELETE", "/api/v1/notifications/rules/"+rule.ID, e.keyB, ""); r.status != http.StatusNotFound {
		t.Fatalf("bob deleted alice's rule: %d", r.status)
	}

	// A dead letter of alice's: listed with status=dead, retried by her only.
	ns := e.st.Notifications()
	if _, err := ns.Enqueue(t.Context(), []*store.OutboxEntry{{Key: "k1", OwnerID: e.ownerA, RuleID: rule.ID, Integration: "slack", Destination: "C1", Event: "vm.failed", Payload: []byte("{}")}}); err != nil {
		t.Fatal(err)
	}
	claimed, _ := ns.Claim(t.Context(), time.Now(), time.Minute, 1)
	if len(claimed) != 1 {
		t.Fatal("nothing to claim")
	}
	if err := ns.MarkFailed(t.Context(), claimed[0].Seq, "channel_not_found", time.Now(), true); err != nil {
		t.Fatal(err)
	}
	dead := decodeAs[client.NotificationList](t, e.call("GET", "/api/v1/notifications?status=dead", e.keyA, ""))
	if len(dead.Notifications) != 1 || dead.Notifications[0].LastError != "channel_not_found" || dead.Notifications[0].Status != "dead" {
		t.Fatalf("dead letters: %+v", dead)
	}
	if r := e.call("GET", "/api/v1/notifications?status=lost", e.keyA, ""); r.status != http.StatusUnprocessableEntity {
		t.Fatalf("status=lost: %d", r.status)
	}
	retry := fmt.Sprintf("/api/v1/notifications/%d/retry", claimed[0].Seq)
	if r := e.call("POST", retry, e.keyB, ""); r.status != http.StatusNotFound {
		t.Fatalf("bob retried alice's notification: %d %s", r.status, r.body)
	}
	if r := e.call("POST", retry, e.keyA, ""); r.status != http.StatusNoContent {
		t.Fatalf("retry: %d %s", r.status, r.body)
	}
	if r := e.call("POST", retry, e.keyA, ""); r.status != http.StatusNotFound {
		t.Fatalf("a second retry of a pending notification: %d", r.status)
	}
	if pending := decodeAs[client.NotificationList](t, e.call("GET", "/api/v1/notifications?status=pending", e.keyA, "")); len(pending.Notifications) != 1 {
		t.Fatalf("pending after retry: %+v", pending)
	}
	if r := e.call("DELETE", "/api/v1/notifications/rules/"+rule.ID, e.keyA, ""); r.status != http.StatusNoContent {
		t.Fatalf("delete rule: %d %s", r.status, r.body)
	}
}

// TestNotificationRuleDiscordDestination: a Discord rule's destination must be a Discord webhook URL (no other
// host is sent to, so a rule is not a way into the gateway's network); others are refused when the rule is made.
func TestNotificationRuleDiscordDestination(t *testing.T) {
	d, err := discord.New(discord.Config{})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, func(c *Config) { c.Integrations = integrations.NewRegistry(d) })
	ok := `{"events":["run.finished"],"integration":"discord","destination":"https://discord.com/api/webhooks/1180000000000000001/aBc-_9"}`
	if r := e.call("POST", "/api/v1/notifications/rules", e.keyA, ok); r.status != http.StatusCreated {
		t.Fatalf("a Discord webhook URL: %d %s", r.status, r.body)
	}
	for _, dest := range []string{"http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8080/api/webhooks/1/t",
		"https://discord.com.evil.example/api/webhooks/1/t", "http://discord.com/api/webhooks/1/t", "https://discord.com/api/v10/users/@me"} {
		body := `{"events":["run.finished"],"integration":"discord","destination":"` + dest + `"}`
		r := e.call("POST", "/api/v1/notifications/rules", e.keyA, body)
		if r.status != http.StatusUnprocessableEntity || r.errCode() != client.CodeValidation || !strings.Contains(r.errMessage(), "Discord webhook URL") {
			t.Errorf("destination %s: %d %s, want 422 saying a Discord webhook URL is wanted", dest, r.status, r.body)
		}
	}
	if rules := decodeAs[client.NotificationRuleList](t, e.call("GET", "/api/v1/notifications/rules", e.keyA, "")); len(rules.Rules) != 1 {
		t.Fatalf("%d rules stored, want the one valid", len(rules.Rules))
	}
}
