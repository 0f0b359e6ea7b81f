package storeopen_test

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store/storeopen"
	"github.com/aetherium/aetherium/internal/store/storetest"
)

// check opens url, verifies that Open did not create the schema, migrates and uses the store.
func check(t *testing.T, url string) {
	t.Helper()
	ctx := t.Context()
	st, err := storeopen.Open(ctx, url)
	if err != nil {
		t.Fatalf("Open(%q): %v", url, err)
	}
	defer st.Close()
	if err := st.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	// Without the schema a lookup fails for want of a table, not because the row is missing.
	if _, err := st.APIKeys().Count(ctx); err == nil {
		t.Fatal("Count worked before Migrate: Open migrated implicitly")
	}
	if err := st.Migrate(ctx); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if n, err := st.APIKeys().Count(ctx); err != nil || n != 0 {
		t.Fatalf("Count after Migrate = %d, %v", n, err)
	}
	_, err = st.VMs().Get(ctx, "00000000-0000-0000-0000-000000000000")
	if !errors.Is(err, model.ErrNotFound) {
		t.Fatalf("Get after Migrate: %v", err)
	}
}

func TestOpenSQLite(t *testing.T) {
	dir := t.TempDir()
	check(t, "sqlite://"+filepath.Join(dir, "a", "one.db"))
	check(t, "file:"+filepath.Join(dir, "two.db"))
	check(t, "SQLite://"+filepath.Join(dir, "three.db"))
}

func TestOpenPostgres(t *testing.T) {
	url := storetest.PostgresDatabase(t)
	check(t, url)
	other := storetest.PostgresDatabase(t)
	check(t, "postgresql"+strings.TrimPrefix(other, "postgres"))
}

func TestMigrate(t *testing.T) {
	url := "sqlite://" + filepath.Join(t.TempDir(), "m.db")
	for range 2 {
		if err := storeopen.Migrate(t.Context(), url); err != nil {
			t.Fatalf("Migrate: %v", err)
		}
	}
	st, err := storeopen.Open(t.Context(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if _, err := st.APIKeys().Count(t.Context()); err != nil {
		t.Fatalf("schema missing after Migrate: %v", err)
	}
}

func TestOpenRejects(t *testing.T) {
	for _, url := range []string{"", "mysql://root:hunter2@db/aetherium", "sqlite://", "file:", "/var/lib/x.db",
		"redis://127.0.0.1:6379"} {
		st, err := storeopen.Open(t.Context(), url)
		if err == nil {
			st.Close()
			t.Errorf("Open(%q) succeeded", url)
			continue
		}
		if strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Open(%q) error leaks the password: %v", url, err)
		}
	}
}
