// Package sqlite is the SQLite implementation of store.Store, on modernc.org/sqlite (pure Go, no cgo) through
// database/sql. It is the embedded store of `aetherium serve`; internal/store/storetest holds the conformance suite
// it shares with the PostgreSQL store.
//
// Concurrency: SQLite allows one writer at a time. Every write goes through a pool of exactly one connection, so
// writers from many goroutines queue in Go (cheaply, honouring their contexts) instead of spinning in SQLite's busy
// handler; read-modify-write updates are BEGIN IMMEDIATE transactions on it, so they hold the write lock from their
// first read. Reads use a separate pool of read-only connections, which WAL mode lets run beside the writer.
// busy_timeout still covers other processes (an admin command) writing the same file.
package sqlite

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/pressly/goose/v3"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/aetherium/aetherium/internal/model"
	"github.com/aetherium/aetherium/internal/store"
	"github.com/aetherium/aetherium/internal/store/internal/prep"
	"github.com/aetherium/aetherium/internal/store/migrations"
)

// readers is the size of the read pool.
const readers = 4

// BusyTimeout is how long a connection waits for another process's write lock before failing with SQLITE_BUSY.
const BusyTimeout = 5 * time.Second

// Store is a store.Store on one SQLite database file. Open it with Open and create its schema with Migrate.
type Store struct {
	path string
	w    *sql.DB // exactly one connection: every write
	r    *sql.DB // read-only connections
	// Prepared statements of the fixed queries, per pool. database/sql re-prepares (re-parses) a query on every
	// call otherwise, which was a third of the cost of an Update.
	ws, rs *stmtCache
}

var _ store.Store = (*Store)(nil)

// Synchronous is the writer's synchronous pragma. With WAL, FULL syncs the log on every commit, so a row is on disk
// before the write returns: the API answers 202 only after the task's rows are written, and NORMAL (sync only at
// checkpoints) could lose such an acknowledged task on power loss. The cost is one fsync per write transaction
// (see BenchmarkSynchronous). Readers never write, so their setting does not matter; they keep NORMAL.
const Synchronous = "FULL"

// dsn is the modernc.org/sqlite data source name for path. The pragmas are DSN parameters, not statements run once,
// so every connection the pools open gets them. _txlock=immediate makes BeginTx issue BEGIN IMMEDIATE.
func dsn(path string, readOnly bool, synchronous string) string {
	q := []string{
		fmt.Sprintf("_pragma=busy_timeout(%d)", BusyTimeout.Milliseconds()),
		"_pragma=foreign_keys(1)",
	}
	if readOnly {
		synchronous = "NORMAL"
	}
	q = append(q, "_pragma=synchronous("+synchronous+")")
	if readOnly {
		// journal_mode is a property of the file, set by the writer; query_only guards against a write slipping
		// into the read pool, where it would bypass the single-writer queue.
		q = append(q, "_pragma=query_only(1)")
	} else {
		q = append(q, "_pragma=journal_mode(WAL)", "_txlock=immediate")
	}
	return path + "?" + strings.Join(q, "&")
}

// Open opens (creating if needed, with its parent directory) the database file at path. It does not create or
// upgrade the schema: call Migrate for that. In-memory databases are refused: the read and write pools would each
// see a different empty database.
func Open(ctx context.Context, path string) (*Store, error) {
	return open(ctx, path, Synchronous)
}

// open is Open with the writer's synchronous pragma given (benchmarks compare the settings).
func open(ctx context.Context, path, synchronous string) (*Store, error) {
	switch {
	case path == "":
		return nil, errors.New("sqlite: empty database path")
	case path == ":memory:" || strings.HasPrefix(path, "file::memory:") || strings.Contains(path, "mode=memory"):
		return nil, errors.New("sqlite: in-memory databases are not supported; use a file")
	case strings.ContainsAny(path, "?#"):
		return nil, fmt.Errorf("sqlite: database path %q: '?' and '#' are not allowed (pragmas are set by the store)", path)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlite: database path %q: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(abs), 0o750); err != nil {
		return nil, fmt.Errorf("sqlite: create directory of %s: %w", abs, err)
	}
	w, err := sql.Open("sqlite", dsn(abs, false, synchronous))
	if err != nil {
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	w.SetMaxOpenConns(1)
	w.SetMaxIdleConns(1)
	w.SetConnMaxIdleTime(0)
	w.SetConnMaxLifetime(0)
	// The writer connects first so the file exists and is in WAL mode before a read-only connection opens it.
	if err := w.PingContext(ctx); err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	r, err := sql.Open("sqlite", dsn(abs, true, synchronous))
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	r.SetMaxOpenConns(readers)
	r.SetMaxIdleConns(readers)
	if err := r.PingContext(ctx); err != nil {
		r.Close()
		w.Close()
		return nil, fmt.Errorf("sqlite: open %s: %w", abs, err)
	}
	return &Store{path: abs, w: w, r: r, ws: newStmtCache(w), rs: newStmtCache(r)}, nil
}

// Path is the absolute path of the database file.
func (s *Store) Path() string { return s.path }

// Migrate brings the schema up to date; it is a no-op when nothing is pending.
func (s *Store) Migrate(ctx context.Context) error {
	fsys, err := migrations.SQLite()
	if err != nil {
		return err
	}
	// Do not Close the provider: that would close s.w.
	p, err := goose.NewProvider(goose.DialectSQLite3, s.w, fsys, goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("sqlite: migrate: %w", err)
	}
	return nil
}

// Ping checks that the database answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.r.PingContext(ctx); err != nil {
		return fmt.Errorf("sqlite: ping: %w", err)
	}
	return nil
}

// Close closes both pools.
func (s *Store) Close() error {
	return errors.Join(s.rs.close(), s.ws.close(), s.r.Close(), s.w.Close())
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

// txStmts are the statements of one read-modify-write, bound to its transaction.
// txStmts are Update's statements bound to its transaction, and the transaction itself, where the events of the
// change are appended (appendEvents).
type txStmts struct {
	sel, upd *sql.Stmt
	tx       *sql.Tx
}

// update runs fn in a write transaction (BEGIN IMMEDIATE on the single writer connection), so the row fn reads
// cannot change before fn's write commits. The statements are prepared before the transaction begins: preparing
// needs a connection, and inside the transaction the writer's only one is taken. Bound to the transaction, they
// reuse what was prepared on that connection.
func (s *Store) update(ctx context.Context, selectQuery, updateQuery string, fn func(st txStmts) error) error {
	sel, err := s.ws.get(ctx, selectQuery)
	if err != nil {
		return dbErr("prepare", err)
	}
	upd, err := s.ws.get(ctx, updateQuery)
	if err != nil {
		return dbErr("prepare", err)
	}
	tx, err := s.w.BeginTx(ctx, nil)
	if err != nil {
		return dbErr("begin", err)
	}
	if err := fn(txStmts{sel: tx.StmtContext(ctx, sel), upd: tx.StmtContext(ctx, upd), tx: tx}); err != nil {
		_ = tx.Rollback() // the error that matters is fn's
		return err
	}
	if err := tx.Commit(); err != nil {
		return dbErr("commit", err)
	}
	return nil
}

// ---- statements

// stmtCache prepares each query once per pool. database/sql then keeps it prepared on each connection it runs on.
type stmtCache struct {
	db *sql.DB
	mu sync.Mutex
	m  map[string]*sql.Stmt
}

func newStmtCache(db *sql.DB) *stmtCache { return &stmtCache{db: db, m: map[string]*sql.Stmt{}} }

func (c *stmtCache) get(ctx context.Context, query string) (*sql.Stmt, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if st, ok := c.m[query]; ok {
		return st, nil
	}
	st, err := c.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	c.m[query] = st
	return st, nil
}

func (c *stmtCache) close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for q, st := range c.m {
		errs = append(errs, st.Close())
		delete(c.m, q)
	}
	return errors.Join(errs...)
}

// errRow is a row whose query could not even be prepared.
type errRow struct{ err error }

func (r errRow) Scan(...any) error { return r.err }

// exec runs a fixed write statement on the writer.
func (s *Store) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, err := s.ws.get(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(ctx, args...)
}

// row runs a fixed single-row query on the readers.
func (s *Store) row(ctx context.Context, query string, args ...any) scanner {
	st, err := s.rs.get(ctx, query)
	if err != nil {
		return errRow{err}
	}
	return st.QueryRowContext(ctx, args...)
}

// ---- errors

func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code()
	}
	return 0
}

// uniqueViolation reports whether err is a unique violation and whether it was on the primary key. detail is
// SQLite's message, which names the columns ("UNIQUE constraint failed: api_keys.hash").
func uniqueViolation(err error) (primary bool, detail string, ok bool) {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY:
		return true, err.Error(), true
	case sqlite3.SQLITE_CONSTRAINT_UNIQUE:
		return false, err.Error(), true
	}
	return false, "", false
}

// dbErr wraps a database error, turning constraint violations the store's checks did not catch into ErrInvalidInput.
func dbErr(op string, err error) error {
	switch sqliteCode(err) {
	case sqlite3.SQLITE_CONSTRAINT_CHECK, sqlite3.SQLITE_CONSTRAINT_NOTNULL, sqlite3.SQLITE_CONSTRAINT_DATATYPE:
		return fmt.Errorf("sqlite: %s: %w: %w", op, model.ErrInvalidInput, err)
	}
	return fmt.Errorf("sqlite: %s: %w", op, err)
}

// ---- values

// timeLayout has a fixed number of fractional digits so that string order is time order (keyset pagination
// compares these strings). RFC3339Nano would drop trailing zeros and sort "…:05Z" after "…:05.1Z".
const timeLayout = "2006-01-02T15:04:05.000000Z"

func ts(t time.Time) string { return prep.Time(t).UTC().Format(timeLayout) }

func tsPtr(t *time.Time) any {
	if t == nil {
		return nil
	}
	return ts(*t)
}

func parseTS(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("bad stored time %q: %w", s, err)
	}
	return prep.Time(t), nil
}

func parseTSPtr(s sql.NullString) (*time.Time, error) {
	if !s.Valid {
		return nil, nil
	}
	t, err := parseTS(s.String)
	if err != nil {
		return nil, err
	}
	return &t, nil
}

// nullText stores an empty json document or reference as NULL and anything else as text (the tables are STRICT:
// a []byte would be a blob, which a TEXT column refuses).
func nullText[T ~string | ~[]byte](v T) any {
	if len(v) == 0 {
		return nil
	}
	return string(v)
}

// blob stores command output byte for byte. An empty blob must not be nil, which database/sql would bind as NULL.
func blob(s string) []byte {
	if s == "" {
		return []byte{}
	}
	return []byte(s)
}

func docBytes(s sql.NullString) []byte {
	if !s.Valid || s.String == "" {
		return nil
	}
	return []byte(s.String)
}

type scanner interface{ Scan(dest ...any) error }

// list builds a filtered, keyset-paginated SELECT.
type list struct {
	where []string
	args  []any
}

func (l *list) arg(v any) string {
	l.args = append(l.args, v)
	return "?"
}

// in returns "(?, ?, ...)" for values.
func (l *list) in(values []string) string {
	ph := make([]string, len(values))
	for i, v := range values {
		ph[i] = l.arg(v)
	}
	return "(" + strings.Join(ph, ", ") + ")"
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
func (l *list) newestFirst(ctx context.Context, db *sql.DB, table, kind string, p store.Page) (string, error) {
	after, err := prep.Cursor(kind, p)
	if err != nil {
		return "", err
	}
	if after != "" {
		var at string
		err := db.QueryRowContext(ctx, "SELECT created_at FROM "+table+" WHERE id = ?", after).Scan(&at)
		if errors.Is(err, sql.ErrNoRows) {
			return "", prep.UnknownCursor(kind, after)
		}
		if err != nil {
			return "", dbErr("list "+table, err)
		}
		l.and(fmt.Sprintf("(created_at, id) < (%s, %s)", l.arg(at), l.arg(after)))
	}
	return fmt.Sprintf(" ORDER BY created_at DESC, id DESC LIMIT %d", prep.Limit(p)), nil
}

// collect runs a query and scans every row with scan.
func collect[T any](ctx context.Context, db *sql.DB, op, query string, args []any, scan func(scanner) (*T, error)) ([]*T, error) {
	rows, err := db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, dbErr(op, err)
	}
	defer rows.Close()
	out := []*T{}
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, dbErr(op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, dbErr(op, err)
	}
	return out, nil
}
