package redisbus_test

import (
	"context"
	"crypto/rand"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/events"
	"github.com/aetherium/aetherium/internal/events/eventstest"
	"github.com/aetherium/aetherium/internal/events/redisbus"
)

// redisURL is the Redis the tests use; AETHERIUM_TEST_REDIS_URL overrides the local default.
func redisURL() string {
	if u := os.Getenv("AETHERIUM_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// client connects to the test Redis, skipping (or failing when AETHERIUM_REQUIRE_SERVICES=1) if it does not answer.
func client(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(redisURL())
	if err != nil {
		t.Fatalf("parse redis url: %v", err)
	}
	c := redis.NewClient(opt)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		_ = c.Close()
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatalf("redis at %s is required (AETHERIUM_REQUIRE_SERVICES=1) but unreachable: %v", redisURL(), err)
		}
		t.Skipf("SKIPPING: redis at %s is unreachable: %v", redisURL(), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformance(t *testing.T) {
	c := client(t)
	eventstest.Run(t, func(t *testing.T) events.Bus {
		// Pub/sub channels are global to a Redis server (not per database), so each bus gets a channel prefix of
		// its own: parallel test runs and a live deployment on the same Redis never see each other's events.
		return redisbus.New(c, redisbus.WithPrefix("aetherium-test:"+rand.Text()+":"))
	})
}

func TestOpenOwnsConnection(t *testing.T) {
	client(t) // skip when Redis is unreachable
	b, err := redisbus.Open(redisURL(), redisbus.WithPrefix("aetherium-test:"+rand.Text()+":"))
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	ctx := context.Background()
	if err := b.Health(ctx); err != nil {
		t.Fatalf("health: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := b.Health(ctx); err == nil {
		t.Fatal("health after close succeeded")
	}
	if _, err := redisbus.Open("not-a-url"); err == nil {
		t.Fatal("open of a bad url succeeded")
	}
}

func TestUnreachableRedis(t *testing.T) {
	// Nothing listens on port 1: Subscribe and Publish must fail with an error, not hang.
	c := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1, DialTimeout: time.Second})
	defer c.Close()
	b := redisbus.New(c)
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := b.Subscribe(ctx, "topic"); err == nil {
		t.Fatal("subscribe to an unreachable redis succeeded")
	}
	if err := b.Publish(ctx, "topic", events.Event{Type: "x"}); err == nil {
		t.Fatal("publish to an unreachable redis succeeded")
	}
	if err := b.Health(ctx); err == nil {
		t.Fatal("health of an unreachable redis succeeded")
	}
}
