// Package postgres is the PostgreSQL implementation of store.Store, on pgx v5's connection pool. It is the
// production store; internal/store/storetest holds the conformance suite it shares with the SQLite store.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
	"github.com/aetherium/aetherium/internal/store/migrations"
)

// Store is a store.Store on PostgreSQL. Open it with Open and create its schema with Migrate.
type Store struct {
	pool *pgxpool.Pool
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at url (a postgres:// URL or a libpq key=value string) and checks that it answers.
// It does not create or upgrade the schema: call Migrate for that.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err) // pgx redacts the password in its message
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: ping %s:%d/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port,
			cfg.ConnConfig.Database, err)
	}
	return &Store{pool: pool}, nil
}

// Migrate brings the schema up to date. It is safe to run again (a no-op when nothing is pending) and from several
// processes at once: a session advisory lock serialises them.
func (s *Store) Migrate(ctx context.Context) error {
	fsys, err := migrations.Postgres()
	if err != nil {
		return err
	}
	// goose works on database/sql; this handle borrows connections from the pool and closing it leaves the pool open.
	db := stdlib.OpenDBFromPool(s.pool)
	defer db.Close()
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, fsys,
		goose.WithSessionLocker(locker), goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	return nil
}

// Pool exposes the connection pool, for callers that need PostgreSQL itself (tests, admin tools).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("postgres: ping: %w", err)
	}
	return nil
}

// Close closes every connection.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// VMs gives access to the VMs.
func (s *Store) VMs() store.VMStore { return vmStore{s} }

// Tasks gives access to the tasks.
func (s *Store) Tasks() store.TaskStore { return taskStore{s} }

// Jobs gives access to the jobs.
func (s *Store) Jobs() store.JobStore { return jobStore{s} }

// Executions gives access to the executions.
func (s *Store) Executions() store.ExecutionStore { return executionStore{s} }

// Workers gives access to the workers.
func (s *Store) Workers() store.WorkerStore { return workerStore{s} }

// APIKeys gives access to the API keys.
func (s *Store) APIKeys() store.APIKeyStore { return apiKeyStore{s} }

// Leases gives access to the network address leases.
func (s *Store) Leases() store.LeaseStore { return leaseStore{s} }

// querier is what pgxpool.Pool and pgx.Tx have in common.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// update runs a read-modify-write in one transaction. The row is read with SELECT ... FOR UPDATE, so concurrent
// updates of one row queue behind each other instead of losing each other's changes.
func (s *Store) update(ctx context.Context, fn func(tx pgx.Tx) error) error {
	return pgx.BeginFunc(ctx, s.pool, fn)
}

// uniqueViolation reports whether err is a unique violation, and of which constraint.
func uniqueViolation(err error) (string, bool) {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return pgErr.ConstraintName, true
	}
	return "", false
}

// dbErr wraps a database error, turning constraint violations the store's checks did not catch into ErrInvalidInput.
func dbErr(op string, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "23514", "23502", "22P02", "22001", "22003", "22021":
			// check, not-null, bad text representation, too long, out of range, bad character (NUL in text)
			return fmt.Errorf("postgres: %s: %w: %w", op, model.ErrInvalidInput, err)
		}
	}
	return fmt.Errorf("postgres: %s: %w", op, err)
}

// nullUUID turns an empty optional reference into NULL.
func nullUUID(id string) any {
	if id == "" {
		return nil
	}
	return id
}

// nullJSON turns an empty json document into NULL. A nil []byte would encode as NULL too, but saying so is clearer.
func nullJSON(b []byte) any {
	if len(b) == 0 {
		return nil
	}
	return b
}

// list builds a filtered, keyset-paginated SELECT.
type list struct {
	where []string
	args  []any
}

// arg adds a query argument and returns its placeholder.
func (l *list) arg(v any) string {
	l.args = append(l.args, v)
	return fmt.Sprintf("$%d", len(l.args))
}

func (l *list) and(cond string) { l.where = append(l.where, cond) }

func (l *list) whereSQL() string {
	if len(l.where) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(l.where, " AND ")
}

// newestFirst restricts l to the rows after the cursor in (created_at DESC, id DESC) order and returns the ORDER BY
// and LIMIT clauses.
func (l *list) newestFirst(ctx context.Context, q querier, table, kind string, p store.Page) (string, error) {
	after, err := prep.Cursor(kind, p)
	if err != nil {
		return "", err
	}
	if after != "" {
		var at time.Time
		err := q.QueryRow(ctx, "SELECT created_at FROM "+table+" WHERE id = $1", after).Scan(&at)
		if errors.Is(err, pgx.ErrNoRows) {
			return "", prep.UnknownCursor(kind, after)
		}
		if err != nil {
			return "", dbErr("list "+table, err)
		}
		l.and(fmt.Sprintf("(created_at, id) < (%s::timestamptz, %s::uuid)", l.arg(at), l.arg(after)))
	}
	return fmt.Sprintf(" ORDER BY created_at DESC, id DESC LIMIT %d", prep.Limit(p)), nil
}
