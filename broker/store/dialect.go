package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
)

// dialect is what differs between the databases the store runs on. The
// store's queries are written once, in the SQL both understand, with '?'
// placeholders; PostgreSQL gets them rebound to $1, $2, …
type dialect struct {
	name string
	// dollar: placeholders are $n (PostgreSQL), not '?' (SQLite).
	dollar bool
	// forUpdate and forShare end a SELECT that takes a row lock inside a
	// transaction (PostgreSQL). SQLite needs none: its transactions begin
	// IMMEDIATE, holding the one write lock from the start.
	forUpdate, forShare string
	// migrations are the schema, versions 1 to n.
	migrations *[]string
}

var (
	sqliteDialect = &dialect{name: "sqlite", migrations: &migrations}
	pgDialect     = &dialect{
		name: "postgres", dollar: true,
		forUpdate: " FOR UPDATE", forShare: " FOR SHARE",
		migrations: &pgMigrations,
	}
)

// conn is a *sql.DB that rebinds the store's queries for its dialect.
// On SQLite it also lets one write at a time into the file from this
// process (wl) and keeps each query prepared (stmts).
type conn struct {
	*sql.DB
	d     *dialect
	bound sync.Map // query -> rebound query
	// wl is the write lock this process's handles on one SQLite file
	// share (db and lax); nil on PostgreSQL, which orders writers itself.
	wl *writeLock
	// stmts holds a prepared statement per query (SQLite only: pgx keeps
	// its own per-connection cache). The queries are constants of this
	// package, so it stays small.
	stmts sync.Map // query -> *sql.Stmt
	// g group-commits the writes of ExecContext and DB.inTx (SQLite's
	// durable handle, docs/adr/0053); nil: each takes wl alone.
	g *group
}

// q returns query as this dialect writes it.
func (c *conn) q(query string) string {
	if !c.d.dollar {
		return query
	}
	if v, ok := c.bound.Load(query); ok {
		return v.(string)
	}
	r := rebind(query)
	c.bound.Store(query, r)
	return r
}

// stmt returns query prepared, or nil (PostgreSQL, or a query that does
// not prepare: it is then run unprepared and fails with its own error).
func (c *conn) stmt(ctx context.Context, query string) *sql.Stmt {
	if c.d.dollar {
		return nil
	}
	if v, ok := c.stmts.Load(query); ok {
		return v.(*sql.Stmt)
	}
	st, err := c.PrepareContext(ctx, query)
	if err != nil {
		return nil
	}
	if v, loaded := c.stmts.LoadOrStore(query, st); loaded {
		_ = st.Close() // another caller prepared it first
		return v.(*sql.Stmt)
	}
	return st
}

// Close closes the prepared statements, then the database.
func (c *conn) Close() error {
	var errs []error
	c.stmts.Range(func(k, v any) bool {
		errs = append(errs, v.(*sql.Stmt).Close())
		c.stmts.Delete(k)
		return true
	})
	return errors.Join(append(errs, c.DB.Close())...)
}

// ExecContext runs a statement that writes: on SQLite, holding the
// write lock, or as a write of the handle's group commit.
func (c *conn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	if c.g != nil {
		return c.g.exec(ctx, query, args...)
	}
	unlock, err := c.wl.lock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if st := c.stmt(ctx, query); st != nil {
		return st.ExecContext(ctx, args...)
	}
	return c.DB.ExecContext(ctx, c.q(query), args...) //nolint:gosec // G701: query is a constant of this package; input goes in args
}

// QueryContext runs a query that only reads: SQLite's WAL lets it run
// beside the writer, so it takes no lock.
func (c *conn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	if st := c.stmt(ctx, query); st != nil {
		return st.QueryContext(ctx, args...)
	}
	return c.DB.QueryContext(ctx, c.q(query), args...)
}

// QueryRowContext is QueryContext for one row. A statement that writes
// and returns a row (… RETURNING) goes through writeRow instead.
func (c *conn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	if st := c.stmt(ctx, query); st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return c.DB.QueryRowContext(ctx, c.q(query), args...) //nolint:gosec // G701: as ExecContext
}

// writeRow runs a statement that writes and returns one row (…
// RETURNING), scanning it into dest, holding the write lock until the
// row is read (SQLite runs the statement when the row is scanned).
func (c *conn) writeRow(ctx context.Context, query string, args []any, dest ...any) error {
	unlock, err := c.wl.lock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return c.QueryRowContext(ctx, query, args...).Scan(dest...)
}

// BeginTx begins a transaction. Every transaction of the store may
// write, so on SQLite it holds the write lock until it commits or rolls
// back.
func (c *conn) BeginTx(ctx context.Context, opts *sql.TxOptions) (*txn, error) {
	unlock, err := c.wl.lock(ctx)
	if err != nil {
		return nil, err
	}
	tx, err := c.DB.BeginTx(ctx, opts)
	if err != nil {
		unlock()
		return nil, err
	}
	return &txn{Tx: tx, c: c, unlock: sync.OnceFunc(unlock)}, nil
}

// txn is a *sql.Tx that rebinds like its conn and releases its write
// lock when it ends.
type txn struct {
	*sql.Tx
	c      *conn
	unlock func()
	// detached: the transaction is a group commit's (group.commit), which
	// holds several callers' writes. Its statements run without their
	// caller's cancellation, because the driver cancels a statement by
	// interrupting the connection, and SQLite rolls back the whole
	// transaction when a write inside it is interrupted. They run
	// prepared (conn.stmt), as ExecContext's did before they were grouped.
	detached bool
}

func (t *txn) Commit() error {
	defer t.unlock()
	return t.Tx.Commit()
}

func (t *txn) Rollback() error {
	defer t.unlock()
	return t.Tx.Rollback()
}

// detach returns, in a group commit's transaction (detached), ctx without
// its cancellation and query's prepared statement bound to t (nil when it
// could not be prepared); otherwise ctx as it is and nil.
func (t *txn) detach(ctx context.Context, query string) (context.Context, *sql.Stmt) {
	if !t.detached {
		return ctx, nil
	}
	ctx = context.WithoutCancel(ctx)
	if st := t.c.stmt(ctx, query); st != nil {
		return ctx, t.StmtContext(ctx, st)
	}
	return ctx, nil
}

func (t *txn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	ctx, st := t.detach(ctx, query)
	if st != nil {
		return st.ExecContext(ctx, args...)
	}
	return t.Tx.ExecContext(ctx, t.c.q(query), args...)
}

func (t *txn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	ctx, st := t.detach(ctx, query)
	if st != nil {
		return st.QueryContext(ctx, args...)
	}
	return t.Tx.QueryContext(ctx, t.c.q(query), args...)
}

func (t *txn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	ctx, st := t.detach(ctx, query)
	if st != nil {
		return st.QueryRowContext(ctx, args...)
	}
	return t.Tx.QueryRowContext(ctx, t.c.q(query), args...)
}

// writeLock lets one write transaction at a time into a SQLite file from
// this process. SQLite has one writer per file; without this, writers of
// one process queue in SQLite's busy handler, which polls with sleeps of
// up to 100 ms and fails with SQLITE_BUSY after busy_timeout, so under
// load some writers wait out the whole timeout while others pass. Here
// they queue in Go, in order, and the file lock is free when each comes
// to it; busy_timeout still covers other processes (writ report, a
// second broker on the same file). A writer that waits longer than wait
// fails with ErrBusy.
type writeLock struct {
	ch   chan struct{}
	wait time.Duration
}

// writeWait is how long a writer queues in this process before it is
// refused as busy: busy_timeout's 5 s, so a writer waits no longer than
// it did in SQLite's queue.
const writeWait = 5 * time.Second

func newWriteLock(wait time.Duration) *writeLock {
	return &writeLock{ch: make(chan struct{}, 1), wait: wait}
}

// lock takes the lock (a nil lock: nothing to take) and returns its
// release.
func (l *writeLock) lock(ctx context.Context) (func(), error) {
	if l == nil {
		return func() {}, nil
	}
	select {
	case l.ch <- struct{}{}:
		return l.release, nil
	default:
	}
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case l.ch <- struct{}{}:
		return l.release, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
		return nil, fmt.Errorf("store: waited %s for the write lock: %w", l.wait, ErrBusy)
	}
}

func (l *writeLock) release() { <-l.ch }

// rebind replaces each '?' placeholder outside quotes with $1, $2, …
func rebind(query string) string {
	var (
		b     strings.Builder
		n     int
		quote byte // the open quote, or 0
	)
	b.Grow(len(query) + 16)
	for i := 0; i < len(query); i++ {
		ch := query[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0
			}
		case ch == '\'' || ch == '"':
			quote = ch
		case ch == '?':
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
			continue
		}
		b.WriteByte(ch)
	}
	return b.String()
}
