package sqlite

import (
	"database/sql"
	"path/filepath"
	"testing"
)

// TestPragmas checks that every connection of both pools has the server settings, not only the first one.
func TestPragmas(t *testing.T) {
	st, err := Open(t.Context(), filepath.Join(t.TempDir(), "p.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	check := func(name string, db *sql.DB, conns int, queryOnly, wantSync int) {
		ctx := t.Context()
		var held []*sql.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for i := range conns {
			c, err := db.Conn(ctx) // hold each so the next is a different connection
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
			var mode string
			var busy, fk, sync, qo int
			if err := c.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
				t.Fatal(err)
			}
			for p, dst := range map[string]*int{"busy_timeout": &busy, "foreign_keys": &fk, "synchronous": &sync, "query_only": &qo} {
				if err := c.QueryRowContext(ctx, "PRAGMA "+p).Scan(dst); err != nil {
					t.Fatal(err)
				}
			}
			if mode != "wal" || busy != int(BusyTimeout.Milliseconds()) || fk != 1 || sync != wantSync || qo != queryOnly {
				t.Errorf("%s connection %d: journal_mode=%s busy_timeout=%d foreign_keys=%d synchronous=%d query_only=%d",
					name, i, mode, busy, fk, sync, qo)
			}
		}
	}
	check("writer", st.w, 1, 0, 2) // FULL: acknowledged rows survive power loss
	check("reader", st.r, readers, 1, 1)
}
