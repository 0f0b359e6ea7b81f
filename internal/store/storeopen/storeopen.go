// Package storeopen opens the store named by a database URL, choosing the implementation by its scheme. It lives
// apart from package store because the implementations import store (for its interfaces), so store cannot import
// them back.
package storeopen

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/postgres"
	"github.com/aetherium/aetherium/internal/store/sqlite"
)

// Store is a store.Store whose schema can be brought up to date. Both implementations satisfy it.
type Store interface {
	store.Store
	// Migrate applies pending schema migrations; with none pending it does nothing.
	Migrate(ctx context.Context) error
}

var (
	_ Store = (*postgres.Store)(nil)
	_ Store = (*sqlite.Store)(nil)
)

// Open opens the store at url without touching its schema (call Migrate for that):
//
//	postgres://… or postgresql://…   PostgreSQL
//	sqlite://<path> or file:<path>   SQLite; the file and its directory are created when missing
//
// In the SQLite forms everything after the prefix is the file path: sqlite:///var/lib/aetherium/db.sqlite is
// absolute, sqlite://data/db.sqlite is relative to the working directory.
func Open(ctx context.Context, url string) (Store, error) {
	switch {
	case hasPrefixFold(url, "postgres://"), hasPrefixFold(url, "postgresql://"):
		s, err := postgres.Open(ctx, url)
		if err != nil {
			return nil, err
		}
		return s, nil
	case hasPrefixFold(url, "sqlite://"), hasPrefixFold(url, "file:"):
		path := url[strings.Index(url, ":")+1:]
		path = strings.TrimPrefix(path, "//")
		if path == "" {
			return nil, errors.New("store: sqlite url has no file path (want sqlite://<path> or file:<path>)")
		}
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			return nil, err
		}
		return s, nil
	case url == "":
		return nil, errors.New("store: empty database url (want postgres://…, postgresql://…, sqlite://<path> or file:<path>)")
	default:
		// Name only the scheme: the rest of a url may hold a password.
		scheme := url
		if i := strings.Index(url, ":"); i >= 0 {
			scheme = url[:i]
		} else {
			scheme = "(none)"
		}
		return nil, fmt.Errorf("store: unsupported database url scheme %q (want postgres://, postgresql://, sqlite://<path> or file:<path>)", scheme)
	}
}

// Migrate opens the store at url, brings its schema up to date and closes it.
func Migrate(ctx context.Context, url string) error {
	s, err := Open(ctx, url)
	if err != nil {
		return err
	}
	return errors.Join(s.Migrate(ctx), s.Close())
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
