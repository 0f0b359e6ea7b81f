package cli_test

import (
	"strings"
	"testing"
)

// TestNotifyCommands runs `aetherium notify` against the real API (secretsAPI's SQLite store).
func TestNotifyCommands(t *testing.T) {
	s := newSecretsAPI(t)
	r := s.run(t, "", "notify", "rule", "add", "slack", "C0123", "--events", "run.finished, vm.failed")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "created rule ") {
		t.Fatalf("rule add: %s", r)
	}
	id := strings.TrimSpace(strings.TrimPrefix(r.stdout, "created rule "))
	if r := s.run(t, "", "notify", "rule", "add", "discord", "https://discord.com/api/webhooks/1/tok", "--events", "task.failed"); r.code != 0 {
		t.Fatalf("rule add discord: %s", r)
	}
	if r := s.run(t, "", "notify", "rule", "add", "slack", "C1", "--events", "vm.exploded"); r.code == 0 || !strings.Contains(r.stderr, "vm.exploded") {
		t.Fatalf("a bad event was accepted: %s", r)
	}
	r = s.run(t, "", "notify", "rule", "list")
	if r.code != 0 || !strings.Contains(r.stdout, id) || !strings.Contains(r.stdout, "run.finished,vm.failed") || strings.Contains(r.stdout, "tok") {
		t.Fatalf("rule list (the Discord webhook URL hidden): %s", r)
	}
	if r := s.run(t, "", "notify", "list", "--status", "dead"); r.code != 0 {
		t.Fatalf("notify list: %s", r)
	}
	if r := s.run(t, "", "notify", "retry", "12"); r.code == 0 {
		t.Fatalf("retry of a notification that is not dead succeeded: %s", r)
	}
	if r := s.run(t, "", "notify", "rule", "rm", id); r.code != 0 {
		t.Fatalf("rule rm: %s", r)
	}
	if r := s.run(t, "", "notify", "rule", "rm", id); r.code == 0 {
		t.Fatalf("second rule rm succeeded: %s", r)
	}
}
