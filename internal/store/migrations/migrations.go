// Package migrations embeds Aetherium's versioned schema migrations, one directory per SQL dialect. They are run by
// goose's Provider API (see the Migrate methods of the postgres and sqlite stores); the files are the only place the
// schema is defined, so both dialects must be changed together and kept equivalent.
package migrations

import (
	"embed"
	"fmt"
	"io/fs"
)

//go:embed postgres/*.sql sqlite/*.sql
var files embed.FS

// Postgres returns the PostgreSQL migrations, rooted so goose sees the .sql files directly.
func Postgres() (fs.FS, error) { return sub("postgres") }

// SQLite returns the SQLite migrations, rooted so goose sees the .sql files directly.
func SQLite() (fs.FS, error) { return sub("sqlite") }

func sub(dir string) (fs.FS, error) {
	f, err := fs.Sub(files, dir)
	if err != nil {
		return nil, fmt.Errorf("migrations: %s: %w", dir, err)
	}
	return f, nil
}
