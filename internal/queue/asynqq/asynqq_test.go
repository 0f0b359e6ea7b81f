package asynqq_test

import (
	"context"
	"crypto/rand"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/aetherium/aetherium/internal/events/redisbus"
	"github.com/aetherium/aetherium/internal/queue"
	"github.com/aetherium/aetherium/internal/queue/asynqq"
	"github.com/aetherium/aetherium/internal/queue/queuetest"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/sqlite"
	"github.com/aetherium/aetherium/internal/store/storetest"
)

func logger() *slog.Logger {
	if os.Getenv("AETHERIUM_TEST_LOG") == "1" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// redisURL is the Redis the tests use; AETHERIUM_TEST_REDIS_URL overrides the local default.
func redisURL() string {
	if u := os.Getenv("AETHERIUM_TEST_REDIS_URL"); u != "" {
		return u
	}
	return "redis://127.0.0.1:6379/0"
}

// redisClient connects to the test Redis, skipping (or failing when AETHERIUM_REQUIRE_SERVICES=1) if it is down.
func redisClient(t testing.TB) (asynq.RedisConnOpt, redis.UniversalClient) {
	t.Helper()
	opt, err := asynqq.ParseRedisURL(redisURL())
	if err != nil {
		t.Fatalf("redis url: %v", err)
	}
	c := opt.MakeRedisClient().(redis.UniversalClient)
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
	return opt, c
}

// backend is an SQLite tasks table, a Redis event bus and a queue namespace of their own in the shared Redis.
//
// Isolation: every backend gets a random namespace, so its asynq queues (and with them every task key) are
// distinct from those of any other test, package run or deployment on the same Redis database, and its cleanup
// deletes exactly that namespace's keys (asynqq.PurgeNamespace). Per-run Redis database numbers would also work,
// but there are only 16 of them and no way to claim one atomically against other packages running in parallel.
func backend(t testing.TB) *queuetest.Backend { return backendWith(t, nil) }

// sqliteTasks opens a new SQLite database for t.
func sqliteTasks(t testing.TB) store.TaskStore {
	t.Helper()
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "aetherium.db"))
	if err != nil {
		t.Fatalf("open sqlite: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate sqlite: %v", err)
	}
	return st.Tasks()
}

// postgresTasks opens a new PostgreSQL database for t (skipped when PostgreSQL is unreachable).
func postgresTasks(t testing.TB) store.TaskStore {
	t.Helper()
	ctx := context.Background()
	st, err := postgres.Open(ctx, storetest.PostgresDatabase(t))
	if err != nil {
		t.Fatalf("open postgres: %v", err)
	}
	t.Cleanup(func() { _ = st.Close() })
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("migrate postgres: %v", err)
	}
	return st.Tasks()
}

// backendWith is a backend on tasks (a new SQLite database when nil) with further options for every queue.
func backendWith(t testing.TB, tasks store.TaskStore, extra ...asynqq.Option) *queuetest.Backend {
	t.Helper()
	opt, rc := redisClient(t)
	ns := "aetherium-test-" + rand.Text()[:12]
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := asynqq.PurgeNamespace(ctx, rc, ns); err != nil {
			t.Errorf("purge namespace: %v", err)
		}
	})

	if tasks == nil {
		tasks = sqliteTasks(t)
	}
	bus := redisbus.New(rc, redisbus.WithPrefix(ns+":events:"))
	t.Cleanup(func() { _ = bus.Close() })
	log := logger()
	return &queuetest.Backend{
		Tasks: tasks,
		Bus:   bus,
		NewQueue: func(t testing.TB, opts queue.Options) queue.Queue {
			q, err := asynqq.New(opt, tasks, bus, opts, log, append([]asynqq.Option{
				asynqq.WithNamespace(ns),
				asynqq.WithDelayedTaskCheckInterval(20 * time.Millisecond),
				asynqq.WithAbortGrace(2 * time.Second),
			}, extra...)...)
			if err != nil {
				t.Fatalf("new queue: %v", err)
			}
			t.Cleanup(func() { _ = q.Close() })
			return q
		},
	}
}

// TestConformance runs the suite on SQLite and on PostgreSQL, the production store. The PostgreSQL database is
// shared by the subtests (creating one each would cost more than the tests): each subtest has its own task ids,
// queue namespace and event channels, and the asynq queue never lists the table.
func TestConformance(t *testing.T) {
	t.Run("sqlite", func(t *testing.T) { queuetest.Run(t, backend) })
	t.Run("postgres", func(t *testing.T) {
		tasks := postgresTasks(t)
		queuetest.Run(t, func(t testing.TB) *queuetest.Backend { return backendWith(t, tasks) })
	})
}

// BenchmarkPickup runs with the default task check interval and with others, to show the latency/load trade
// (asynq's own default, 1 s, gives a median of ~0.95 s and is left out: it takes minutes).
func BenchmarkPickup(b *testing.B) {
	b.Run("check=default", func(b *testing.B) { queuetest.BenchmarkPickup(b, backend) })
	for _, d := range []time.Duration{time.Millisecond, 5 * time.Millisecond} {
		b.Run("check="+d.String(), func(b *testing.B) {
			queuetest.BenchmarkPickup(b, func(t testing.TB) *queuetest.Backend {
				return backendWith(t, nil, asynqq.WithTaskCheckInterval(d))
			})
		})
	}
}
