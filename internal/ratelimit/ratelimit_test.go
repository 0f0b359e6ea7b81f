package ratelimit

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func TestMemoryBucket(t *testing.T) {
	c := &clock{t: time.Unix(1_700_000_000, 0)}
	m := NewMemory(c.now)
	l := Limit{Rate: 10, Burst: 5}
	ctx := context.Background()
	for i := range 5 {
		r, _ := m.Take(ctx, "a", l)
		if !r.Allowed || r.Remaining != 4-i {
			t.Fatalf("take %d of the burst: %+v", i, r)
		}
	}
	r, _ := m.Take(ctx, "a", l)
	if r.Allowed || r.RetryAfter != 100*time.Millisecond {
		t.Fatalf("over the burst: %+v, want refused with 100ms to wait", r)
	}
	if r, _ := m.Take(ctx, "b", l); !r.Allowed {
		t.Fatalf("another key is limited by the first: %+v", r)
	}
	c.add(100 * time.Millisecond)
	if r, _ := m.Take(ctx, "a", l); !r.Allowed || r.Remaining != 0 {
		t.Fatalf("one token back after 100ms: %+v", r)
	}
	if r, _ := m.Take(ctx, "a", l); r.Allowed {
		t.Fatalf("only one came back: %+v", r)
	}
	// Full buckets are forgotten by a sweep.
	c.add(time.Second)
	for range sweepEvery {
		_, _ = m.Take(ctx, "x", l)
	}
	if n := m.Len(); n > 1 {
		t.Fatalf("%d keys kept after every bucket filled up", n)
	}
}

// redisClient connects to the test Redis on DB 13 (no other test uses it) and flushes it.
func redisClient(t testing.TB) *redis.Client {
	t.Helper()
	url := "redis://127.0.0.1:6379/13"
	if u := os.Getenv("AETHERIUM_TEST_RATELIMIT_REDIS_URL"); u != "" {
		url = u
	}
	opt, err := redis.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(context.Background()).Err(); err != nil {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			t.Fatalf("Redis required (AETHERIUM_REQUIRE_SERVICES=1) but unreachable at %s: %v", url, err)
		}
		t.Skipf("SKIP: no Redis at %s (%v); set AETHERIUM_REQUIRE_SERVICES=1 to fail instead", url, err)
	}
	if err := c.FlushDB(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRedisIsShared shows two limiters (two gateways) over the same Redis drawing on one bucket.
func TestRedisIsShared(t *testing.T) {
	ctx := context.Background()
	c1, c2 := redisClient(t), redisClient(t)
	a, b := NewRedis(c1, "test:rl:"), NewRedis(c2, "test:rl:")
	l := Limit{Rate: 1, Burst: 4}
	allowed := 0
	for i := range 8 {
		lim := a
		if i%2 == 1 {
			lim = b
		}
		r, err := lim.Take(ctx, "k", l)
		if err != nil {
			t.Fatal(err)
		}
		if r.Allowed {
			allowed++
		} else if r.RetryAfter <= 0 || r.RetryAfter > time.Second {
			t.Fatalf("refused with retry after %v", r.RetryAfter)
		}
	}
	if allowed != 4 {
		t.Fatalf("%d of 8 requests allowed across two limiters, want the burst of 4", allowed)
	}
	if r, _ := b.Take(ctx, "other", l); !r.Allowed || r.Remaining != 3 {
		t.Fatalf("another key: %+v", r)
	}
	ttl, err := c1.PTTL(ctx, "test:rl:k").Result()
	if err != nil || ttl <= 0 || ttl > 4*time.Second+10*time.Millisecond {
		t.Fatalf("the bucket's key expires in %v (%v), want about the time it takes to fill", ttl, err)
	}
	// A token comes back after 1/Rate.
	time.Sleep(1100 * time.Millisecond)
	if r, _ := a.Take(ctx, "k", l); !r.Allowed {
		t.Fatalf("after a refill: %+v", r)
	}
}

// TestFallbackWhenRedisIsDown: a limiter whose Redis is gone limits locally instead of failing.
func TestFallbackWhenRedisIsDown(t *testing.T) {
	dead := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", DialTimeout: 100 * time.Millisecond, MaxRetries: -1})
	defer dead.Close()
	f := &Fallback{Primary: NewRedis(dead, "x:"), Local: NewMemory(nil)}
	l := Limit{Rate: 1, Burst: 2}
	var got []bool
	for range 3 {
		r, err := f.Take(context.Background(), "k", l)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, r.Allowed)
	}
	if !got[0] || !got[1] || got[2] {
		t.Fatalf("fallback decisions %v, want the local burst of 2", got)
	}
}

func BenchmarkMemoryTake(b *testing.B) {
	m := NewMemory(nil)
	l := Limit{Rate: 1e9, Burst: 1 << 30}
	ctx := context.Background()
	for b.Loop() {
		_, _ = m.Take(ctx, "key", l)
	}
}

func BenchmarkRedisTake(b *testing.B) {
	r := NewRedis(redisClient(b), "bench:")
	l := Limit{Rate: 1e6, Burst: 1 << 20}
	ctx := context.Background()
	for b.Loop() {
		if _, err := r.Take(ctx, "key", l); err != nil {
			b.Fatal(err)
		}
	}
}
