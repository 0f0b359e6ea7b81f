package eventlog_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/eventlog"
	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/inproc"
	"github.com/aetherium/aetherium/internal/events/redisbus"
	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/store/storetest"
)

// sink collects what a Follower sends.
type sink struct {
	mu     sync.Mutex
	events []*store.Event
	resets []int64
	live   chan int64
	beats  int
	got    chan struct{}
}

func newSink() *sink { return &sink{live: make(chan int64, 1), got: make(chan struct{}, 1000)} }

func (s *sink) Reset(h int64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resets = append(s.resets, h)
	return nil
}
func (s *sink) Live(latest int64) error {
	s.live <- latest
	return nil
}
func (s *sink) Heartbeat() error { s.mu.Lock(); defer s.mu.Unlock(); s.beats++; return nil }
func (s *sink) Event(e *store.Event) error {
	s.mu.Lock()
	s.events = append(s.events, e)
	s.mu.Unlock()
	s.got <- struct{}{}
	return nil
}

// wait waits for n events in all, failing after within.
func (s *sink) wait(t *testing.T, n int, within time.Duration) []*store.Event {
	t.Helper()
	deadline := time.After(within)
	for {
		s.mu.Lock()
		have := len(s.events)
		evs := append([]*store.Event(nil), s.events...)
		s.mu.Unlock()
		if have >= n {
			return evs
		}
		select {
		case <-s.got:
		case <-deadline:
			t.Fatalf("%d events within %s, want %d", have, within, n)
		}
	}
}

func follow(t *testing.T, fw *eventlog.Follower, f store.EventFilter, fromNow bool) (*sink, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := newSink()
	done := make(chan error, 1)
	go func() { done <- fw.Follow(ctx, f, fromNow, s) }()
	select {
	case <-s.live:
	case err := <-done:
		t.Fatalf("follow ended at once: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("follow did not go live")
	}
	var once sync.Once
	stop := func() { once.Do(func() { end(t, cancel, done) }) }
	t.Cleanup(stop)
	return s, stop
}

// end cancels a follow and checks that it returns nil, promptly.
func end(t *testing.T, cancel context.CancelFunc, done chan error) {
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("follow ended with %v, want nil when its context ends", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("follow did not end with its context")
	}
}

func openSQLite(t *testing.T) store.Store {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	return st
}

func redisClient(t *testing.T) *redis.Client {
	t.Helper()
	url := os.Getenv("AETHERIUM_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatalf("redis at %s is required (AETHERIUM_REQUIRE_SERVICES=1) but unreachable: %v", url, err)
		}
		t.Skipf("SKIPPING: redis at %s is unreachable: %v", url, err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// moveVM creates a VM and moves it through statuses, as a worker does: 1 + len(statuses) events.
func moveVM(t *testing.T, st store.Store, owner string, statuses ...model.VMStatus) string {
	t.Helper()
	vm := &model.VM{OwnerID: owner, Name: "vm-" + rand.Text()[:8]}
	if err := st.VMs().Create(t.Context(), vm); err != nil {
		t.Fatal(err)
	}
	for _, s := range statuses {
		if _, err := st.VMs().Update(t.Context(), vm.ID, func(v *model.VM) error { v.Status = s; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	return vm.ID
}

// TestGatewayModeOverRedis is the production shape: a worker process changes states in PostgreSQL through its own
// store and Redis connection, a gateway follows with another of each. The poll is an hour, so delivery within
// seconds means the Redis wake-up carried it.
func TestGatewayModeOverRedis(t *testing.T) {
	rc := redisClient(t)
	url := storetest.PostgresDatabase(t)
	open := func() store.Store {
		st, err := postgres.Open(t.Context(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		if err := st.Migrate(t.Context()); err != nil {
			t.Fatal(err)
		}
		return st
	}
	prefix := "aetherium-test:" + rand.Text() + ":"
	workerBus := redisbus.New(redis.NewClient(rc.Options()), redisbus.WithPrefix(prefix))
	gatewayBus := redisbus.New(redis.NewClient(rc.Options()), redisbus.WithPrefix(prefix))
	t.Cleanup(func() { workerBus.Close(); gatewayBus.Close() })
	worker := eventlog.Wake(open(), workerBus, nil)
	gateway := open()

	fw := &eventlog.Follower{Store: gateway.Events(), Bus: gatewayBus, Poll: time.Hour}
	s, _ := follow(t, fw, store.EventFilter{OwnerID: "alice"}, true)
	other, _ := follow(t, fw, store.EventFilter{OwnerID: "bob"}, true)
	start := time.Now()
	id := moveVM(t, worker, "alice", model.VMCreating, model.VMRunning)
	evs := s.wait(t, 3, 5*time.Second)
	t.Logf("3 events from the worker process reached the gateway's follower in %s over Redis", time.Since(start).Round(time.Millisecond))
	for i, want := range []string{"pending", "creating", "running"} {
		var d struct{ ID, Status string }
		if err := json.Unmarshal(evs[i].Data, &d); err != nil || d.ID != id || d.Status != want || evs[i].Type != store.EventVMStatus {
			t.Fatalf("event %d: %s %s, want vm.status %s", i, evs[i].Type, evs[i].Data, want)
		}
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(other.wait(t, 0, time.Second)); n != 0 {
		t.Fatalf("bob's follower got %d of alice's events", n)
	}
}

// dropAll is a bus that loses every message, as Redis pub/sub does while a subscriber is disconnected.
type dropAll struct{ events.Bus }

func (dropAll) Publish(context.Context, string, events.Event) error { return nil }

// TestLostWakeUpsOnlyDelay: with every wake-up lost, the poll delivers everything, in order, once.
func TestLostWakeUpsOnlyDelay(t *testing.T) {
	bus := inproc.New()
	t.Cleanup(func() { bus.Close() })
	raw := openSQLite(t)
	st := eventlog.Wake(raw, dropAll{bus}, nil)
	fw := &eventlog.Follower{Store: raw.Events(), Bus: bus, Poll: 100 * time.Millisecond}
	s, _ := follow(t, fw, store.EventFilter{OwnerID: "o"}, true)
	for range 5 {
		moveVM(t, st, "o", model.VMCreating)
	}
	evs := s.wait(t, 10, 5*time.Second)
	time.Sleep(300 * time.Millisecond) // a few more polls: nothing comes twice
	if evs = s.wait(t, 10, time.Second); len(evs) != 10 {
		t.Fatalf("%d events, want 10", len(evs))
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].ID <= evs[i-1].ID {
			t.Fatalf("event %d has id %d after %d", i, evs[i].ID, evs[i-1].ID)
		}
	}
}

// TestFollowReplayResetAndHeartbeat: a position before the horizon gets Reset(horizon) and then what is left;
// an idle follower beats; a long replay comes in pages, all of it.
func TestFollowReplayResetAndHeartbeat(t *testing.T) {
	st := openSQLite(t)
	for range 700 { // more than one page of the follower's reads
		if err := st.Events().Append(t.Context(), &store.Event{OwnerID: "o", Type: store.EventVMStatus, Subject: "x"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.Events().Prune(t.Context(), store.EventRetention{MaxPerOwner: 650}); err != nil {
		t.Fatal(err)
	}
	horizon, _, _ := st.Events().Bounds(t.Context(), "o")
	fw := &eventlog.Follower{Store: st.Events(), Poll: time.Hour, Heartbeat: 30 * time.Millisecond}
	s, stop := follow(t, fw, store.EventFilter{OwnerID: "o", After: 1}, false)
	evs := s.wait(t, 650, 5*time.Second)
	if len(evs) != 650 || evs[0].ID != horizon+1 {
		t.Fatalf("%d events from id %d, want 650 from %d", len(evs), evs[0].ID, horizon+1)
	}
	time.Sleep(150 * time.Millisecond)
	stop()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.resets) != 1 || s.resets[0] != horizon {
		t.Fatalf("resets %v, want [%d]", s.resets, horizon)
	}
	if s.beats < 2 {
		t.Fatalf("%d heartbeats in 150 ms of silence at 30 ms", s.beats)
	}
}

// TestPrunerRuns: the pruner applies the retention at once.
func TestPrunerRuns(t *testing.T) {
	st := openSQLite(t)
	for range 5 {
		moveVM(t, st, "o")
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		eventlog.Pruner{Store: st.Events(), Retention: store.EventRetention{MaxPerOwner: 2}, Every: 10 * time.Millisecond}.Run(ctx)
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		evs, err := st.Events().List(t.Context(), store.EventFilter{OwnerID: "o"})
		if err != nil {
			t.Fatal(err)
		}
		if len(evs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d events left, want 2", len(evs))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
}
