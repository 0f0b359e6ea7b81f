package notify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/integrations"
	"github.com/aetherium/aetherium/internal/integrations/slack"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/store/storetest"
	"github.com/aetherium/aetherium/internal/task"
	"github.com/aetherium/aetherium/internal/worker"
)

// reopeners give a test a store it can close and open again (a restart), on SQLite and PostgreSQL.
var reopeners = map[string]func(t *testing.T) func() store.Store{
	"sqlite": func(t *testing.T) func() store.Store {
		path := filepath.Join(t.TempDir(), "a.db")
		return func() store.Store { return openStore(t, path) }
	},
	"postgres": func(t *testing.T) func() store.Store {
		url := storetest.PostgresDatabase(t)
		return func() store.Store {
			st, err := postgres.Open(t.Context(), url)
			if err != nil {
				t.Fatal(err)
			}
			if err := st.Migrate(t.Context()); err != nil {
				t.Fatal(err)
			}
			return st
		}
	},
}

func openStore(t *testing.T, path string) *sqlite.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), path)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return st
}

// flakySlack is a local Slack Web API whose chat.postMessage fails for a while: 500s, 429s with Retry-After, and
// 500s after it has posted the message (a lost answer, which the idempotency key must make harmless).
type flakySlack struct {
	mu       sync.Mutex
	requests int
	failFor  int                 // requests answered with faults first
	byChan   map[string][]string // idempotency keys in arrival order, each once
	seen     map[string]bool
	dups     int
	faults   map[string]int
}

func (f *flakySlack) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Channel  string `json:"channel"`
		Metadata struct {
			EventPayload map[string]string `json:"event_payload"`
		} `json:"metadata"`
	}
	_ = json.NewDecoder(r.Body).Decode(&body)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.requests++
	if f.requests <= f.failFor {
		switch f.requests % 3 {
		case 0:
			f.faults["500"]++
			w.WriteHeader(http.StatusInternalServerError)
			return
		case 1:
			f.faults["429"]++
			w.Header().Set("Retry-After", "0")
			w.WriteHeader(http.StatusTooManyRequests)
			return
		}
		f.faults["500 after posting"]++
		defer w.WriteHeader(http.StatusInternalServerError)
	}
	key := body.Metadata.EventPayload["idempotency_key"]
	if f.seen[key] {
		f.dups++
	} else {
		f.seen[key] = true
		f.byChan[body.Channel] = append(f.byChan[body.Channel], key)
	}
	if f.requests > f.failFor {
		_ = json.NewEncoder(w).Encode(map[string]any{"ok": true, "ts": "1.1"})
	}
}

func (f *flakySlack) delivered() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.seen)
}

// TestFaultsAndRestart: the fake Slack answers 500 and 429 for a while; the dispatcher is stopped mid-way and a new
// one started on the reopened store. Every notification arrives exactly once, in order per channel.
func TestFaultsAndRestart(t *testing.T) {
	for _, name := range []string{"sqlite", "postgres"} {
		t.Run(name, func(t *testing.T) { testFaultsAndRestart(t, reopeners[name](t)) })
	}
}

func testFaultsAndRestart(t *testing.T, reopen func() store.Store) {
	f := &flakySlack{failFor: 60, byChan: map[string][]string{}, seen: map[string]bool{}, faults: map[string]int{}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	sl, err := slack.New(slack.Config{SigningSecret: "s", BotToken: "xoxb-t", APIURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	reg := integrations.NewRegistry(sl)
	st := reopen()
	channels := []string{"C1", "C2", "C3"}
	for _, c := range channels {
		if err := st.Notifications().CreateRule(t.Context(), &store.NotificationRule{OwnerID: "o1", Events: []string{"vm.failed"}, Integration: "slack", Destination: c}); err != nil {
			t.Fatal(err)
		}
	}
	// A rule of another owner and an event kind no rule chooses: neither sends anything to C1..C3.
	_ = st.Notifications().CreateRule(t.Context(), &store.NotificationRule{OwnerID: "o2", Events: []string{"vm.failed"}, Integration: "slack", Destination: "C9"})

	bus := inproc.New()
	defer bus.Close()
	start := func(st store.Store) (context.CancelFunc, chan struct{}) {
		d, err := New(Config{Store: st.Notifications(), Bus: bus, Integrations: reg, BaseBackoff: 5 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
			Poll: 5 * time.Millisecond, MaxAttempts: 1000, Logger: slog.New(slog.DiscardHandler)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan struct{})
		go func() { defer close(done); _ = d.Run(ctx) }()
		return cancel, done
	}
	const n = 30
	stop, done := start(st)
	time.Sleep(50 * time.Millisecond) // the subscriptions are made (Subscribe delivers what is published after it)
	for i := 0; i < n; i++ {
		e := events.Event{Type: "vm.failed", Subject: fmt.Sprintf("vm-%02d", i), OwnerID: "o1", Data: json.RawMessage(`{"reason":"oom"}`), Time: time.Now()}
		if err := bus.Publish(t.Context(), "vms", e); err != nil {
			t.Fatal(err)
		}
		_ = bus.Publish(t.Context(), "vms", events.Event{Type: "vm.started", Subject: "x", OwnerID: "o1"})
	}
	waitFor(t, func() bool { return f.delivered() >= 20 }, func() string {
		l, _ := st.Notifications().ListOutbox(t.Context(), "o1", "", 1000)
		return fmt.Sprintf("%d delivered, %d rows, %d requests", f.delivered(), len(l), f.requests)
	})
	stop()
	<-done
	mid := f.delivered()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	// The restarted gateway, and a second one on the same store: they share the rows without breaking the order.
	st = reopen()
	defer st.Close()
	stop, done = start(st)
	st2 := reopen()
	defer st2.Close()
	stop2, done2 := start(st2)
	// Delivered, and recorded as sent: a send that succeeded is marked a moment after the fake sees it.
	waitFor(t, func() bool {
		if f.delivered() < n*len(channels) {
			return false
		}
		left, err := st2.Notifications().ListOutbox(t.Context(), "o1", store.OutboxPending, 1000)
		return err == nil && len(left) == 0
	}, func() string { return fmt.Sprint(f.delivered()) })
	stop()
	stop2()
	<-done
	<-done2

	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range channels {
		got := f.byChan[c]
		if len(got) != n {
			t.Fatalf("%s got %d notifications, want %d", c, len(got), n)
		}
		for i, k := range got {
			if want := fmt.Sprintf("vm.failed:vm-%02d:", i); k[:len(want)] != want {
				t.Fatalf("%s: notification %d is %s, want %s...: out of order", c, i, k, want)
			}
		}
	}
	if len(f.byChan["C9"]) != 0 || len(f.seen) != n*len(channels) {
		t.Fatalf("unexpected deliveries: %d in C9, %d in all", len(f.byChan["C9"]), len(f.seen))
	}
	t.Logf("%d requests, faults %v, %d deliveries before the restart, %d repeats recognised by key", f.requests, f.faults, mid, f.dups)
	if f.dups == 0 {
		t.Fatal("no lost answer was retried: the test did not exercise the idempotency key")
	}
	left, _ := st.Notifications().ListOutbox(t.Context(), "o1", store.OutboxPending, 1000)
	if len(left) != 0 {
		t.Fatalf("%d notifications still pending", len(left))
	}
}

type failing struct{ permanent bool }

func (failing) Name() string        { return "fail" }
func (failing) MaxBodyBytes() int64 { return 1 }
func (failing) Verify(context.Context, *integrations.Webhook) error {
	return integrations.ErrBadSignature
}
func (failing) Accept(context.Context, *integrations.Webhook) (*integrations.Acceptance, error) {
	return nil, errors.New("no")
}
func (failing) Handle(context.Context, *integrations.Delivery, integrations.Actions) error {
	return nil
}
func (failing) Health(context.Context) error { return nil }
func (f *failing) Notify(context.Context, integrations.Notification) error {
	if f.permanent {
		return queue.Permanent(errors.New("channel_not_found"))
	}
	return errors.New("HTTP 500")
}

// TestDeadLetter: a notification that keeps failing is dead after MaxAttempts (a permanent failure at once), and
// Retry sends it again.
func TestDeadLetter(t *testing.T) {
	st := openStore(t, filepath.Join(t.TempDir(), "a.db"))
	defer st.Close()
	ns := st.Notifications()
	fi := &failing{}
	d, _ := New(Config{Store: ns, Integrations: integrations.NewRegistry(fi), MaxAttempts: 3, BaseBackoff: time.Millisecond, MaxBackoff: time.Millisecond, Logger: slog.New(slog.DiscardHandler)})
	ctx := t.Context()
	_ = ns.CreateRule(ctx, &store.NotificationRule{OwnerID: "o1", Events: []string{"task.failed"}, Integration: "fail", Destination: "x"})
	if k, err := d.Enqueue(ctx, events.Event{Type: "task.failed", Subject: "t1", OwnerID: "o1"}); err != nil || k != 1 {
		t.Fatalf("Enqueue = %d, %v", k, err)
	}
	if k, _ := d.Enqueue(ctx, events.Event{Type: "task.failed", Subject: "t1", OwnerID: "o1"}); k != 0 {
		t.Fatal("the same event enqueued twice")
	}
	waitFor(t, func() bool {
		_, _ = d.SendDue(ctx)
		dead, _ := ns.ListOutbox(ctx, "o1", store.OutboxDead, 10)
		return len(dead) == 1
	})
	dead, _ := ns.ListOutbox(ctx, "o1", store.OutboxDead, 10)
	if dead[0].Attempts != 3 || dead[0].LastError != "HTTP 500" {
		t.Fatalf("dead entry %+v", dead[0])
	}
	fi.permanent = true
	if err := ns.Retry(ctx, "o1", dead[0].Seq, time.Now()); err != nil {
		t.Fatal(err)
	}
	_, _ = d.SendDue(ctx)
	dead, _ = ns.ListOutbox(ctx, "o1", store.OutboxDead, 10)
	if len(dead) != 1 || dead[0].Attempts != 1 {
		t.Fatalf("a permanent failure is not dead at once: %+v", dead)
	}
}

func TestBackoff(t *testing.T) {
	for a := 1; a < 12; a++ {
		want := min(time.Second<<(a-1), time.Minute)
		for i := 0; i < 50; i++ {
			if b := Backoff(time.Second, time.Minute, a); b < want/2 || b > want {
				t.Fatalf("Backoff(attempt %d) = %s, want in [%s, %s]", a, b, want/2, want)
			}
		}
	}
}

func waitFor(t *testing.T, cond func() bool, state ...func() string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			msg := ""
			for _, s := range state {
				msg += " " + s()
			}
			t.Fatal("condition not met within 30 s:" + msg)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFollowsEveryPublisher: the dispatcher follows the topics the events rules choose are published on, and a
// job's end renders with its status and reason.
func TestFollowsEveryPublisher(t *testing.T) {
	for _, topic := range []string{task.TopicRuns, task.TopicJobs, events.TopicTasks, worker.TopicVMs} {
		if !slices.Contains(Topics, topic) {
			t.Errorf("the dispatcher does not follow %q", topic)
		}
	}
	data, _ := json.Marshal(task.JobFinishedData{Status: "failed", Error: "command 2 exited with code 2"})
	n := render(kind(events.Event{Type: task.EventJobFinished}), events.Event{Type: task.EventJobFinished, Subject: "j-1", OwnerID: "o", Data: data})
	if n.Event != "job.finished" || n.Title != "Job j-1 failed" || n.Text != "command 2 exited with code 2" || n.Fields["status"] != "failed" {
		t.Fatalf("job.finished renders as %+v", n)
	}
}
