package store

import (
	"context"
	"database/sql"
	"strconv"
	"strings"
	"sync"
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
type conn struct {
	*sql.DB
	d     *dialect
	bound sync.Map // query -> rebound query
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

func (c *conn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return c.DB.ExecContext(ctx, c.q(query), args...) //nolint:gosec // G701: query is a constant of this package; input goes in args
}

func (c *conn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return c.DB.QueryContext(ctx, c.q(query), args...)
}

func (c *conn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return c.DB.QueryRowContext(ctx, c.q(query), args...) //nolint:gosec // G701: as ExecContext
}

func (c *conn) BeginTx(ctx context.Context, opts *sql.TxOptions) (*txn, error) {
	tx, err := c.DB.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return &txn{Tx: tx, c: c}, nil
}

// txn is a *sql.Tx that rebinds like its conn.
type txn struct {
	*sql.Tx
	c *conn
}

func (t *txn) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	return t.Tx.ExecContext(ctx, t.c.q(query), args...)
}

func (t *txn) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	return t.Tx.QueryContext(ctx, t.c.q(query), args...)
}

func (t *txn) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	return t.Tx.QueryRowContext(ctx, t.c.q(query), args...)
}

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
