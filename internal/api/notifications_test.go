package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

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
