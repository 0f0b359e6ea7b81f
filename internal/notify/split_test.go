package notify

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/discord"
	"github.com/aetherium/aetherium/internal/store"
)

// splitDiscord is a Discord webhook that fails the first attempt at the message whose content starts with
// failOn (a 500), and records every message it receives.
type splitDiscord struct {
	mu     sync.Mutex
	failOn string
	failed bool
	got    []string // contents received and accepted, in order
	tries  int
}

func (f *splitDiscord) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var m struct {
		Content string `json:"content"`
	}
	_ = json.NewDecoder(r.Body).Decode(&m)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if !f.failed && strings.HasPrefix(m.Content, f.failOn) {
		f.failed = true
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	f.got = append(f.got, m.Content)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"id":"1"}`))
}

// TestDiscordSplitResumes: a notification of three Discord messages whose second fails once is retried from the
// second: each part arrives once, in order.
func TestDiscordSplitResumes(t *testing.T) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			st := reopeners[name](t)()
			defer st.Close()
			testDiscordSplitResumes(t, st)
		})
	}
}

func testDiscordSplitResumes(t *testing.T, st store.Store) {
	// Three parts of 2,000 characters at most: lines "part1 ...", "part2 ...", "part3 ..." of 1,500 each.
	var lines []string
	for i := 1; i <= 3; i++ {
		lines = append(lines, fmt.Sprintf("part%d %s", i, strings.Repeat("x", 1500)))
	}
	reason := strings.Join(lines, "\n")
	f := &splitDiscord{failOn: "part2"}
	srv := httptest.NewServer(f)
	defer srv.Close()
	dc, err := discord.New(discord.Config{APIURL: srv.URL + "/api"})
	if err != nil {
		t.Fatal(err)
	}
	if n := dc.Parts(integrations.Notification{Title: "VM vm-1 failed", Text: reason}); n != 3 {
		t.Fatalf("the notification takes %d messages, want 3", n)
	}
	ns := st.Notifications()
	ctx := t.Context()
	if err := ns.CreateRule(ctx, &store.NotificationRule{OwnerID: "o1", Events: []string{"vm.failed"}, Integration: "discord",
		Destination: srv.URL + "/api/webhooks/1/tok"}); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{Store: ns, Integrations: integrations.NewRegistry(dc), BaseBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	data, _ := json.Marshal(map[string]string{"reason": reason})
	e := events.Event{Type: "vm.failed", Subject: "vm-1", OwnerID: "o1", Data: data, Time: time.Now()}
	if n, err := d.Enqueue(ctx, e); err != nil || n != 3 {
		t.Fatalf("Enqueue = %d, %v; want one outbox entry per part", n, err)
	}
	if n, _ := d.Enqueue(ctx, e); n != 0 {
		t.Fatalf("the same event enqueued again: %d entries", n)
	}
	waitFor(t, func() bool {
		_, _ = d.SendDue(ctx)
		left, err := ns.ListOutbox(ctx, "o1", store.OutboxPending, 100)
		return err == nil && len(left) == 0
	}, func() string { return fmt.Sprintf("%d tries, got %d", f.tries, len(f.got)) })

	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.failed || f.tries != 4 {
		t.Fatalf("%d requests (failed once: %v), want 4: three parts and one retry of the second", f.tries, f.failed)
	}
	if len(f.got) != 3 {
		t.Fatalf("%d messages arrived, want 3", len(f.got))
	}
	for i, c := range f.got {
		if c != lines[i] {
			t.Fatalf("message %d is %.20q…, want part %d (each part once, in order)", i+1, c, i+1)
		}
	}
	sent, _ := ns.ListOutbox(ctx, "o1", store.OutboxSent, 100)
	if len(sent) != 3 {
		t.Fatalf("%d entries sent, want 3", len(sent))
	}
}
