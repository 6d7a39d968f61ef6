package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
)

// ErrSchemaUnknown is returned by OpenSQLiteReadOnly for a database whose
// schema version is not the one this build writes.
var ErrSchemaUnknown = errors.New("store: schema version unknown to this build")

// roPragmas are set on every read-only connection: the file is opened
// read-only (mode=ro) and every statement that would write is refused
// (query_only), so nothing a reader does can change the broker's state.
const roPragmas = "mode=ro&_pragma=busy_timeout(5000)&_pragma=query_only(1)"

// OpenSQLiteReadOnly opens an existing broker database for reading only:
// it creates nothing, runs no migration, and refuses a database whose schema
// version is not exactly this build's (ErrSchemaUnknown): an older one would
// lack columns the queries read, a newer one may mean something else by
// them. Writes through the returned store fail. For auditors and reports
// (`writ report`) that run beside a live broker.
func OpenSQLiteReadOnly(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("store: open: empty path")
	}
	path = filepath.Clean(path)
	if _, err := os.Stat(path); err != nil { // mode=ro would not create it, but say so clearly
		return nil, fmt.Errorf("store: open read-only: %w", err)
	}
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+roPragmas)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	if err := checkSchema(context.Background(), db); err != nil {
		return nil, errors.Join(fmt.Errorf("store: open %s: %w", path, err), db.Close())
	}
	c := &conn{DB: db, d: sqliteDialect}
	return &DB{db: c, lax: c, d: sqliteDialect}, nil
}

// checkSchema requires the database's schema version to be this build's.
func checkSchema(ctx context.Context, db *sql.DB) error {
	var current int
	err := db.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&current)
	if err != nil {
		return fmt.Errorf("%w: no schema version (%w): is it a broker database?", ErrSchemaUnknown, err)
	}
	if current != len(migrations) {
		return fmt.Errorf("%w: the database is at version %d, this build reads version %d (an older database is migrated when its broker starts; a newer one needs a newer writ)",
			ErrSchemaUnknown, current, len(migrations))
	}
	return nil
}

// SchemaVersion is the schema version this build writes and reads.
func SchemaVersion() int { return len(migrations) }
