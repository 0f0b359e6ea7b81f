package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// DefaultPostgresURL is the server the tests use unless AETHERIUM_TEST_POSTGRES_URL names another.
const DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// PostgresDatabase creates an empty database with a random name on the test server, drops it when the test ends,
// and returns its URL. When the server cannot be reached the test is skipped, or fails if
// AETHERIUM_REQUIRE_SERVICES=1 (as in CI).
func PostgresDatabase(tb testing.TB) string {
	tb.Helper()
	admin := os.Getenv("AETHERIUM_TEST_POSTGRES_URL")
	if admin == "" {
		admin = DefaultPostgresURL
	}
	u, err := url.Parse(admin)
	if err != nil {
		tb.Fatalf("AETHERIUM_TEST_POSTGRES_URL is not a url: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		if os.Getenv("AETHERIUM_REQUIRE_SERVICES") == "1" {
			tb.Fatalf("PostgreSQL at %s is required (AETHERIUM_REQUIRE_SERVICES=1) but unreachable: %v", u.Redacted(), err)
		}
		tb.Skipf("SKIPPING: PostgreSQL at %s is unreachable (%v); set AETHERIUM_TEST_POSTGRES_URL to point at one, "+
			"or AETHERIUM_REQUIRE_SERVICES=1 to make this a failure", u.Redacted(), err)
	}
	defer conn.Close(context.Background())
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	name := "aetherium_test_" + hex.EncodeToString(b)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		tb.Fatalf("create database %s: %v", name, err)
	}
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			tb.Errorf("drop database %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		// FORCE: a store the test forgot to close must not leave the database behind.
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("drop database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
