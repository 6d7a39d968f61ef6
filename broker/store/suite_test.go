package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" database/sql driver, for the admin connection
)

// The store suite runs unchanged on both databases: TestMain runs every
// test once with backend "sqlite", then once with backend "postgres"
// (each test opens its stores through openTest and newStore, which open
// the backend's database). A test that is about SQLite itself (file
// modes, pragmas, the read-only opener) skips on PostgreSQL, saying so.
var backend = "sqlite"

const (
	// requirePostgresEnv=1 makes an unreachable PostgreSQL a failure,
	// not a skip (.ci/run sets it).
	requirePostgresEnv = "WRIT_REQUIRE_POSTGRES"
	// postgresAdminEnv overrides pgAdminDSN: a database to connect to
	// for creating and dropping the tests' databases.
	postgresAdminEnv = "WRIT_TEST_POSTGRES"
	pgAdminDSN       = "postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
	backendEnv       = "WRIT_STORE_TEST_BACKEND" // for child processes
)

func TestMain(m *testing.M) {
	if b := os.Getenv(backendEnv); b != "" { // a child process of a test
		backend = b
		os.Exit(m.Run())
	}
	fmt.Println("store suite: the SQLite pass")
	code := m.Run()
	fmt.Println("store suite: the PostgreSQL pass (the same tests again)")
	backend = "postgres"
	if c := m.Run(); c != 0 {
		code = c
	}
	os.Exit(code)
}

var (
	pgOnce  sync.Once
	pgAdmin *sql.DB
	pgErr   error
	pgDBs   sync.Map // location (a path under t.TempDir) -> DSN of its database
)

func adminDSN() string {
	if dsn := os.Getenv(postgresAdminEnv); dsn != "" {
		return dsn
	}
	return pgAdminDSN
}

// requirePostgres returns the admin connection, or skips the test (fails
// it with WRIT_REQUIRE_POSTGRES=1) when PostgreSQL is unreachable.
func requirePostgres(t *testing.T) *sql.DB {
	t.Helper()
	pgOnce.Do(func() {
		pgAdmin, pgErr = sql.Open("pgx", adminDSN())
		if pgErr == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pgErr = pgAdmin.PingContext(ctx)
		}
	})
	if pgErr != nil {
		msg := fmt.Sprintf("PostgreSQL at %s is unreachable: %v", Redact(adminDSN()), pgErr)
		if os.Getenv(requirePostgresEnv) == "1" {
			t.Fatalf("%s (%s=1: required)", msg, requirePostgresEnv)
		}
		t.Skipf("%s: skipping the PostgreSQL variant (set %s=1 to fail instead)", msg, requirePostgresEnv)
	}
	return pgAdmin
}

// location is where the store at path lives on the backend: path itself
// on SQLite; on PostgreSQL the DSN of a fresh database writ_test_<random>,
// one per path, dropped when the test ends.
func location(t *testing.T, path string) string {
	t.Helper()
	if backend == "sqlite" {
		return path
	}
	if dsn, ok := pgDBs.Load(path); ok {
		return dsn.(string)
	}
	admin := requirePostgres(t)
	name := "writ_test_" + hex.EncodeToString(randomBytes(t, 8))
	ctx := context.Background()
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		if _, err := admin.ExecContext(ctx, "DROP DATABASE "+name+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database %s: %v", name, err)
		}
	})
	cfgDSN := adminDSN()
	dsn, err := withDatabase(cfgDSN, name)
	if err != nil {
		t.Fatal(err)
	}
	pgDBs.Store(path, dsn)
	return dsn
}

// openAt opens the store at a location of the backend.
func openAt(loc string) (*DB, error) {
	if backend == "sqlite" {
		return OpenSQLite(loc)
	}
	return OpenPostgres(context.Background(), loc)
}

// sqliteOnly skips a test about SQLite itself on the other backends.
func sqliteOnly(t *testing.T) {
	t.Helper()
	if backend != "sqlite" {
		t.Skipf("about SQLite itself; ran in the SQLite pass (backend now %s)", backend)
	}
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// withDatabase is dsn naming database name instead.
func withDatabase(dsn, name string) (string, error) {
	if !strings.HasPrefix(dsn, "postgres://") && !strings.HasPrefix(dsn, "postgresql://") {
		return dsn + " dbname=" + name, nil // key=value form: the last one wins
	}
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("%s: the DSN does not parse (not shown: it may hold a password)", postgresAdminEnv)
	}
	u.Path = "/" + name
	return u.String(), nil
}
