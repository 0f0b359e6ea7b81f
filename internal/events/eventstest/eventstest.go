// Package eventstest is the conformance suite of the events.Bus seam: every implementation runs Run, so the
// in-process bus of the embedded mode behaves like Redis pub/sub in production.
package eventstest

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/events"
)

// Factory returns a new, isolated, open bus. The suite closes it; the factory may register further cleanup.
// Buses built with a per-subscription buffer of Buffer events let the suite check that slow readers lose events.
type Factory func(t *testing.T) events.Bus

// waitFor bounds every wait of the suite; an event that does not arrive in this time is a failure.
const waitFor = 5 * time.Second

// Run runs the conformance suite against the buses that newBus builds.
func Run(t *testing.T, newBus Factory) {
	t.Run("DeliversAfterSubscribeReturns", func(t *testing.T) { testDelivers(t, newBus) })
	t.Run("TopicsAreSeparate", func(t *testing.T) { testTopics(t, newBus) })
	t.Run("FanOutInOrder", func(t *testing.T) { testFanOut(t, newBus) })
	t.Run("SlowSubscriberDoesNotBlockPublisher", func(t *testing.T) { testSlow(t, newBus) })
	t.Run("SlowSubscriberDoesNotBlockOthers", func(t *testing.T) { testSlowOthers(t, newBus) })
	t.Run("SubscriptionClose", func(t *testing.T) { testSubClose(t, newBus) })
	t.Run("BusClose", func(t *testing.T) { testBusClose(t, newBus) })
	t.Run("CancelledContext", func(t *testing.T) { testCancelled(t, newBus) })
}

func open(t *testing.T, newBus Factory) events.Bus {
	t.Helper()
	b := newBus(t)
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("close bus: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := b.Health(ctx); err != nil {
		t.Fatalf("health of a new bus: %v", err)
	}
	return b
}

func subscribe(t *testing.T, b events.Bus, topic string) events.Subscription {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := b.Subscribe(ctx, topic)
	if err != nil {
		t.Fatalf("subscribe to %q: %v", topic, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func publish(t *testing.T, b events.Bus, topic string, e events.Event) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := b.Publish(ctx, topic, e); err != nil {
		t.Fatalf("publish on %q: %v", topic, err)
	}
}

// next returns the next event of s, failing the test if none comes in time or the channel is closed.
func next(t *testing.T, s events.Subscription) events.Event {
	t.Helper()
	select {
	case e, ok := <-s.C():
		if !ok {
			t.Fatal("subscription channel closed, want an event")
		}
		return e
	case <-time.After(waitFor):
		t.Fatalf("no event within %v", waitFor)
	}
	return events.Event{}
}

// closed waits for s's channel to be closed, discarding buffered events.
func closed(t *testing.T, s events.Subscription) {
	t.Helper()
	deadline := time.After(waitFor)
	for {
		select {
		case _, ok := <-s.C():
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("subscription channel not closed within %v", waitFor)
		}
	}
}

func event(typ, subject string, n int) events.Event {
	return events.Event{
		Type:    typ,
		Subject: subject,
		OwnerID: "owner-1",
		Data:    json.RawMessage(fmt.Sprintf(`{"n":%d}`, n)),
		// Round to microseconds and strip the monotonic reading: a serialized event cannot carry either.
		Time: time.Now().UTC().Truncate(time.Microsecond),
	}
}

func sameEvent(t *testing.T, got, want events.Event) {
	t.Helper()
	if got.Type != want.Type || got.Subject != want.Subject || got.OwnerID != want.OwnerID ||
		string(got.Data) != string(want.Data) || !got.Time.Equal(want.Time) {
		t.Fatalf("got event %+v (data %s), want %+v (data %s)", got, got.Data, want, want.Data)
	}
}

func testDelivers(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	s := subscribe(t, b, "tasks/t1")
	want := event("task.completed", "t1", 1)
	publish(t, b, "tasks/t1", want)
	sameEvent(t, next(t, s), want)
}

func testTopics(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	a := subscribe(t, b, "tasks/a")
	other := event("task.completed", "b", 1)
	mine := event("task.completed", "a", 2)
	// Published one after the other, so the first event a sees would be other's if topics leaked.
	publish(t, b, "tasks/b", other)
	publish(t, b, "tasks/a", mine)
	sameEvent(t, next(t, a), mine)
}

func testFanOut(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	s1 := subscribe(t, b, events.TopicTasks)
	s2 := subscribe(t, b, events.TopicTasks)
	const n = 20 // below any sensible buffer, so nothing may be dropped
	want := make([]events.Event, n)
	for i := range want {
		want[i] = event("task.completed", fmt.Sprintf("t%d", i), i)
		publish(t, b, events.TopicTasks, want[i])
	}
	for _, s := range []events.Subscription{s1, s2} {
		for i := range want {
			sameEvent(t, next(t, s), want[i])
		}
	}
}

func testSlow(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	slow := subscribe(t, b, "slow")
	// Far more events than any buffer holds, and nobody reads: Publish must not wait for the reader.
	const flood = 5000
	for i := 0; i < flood; i++ {
		publish(t, b, "slow", event("flood", "x", i))
	}
	marker := event("marker", "m", -1)
	publish(t, b, "slow", marker)

	// Reading now: some flood events were dropped, and the subscription still works. Events published after a
	// drain must arrive, so keep publishing markers until one does.
	got := 0
	deadline := time.After(waitFor)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case e, ok := <-slow.C():
			if !ok {
				t.Fatal("subscription closed after a flood")
			}
			if e.Type == "marker" {
				if got >= flood {
					t.Fatalf("received all %d flood events before the marker: nothing was dropped, so the buffer is unbounded", got)
				}
				return
			}
			got++
		case <-tick.C:
			publish(t, b, "slow", marker)
		case <-deadline:
			t.Fatalf("marker not received within %v after reading %d flood events", waitFor, got)
		}
	}
}

// testSlowOthers: a subscriber that never reads, however flooded, holds up neither the subscribers of other topics
// nor the other subscribers of its own topic (a bus that delivers through one connection must not wait for it).
func testSlowOthers(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	stuck := subscribe(t, b, "flooded")
	same := subscribe(t, b, "flooded")
	other := subscribe(t, b, "other")
	const flood = 5000
	for i := 0; i < flood; i++ {
		publish(t, b, "flooded", event("flood", "x", i))
	}
	want := event("marker", "other", 1)
	publish(t, b, "other", want)
	sameEvent(t, next(t, other), want)
	// same may have lost flood events too (it did not read during the flood); markers published now reach it.
	deadline := time.After(waitFor)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	publish(t, b, "flooded", event("marker", "same", 2))
	for {
		select {
		case e, ok := <-same.C():
			if !ok {
				t.Fatal("subscription closed after a flood")
			}
			if e.Type == "marker" {
				if len(stuck.C()) == 0 {
					t.Fatal("the subscriber that never read has nothing buffered")
				}
				return
			}
		case <-tick.C:
			publish(t, b, "flooded", event("marker", "same", 2))
		case <-deadline:
			t.Fatalf("the other subscriber of a flooded topic got no marker within %v", waitFor)
		}
	}
}

func testSubClose(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	s := subscribe(t, b, "topic")
	keep := subscribe(t, b, "topic")
	if err := s.Close(); err != nil {
		t.Fatalf("close subscription: %v", err)
	}
	closed(t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("second close of a subscription: %v", err)
	}
	// The other subscription of the topic is unaffected.
	want := event("e", "s", 1)
	publish(t, b, "topic", want)
	sameEvent(t, next(t, keep), want)
}

func testBusClose(t *testing.T, newBus Factory) {
	b := newBus(t)
	s := subscribe(t, b, "topic")
	if err := b.Close(); err != nil {
		t.Fatalf("close bus: %v", err)
	}
	closed(t, s)
	if err := s.Close(); err != nil {
		t.Fatalf("close a subscription of a closed bus: %v", err)
	}
	ctx := context.Background()
	if err := b.Publish(ctx, "topic", event("e", "s", 1)); err == nil {
		t.Fatal("publish on a closed bus succeeded")
	}
	if _, err := b.Subscribe(ctx, "topic"); err == nil {
		t.Fatal("subscribe on a closed bus succeeded")
	}
	if err := b.Health(ctx); err == nil {
		t.Fatal("a closed bus reports healthy")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second close of a bus: %v", err)
	}
}

func testCancelled(t *testing.T, newBus Factory) {
	b := open(t, newBus)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if s, err := b.Subscribe(ctx, "topic"); err == nil {
		_ = s.Close()
		t.Fatal("subscribe with a cancelled context succeeded")
	}
	if err := b.Publish(ctx, "topic", event("e", "s", 1)); err == nil {
		t.Fatal("publish with a cancelled context succeeded")
	}
}
