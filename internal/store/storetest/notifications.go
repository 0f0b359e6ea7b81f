package storetest

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
)

func runNotifications(t *testing.T, open Opener) {
	t.Run("Rules", func(t *testing.T) {
		ns := open(t).Notifications()
		ctx := t.Context()
		r := &store.NotificationRule{OwnerID: "o1", Events: []string{"run.finished", "vm.failed"}, Integration: "slack", Destination: "C1", CreatedAt: at(0)}
		if err := ns.CreateRule(ctx, r); err != nil || r.ID == "" {
			t.Fatalf("CreateRule: %v (id %q)", err, r.ID)
		}
		for _, bad := range []*store.NotificationRule{
			{OwnerID: "o1", Events: []string{"nope"}, Integration: "slack", Destination: "C1"},
			{OwnerID: "o1", Integration: "slack", Destination: "C1"},
			{OwnerID: "o1", Events: []string{"vm.failed"}, Integration: "slack"},
		} {
			if err := ns.CreateRule(ctx, bad); !errors.Is(err, model.ErrInvalidInput) {
				t.Errorf("CreateRule(%+v) = %v, want ErrInvalidInput", bad, err)
			}
		}
		_ = ns.CreateRule(ctx, &store.NotificationRule{OwnerID: "o2", Events: []string{"task.failed"}, Integration: "discord", Destination: "https://d/x", CreatedAt: at(1)})
		mine, err := ns.ListRules(ctx, "o1")
		if err != nil || len(mine) != 1 || mine[0].ID != r.ID || !mine[0].CreatedAt.Equal(stored(at(0))) || fmt.Sprint(mine[0].Events) != "[run.finished vm.failed]" {
			t.Fatalf("ListRules(o1) = %+v, %v", mine, err)
		}
		if all, _ := ns.ListRules(ctx, ""); len(all) != 2 {
			t.Fatalf("ListRules('') = %d rules", len(all))
		}
		if err := ns.DeleteRule(ctx, "o2", r.ID); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("another owner deleted the rule: %v", err)
		}
		if err := ns.DeleteRule(ctx, "o1", r.ID); err != nil {
			t.Fatal(err)
		}
		if err := ns.DeleteRule(ctx, "o1", "not-a-uuid"); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("DeleteRule(not-a-uuid) = %v", err)
		}
	})
	t.Run("Outbox", func(t *testing.T) {
		ns := open(t).Notifications()
		ctx := t.Context()
		entry := func(key, dest string) *store.OutboxEntry {
			return &store.OutboxEntry{Key: key, OwnerID: "o1", RuleID: "r1", Integration: "slack", Destination: dest, Event: "run.finished", Payload: []byte(`{"k":"` + key + `"}`), CreatedAt: at(0)}
		}
		n, err := ns.Enqueue(ctx, []*store.OutboxEntry{entry("a1", "A"), entry("a2", "A"), entry("b1", "B")})
		if err != nil || n != 3 {
			t.Fatalf("Enqueue = %d, %v", n, err)
		}
		// The same keys again (another gateway's dispatcher saw the event too): nothing new.
		if n, err := ns.Enqueue(ctx, []*store.OutboxEntry{entry("a1", "A"), entry("a3", "A")}); err != nil || n != 1 {
			t.Fatalf("Enqueue of a known key = %d, %v; want 1", n, err)
		}
		now := at(1)
		got, err := ns.Claim(ctx, now, time.Minute, 10)
		if err != nil || len(got) != 2 || got[0].Key != "a1" || got[1].Key != "b1" || string(got[0].Payload) != `{"k":"a1"}` || got[0].Status != store.OutboxPending {
			t.Fatalf("Claim = %+v, %v; want the heads a1 and b1", got, err)
		}
		if again, _ := ns.Claim(ctx, now, time.Minute, 10); len(again) != 0 {
			t.Fatalf("leased or held-back entries claimed again: %+v", again)
		}
		if err := ns.MarkSent(ctx, got[1].Seq, now); err != nil {
			t.Fatal(err)
		}
		// a1 fails: it stays the head of A, and a2 waits behind it.
		if err := ns.MarkFailed(ctx, got[0].Seq, "HTTP 500 \x00", now.Add(time.Minute), false); err != nil {
			t.Fatal(err)
		}
		if c, _ := ns.Claim(ctx, now.Add(30*time.Second), time.Minute, 10); len(c) != 0 {
			t.Fatalf("claimed before a1 was due again: %+v", c)
		}
		c, _ := ns.Claim(ctx, now.Add(time.Minute), time.Minute, 10)
		if len(c) != 1 || c[0].Key != "a1" || c[0].Attempts != 1 || c[0].LastError != "HTTP 500 \uFFFD" {
			t.Fatalf("retry claim = %+v", c)
		}
		if err := ns.MarkFailed(ctx, c[0].Seq, "gave up", now, true); err != nil {
			t.Fatal(err)
		}
		// Dead: it no longer holds A back.
		c, _ = ns.Claim(ctx, now.Add(2*time.Minute), time.Minute, 10)
		if len(c) != 1 || c[0].Key != "a2" {
			t.Fatalf("after a1 died, claim = %+v", c)
		}
		if err := ns.MarkSent(ctx, c[0].Seq, now); err != nil {
			t.Fatal(err)
		}
		dead, err := ns.ListOutbox(ctx, "o1", store.OutboxDead, 10)
		if err != nil || len(dead) != 1 || dead[0].Key != "a1" || dead[0].Attempts != 2 {
			t.Fatalf("ListOutbox(dead) = %+v, %v", dead, err)
		}
		if other, _ := ns.ListOutbox(ctx, "o2", "", 10); len(other) != 0 {
			t.Fatalf("another owner sees %d entries", len(other))
		}
		if err := ns.Retry(ctx, "o2", dead[0].Seq, now); !errors.Is(err, model.ErrNotFound) {
			t.Fatalf("another owner retried: %v", err)
		}
		if err := ns.Retry(ctx, "o1", dead[0].Seq, now.Add(3*time.Minute)); err != nil {
			t.Fatal(err)
		}
		// a1 is pending again and first of A: a3 waits for it.
		c, _ = ns.Claim(ctx, now.Add(3*time.Minute), time.Minute, 10)
		if len(c) != 1 || c[0].Key != "a1" || c[0].Attempts != 0 {
			t.Fatalf("after retry, claim = %+v", c)
		}
		// A lease that runs out (its sender died) is claimable again.
		c, _ = ns.Claim(ctx, now.Add(5*time.Minute), time.Minute, 10)
		if len(c) != 1 || c[0].Key != "a1" {
			t.Fatalf("after the lease ran out, claim = %+v", c)
		}
	})
	t.Run("ConcurrentClaims", func(t *testing.T) {
		ns := open(t).Notifications()
		ctx := t.Context()
		var entries []*store.OutboxEntry
		for i := 0; i < 40; i++ {
			entries = append(entries, &store.OutboxEntry{Key: fmt.Sprint("k", i), OwnerID: "o1", RuleID: "r", Integration: "discord",
				Destination: fmt.Sprint("d", i%10), Event: "vm.failed", Payload: []byte("{}"), CreatedAt: at(0)})
		}
		if _, err := ns.Enqueue(ctx, entries); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		seen := map[string]int{}
		var wg sync.WaitGroup
		for w := 0; w < 4; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := ns.Claim(ctx, at(1), time.Minute, 5)
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				for _, e := range c {
					seen[e.Destination]++
				}
				mu.Unlock()
			}()
		}
		wg.Wait()
		total := 0
		for d, n := range seen {
			if n != 1 {
				t.Errorf("destination %s claimed %d times at once", d, n)
			}
			total += n
		}
		if total != 10 {
			t.Errorf("%d heads claimed, want all 10", total)
		}
	})
}
