package postgres_test

import (
	"context"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/migrations"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/storetest"
)

// openStore opens a migrated store on a new database.
func openStore(tb testing.TB) *postgres.Store {
	tb.Helper()
	st, err := postgres.Open(tb.Context(), storetest.PostgresDatabase(tb))
	if err != nil {
		tb.Fatalf("Open: %v", err)
	}
	tb.Cleanup(func() { _ = st.Close() }) // registered after the drop, so it runs before it
	if err := st.Migrate(tb.Context()); err != nil {
		tb.Fatalf("Migrate: %v", err)
	}
	return st
}

// TestConformance runs the suite on one database for the whole run: creating and dropping a database per subtest
// costs more than the subtests themselves, so each subtest empties the tables instead (with DELETE: TRUNCATE is
// slower on tables this small). The suite's subtests run one at a time, so they cannot see each other's rows.
func TestConformance(t *testing.T) {
	base := openStore(t)
	dbURL := base.Pool().Config().ConnString()
	storetest.Run(t, func(t *testing.T) store.Store {
		if _, err := base.Pool().Exec(t.Context(), `DELETE FROM vms; DELETE FROM tasks; DELETE FROM jobs;
			DELETE FROM executions; DELETE FROM workers; DELETE FROM api_keys; DELETE FROM idempotency_keys;
			DELETE FROM secrets; DELETE FROM secret_key_checks; DELETE FROM runs;
			DELETE FROM webhook_deliveries; DELETE FROM integration_links; DELETE FROM events;
			DELETE FROM event_horizons`); err != nil {
			t.Fatalf("empty the tables: %v", err)
		}
		st, err := postgres.Open(t.Context(), dbURL)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	})
}

func TestMigrateTwice(t *testing.T) {
	st := openStore(t)
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatalf("second Migrate: %v", err)
	}
	var n int
	if err := st.Pool().QueryRow(t.Context(), "SELECT count(*) FROM goose_db_version WHERE version_id > 0").Scan(&n); err != nil {
		t.Fatal(err)
	}
	fsys, err := migrations.Postgres()
	if err != nil {
		t.Fatal(err)
	}
	files, err := fs.Glob(fsys, "*.sql")
	if err != nil {
		t.Fatal(err)
	}
	if n != len(files) {
		t.Fatalf("%d migrations recorded, want %d (one per file, each once)", n, len(files))
	}
}

// TestMigrateConcurrently runs Migrate from several stores on one fresh database at once, as a gateway and workers
// starting together would: the advisory lock must make all of them succeed.
func TestMigrateConcurrently(t *testing.T) {
	dbURL := storetest.PostgresDatabase(t)
	const n = 3
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		st, err := postgres.Open(t.Context(), dbURL)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		wg.Go(func() { errs <- st.Migrate(t.Context()) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Migrate: %v", err)
		}
	}
}

func TestOpenErrors(t *testing.T) {
	for _, bad := range []string{"postgres://user:secret@127.0.0.1:5432/x?sslmode=bogus",
		"postgres://user:secret@[::1/x", "postgres://user:secret@127.0.0.1:notaport/x"} {
		_, err := postgres.Open(t.Context(), bad)
		if err == nil {
			t.Fatalf("Open(%q) succeeded", bad)
		}
		if strings.Contains(err.Error(), "secret") {
			t.Fatalf("error leaks the password: %v", err)
		}
	}
	// A port nothing listens on: Open must fail (it pings), not hand back a dead store.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable&connect_timeout=2"); err == nil {
		t.Fatal("Open of an unreachable server succeeded")
	}
}

func BenchmarkTaskUpdate(b *testing.B) {
	storetest.BenchmarkTaskUpdate(b, openStore(b))
}

func BenchmarkCreateTask(b *testing.B) {
	storetest.BenchmarkCreateTask(b, openStore(b))
}
