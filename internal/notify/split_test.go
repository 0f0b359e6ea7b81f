package notify

import (
	"context"
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
	"github.com/aetherium/aetherium/internal/events/inproc"
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

// flakyDiscord is a Discord webhook that refuses its first failFor requests, alternating 500 and 429 (with
// retry_after and the X-RateLimit headers Discord sends), without taking them, and records what it takes by
// channel (the webhook's id).
type flakyDiscord struct {
	mu      sync.Mutex
	failFor int
	n       int
	faults  map[int]int
	byHook  map[string][]string
}

func (f *flakyDiscord) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var m struct {
		Content string `json:"content"`
		Embeds  []struct {
			Title string `json:"title"`
		} `json:"embeds"`
	}
	_ = json.NewDecoder(r.Body).Decode(&m)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	if f.n <= f.failFor {
		if f.n%2 == 0 {
			f.faults[429]++
			w.Header().Set("Content-Type", "application/json")
			w.Header().Set("X-RateLimit-Limit", "5")
			w.Header().Set("X-RateLimit-Remaining", "0")
			w.Header().Set("X-RateLimit-Reset-After", "0.01")
			w.Header().Set("X-RateLimit-Bucket", "b1")
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			_, _ = w.Write([]byte(`{"message":"You are being rate limited.","retry_after":0.01,"global":false}`))
			return
		}
		f.faults[500]++
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	title := m.Content
	if len(m.Embeds) > 0 {
		title = m.Embeds[0].Title
	}
	hook := strings.Split(strings.TrimPrefix(r.URL.Path, "/api/webhooks/"), "/")[0]
	f.byHook[hook] = append(f.byHook[hook], title)
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"id":"1"}`))
}

func (f *flakyDiscord) taken() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, l := range f.byHook {
		n += len(l)
	}
	return n
}

// TestDiscordFaultsAndRestart: Discord refuses (500, then 429 with retry_after) for a while and the dispatcher is
// restarted on the reopened store mid-way: every notification reaches its webhook exactly once, in order.
func TestDiscordFaultsAndRestart(t *testing.T) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) {
			reopen := reopeners[name](t)
			f := &flakyDiscord{failFor: 40, faults: map[int]int{}, byHook: map[string][]string{}}
			srv := httptest.NewServer(f)
			defer srv.Close()
			dc, err := discord.New(discord.Config{APIURL: srv.URL + "/api"})
			if err != nil {
				t.Fatal(err)
			}
			reg := integrations.NewRegistry(dc)
			st := reopen()
			hooks := []string{"11", "22"}
			for _, h := range hooks {
				if err := st.Notifications().CreateRule(t.Context(), &store.NotificationRule{OwnerID: "o1", Events: []string{"run.finished"},
					Integration: "discord", Destination: srv.URL + "/api/webhooks/" + h + "/tok"}); err != nil {
					t.Fatal(err)
				}
			}
			start := func(st store.Store) func() {
				d, err := New(Config{Store: st.Notifications(), Integrations: reg, BaseBackoff: 2 * time.Millisecond,
					MaxBackoff: 20 * time.Millisecond, Poll: 5 * time.Millisecond, MaxAttempts: 1000, Logger: slog.New(slog.DiscardHandler)})
				if err != nil {
					t.Fatal(err)
				}
				for i := 0; i < 10; i++ {
					data, _ := json.Marshal(map[string]string{"status": "completed"})
					if _, err := d.Enqueue(t.Context(), events.Event{Type: "run.finished", Subject: fmt.Sprintf("run-%02d", i), OwnerID: "o1", Data: data, Time: time.Now()}); err != nil {
						t.Fatal(err)
					}
				}
				ctx, cancel := context.WithCancel(t.Context())
				done := make(chan struct{})
				go func() { defer close(done); _ = d.Run(ctx) }()
				return func() { cancel(); <-done }
			}
			stop := start(st) // enqueues run-00..09 (the restart's second Enqueue of them adds nothing)
			waitFor(t, func() bool { return f.taken() >= 4 }, func() string { return fmt.Sprint(f.taken()) })
			stop()
			if err := st.Close(); err != nil {
				t.Fatal(err)
			}
			st = reopen()
			defer st.Close()
			stop = start(st)
			waitFor(t, func() bool {
				left, err := st.Notifications().ListOutbox(t.Context(), "o1", store.OutboxPending, 100)
				return err == nil && len(left) == 0 && f.taken() >= 20
			}, func() string { return fmt.Sprint(f.taken()) })
			stop()
			f.mu.Lock()
			defer f.mu.Unlock()
			for _, h := range hooks {
				got := f.byHook[h]
				if len(got) != 10 {
					t.Fatalf("webhook %s took %d notifications, want 10 (each once): %v", h, len(got), got)
				}
				for i, title := range got {
					if !strings.Contains(title, fmt.Sprintf("run-%02d", i)) {
						t.Fatalf("webhook %s: notification %d is %q, want run-%02d (in order)", h, i, title, i)
					}
				}
			}
			if f.faults[500] == 0 || f.faults[429] == 0 {
				t.Fatalf("faults %v: the test did not exercise both", f.faults)
			}
			t.Logf("%d requests, faults %v", f.n, f.faults)
		})
	}
}

// TestWithOutboxNeedsNoGateway: an event published through WithOutbox's bus has its outbox rows written at once,
// with nobody following the bus (no gateway up); the dispatcher that sees it later on the bus adds nothing, also for
// a notification Discord takes in several messages; events no rule chooses write nothing.
func TestWithOutboxNeedsNoGateway(t *testing.T) {
	st := reopeners["sqlite"](t)()
	defer st.Close()
	ctx := t.Context()
	dc, err := discord.New(discord.Config{APIURL: "http://127.0.0.1:1/api"})
	if err != nil {
		t.Fatal(err)
	}
	reg := integrations.NewRegistry(dc)
	ns := st.Notifications()
	if err := ns.CreateRule(ctx, &store.NotificationRule{OwnerID: "o1", Events: []string{"vm.failed"}, Integration: "discord",
		Destination: "http://127.0.0.1:1/api/webhooks/1/tok"}); err != nil {
		t.Fatal(err)
	}
	bus := inproc.New()
	defer bus.Close()
	wrapped := WithOutbox(bus, ns, reg, slog.New(slog.DiscardHandler))
	data, _ := json.Marshal(map[string]string{"reason": strings.Repeat("long reason line\n", 300)}) // several messages
	e := events.Event{Type: "vm.failed", Subject: "vm-1", OwnerID: "o1", Data: data, Time: time.Now()}
	if err := wrapped.Publish(ctx, "vms", e); err != nil {
		t.Fatal(err)
	}
	_ = wrapped.Publish(ctx, "vms", events.Event{Type: "vm.started", Subject: "vm-1", OwnerID: "o1"})
	rows, err := ns.ListOutbox(ctx, "o1", "", 100)
	if err != nil {
		t.Fatal(err)
	}
	parts := dc.Parts(render("vm.failed", e))
	if parts < 2 || len(rows) != parts {
		t.Fatalf("%d outbox rows for a notification of %d messages, want one per message", len(rows), parts)
	}
	d, err := New(Config{Store: ns, Integrations: reg, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	if n, err := d.Enqueue(ctx, e); err != nil || n != 0 {
		t.Fatalf("the dispatcher's enqueue of the same event added %d rows (%v), want 0", n, err)
	}
}
