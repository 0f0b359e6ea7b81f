// Package ratelimit holds the token buckets of the API's rate limits. A bucket is kept as GCRA state (the
// "theoretical arrival time" of the next request), which behaves exactly like a token bucket of Burst tokens
// refilled at Rate per second but is one number per key. Memory keeps the buckets of one process (embedded mode);
// Redis keeps them in Redis, updated by one atomic script, so that every gateway sharing it shares the buckets.
package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Limit is a token bucket: Burst requests at once, refilled at Rate per second.
type Limit struct {
	Rate  float64
	Burst int
}

// Valid reports whether l can limit anything.
func (l Limit) Valid() bool { return l.Rate > 0 && l.Burst >= 1 && !math.IsInf(l.Rate, 0) }

// interval is the time one token takes to come back.
func (l Limit) interval() time.Duration { return time.Duration(float64(time.Second) / l.Rate) }

// Window is the time an empty bucket takes to fill up: the w of the RateLimit-Policy header.
func (l Limit) Window() time.Duration { return time.Duration(l.Burst) * l.interval() }

// Result is the outcome of one Take.
type Result struct {
	Allowed bool
	// Remaining is how many more requests the bucket would take now.
	Remaining int
	// RetryAfter is, when not Allowed, how long until one request is allowed again.
	RetryAfter time.Duration
	// Reset is how long until the bucket is full again.
	Reset time.Duration
}

// Limiter takes one token from the bucket of key, when it has one. An error means the limiter could not decide;
// callers choose what to do (Fallback decides locally).
type Limiter interface {
	Take(ctx context.Context, key string, l Limit) (Result, error)
}

// gcra is the decision shared by both limiters: tat is the stored theoretical arrival time (0: none), now the
// clock. It returns the result and the new tat to store when allowed.
func gcra(tat, now int64, l Limit) (Result, int64) {
	t := int64(l.interval())
	tau := t * int64(l.Burst)
	if tat < now {
		tat = now
	}
	next := tat + t
	diff := next - now
	if diff > tau {
		return Result{RetryAfter: time.Duration(diff - tau), Reset: time.Duration(tat - now)}, 0
	}
	return Result{Allowed: true, Remaining: int((tau - diff) / t), Reset: time.Duration(diff)}, next
}

// Memory is a Limiter over a map, for one process. Buckets that are full again are forgotten now and then, so
// the map holds only the keys active in the last Window.
type Memory struct {
	now     func() time.Time
	mu      sync.Mutex
	tat     map[string]int64
	calls   int
	maxKeys int
}

// NewMemory returns an in-memory limiter; now is the clock (nil: time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{now: now, tat: map[string]int64{}, maxKeys: 1 << 20}
}

// sweepEvery is how many calls pass between two sweeps of the full buckets.
const sweepEvery = 4096

// Take implements Limiter.
func (m *Memory) Take(_ context.Context, key string, l Limit) (Result, error) {
	now := m.now().UnixNano()
	m.mu.Lock()
	defer m.mu.Unlock()
	res, next := gcra(m.tat[key], now, l)
	if res.Allowed {
		if len(m.tat) >= m.maxKeys {
			m.sweep(now)
		}
		m.tat[key] = next
	}
	if m.calls++; m.calls >= sweepEvery {
		m.sweep(now)
	}
	return res, nil
}

// sweep forgets the buckets that are full again: a missing key is a full bucket.
func (m *Memory) sweep(now int64) {
	m.calls = 0
	for k, tat := range m.tat {
		if tat <= now {
			delete(m.tat, k)
		}
	}
}

// Len is the number of keys held (for tests).
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.tat)
}

// gcraScript is gcra in Redis: KEYS[1] holds the tat in microseconds of Redis's own clock (one clock for every
// gateway), ARGV are the interval and the burst tolerance in microseconds. The key expires when
// the bucket is full again. It returns {allowed, remaining, retry_after_us, reset_us}.
var gcraScript = redis.NewScript(`
local t = tonumber(ARGV[1])
local tau = tonumber(ARGV[2])
local clock = redis.call("TIME")
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call("GET", KEYS[1]) or "0")
if tat < now then tat = now end
local nxt = tat + t
local diff = nxt - now
if diff > tau then
  return {0, 0, diff - tau, tat - now}
end
redis.call("SET", KEYS[1], string.format("%.0f", nxt), "PX", math.ceil(diff / 1000) + 1)
return {1, math.floor((tau - diff) / t), 0, diff}
`)

// Redis is a Limiter shared by every process using the same Redis and Prefix.
type Redis struct {
	client redis.UniversalClient
	prefix string
}

// NewRedis returns a limiter keeping its buckets in client under prefix (e.g. "aetherium:ratelimit:").
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix}
}

// Take implements Limiter.
func (r *Redis) Take(ctx context.Context, key string, l Limit) (Result, error) {
	t := l.interval().Microseconds()
	if t < 1 {
		t = 1
	}
	v, err := gcraScript.Run(ctx, r.client, []string{r.prefix + key}, t, t*int64(l.Burst)).Int64Slice()
	if err != nil {
		return Result{}, fmt.Errorf("rate limit script: %w", err)
	}
	if len(v) != 4 {
		return Result{}, errors.New("rate limit script: unexpected answer")
	}
	return Result{Allowed: v[0] == 1, Remaining: int(v[1]), RetryAfter: time.Duration(v[2]) * time.Microsecond,
		Reset: time.Duration(v[3]) * time.Microsecond}, nil
}

// Fallback asks Primary and, when it fails (Redis unreachable), decides with Local instead: a gateway that
// cannot reach Redis still limits, per process, rather than letting everything through or refusing everything.
// Failures are logged at most once a minute.
type Fallback struct {
	Primary, Local Limiter
	Log            *slog.Logger

	mu       sync.Mutex
	lastWarn time.Time
}

// Take implements Limiter.
func (f *Fallback) Take(ctx context.Context, key string, l Limit) (Result, error) {
	res, err := f.Primary.Take(ctx, key, l)
	if err != nil {
		f.warn(ctx, err)
		return f.Local.Take(ctx, key, l)
	}
	return res, nil
}

func (f *Fallback) warn(ctx context.Context, err error) {
	if f.Log == nil || ctx.Err() != nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if time.Since(f.lastWarn) < time.Minute {
		return
	}
	f.lastWarn = time.Now()
	f.Log.WarnContext(ctx, "shared rate limiter unavailable; limiting per gateway", "err", err)
}
