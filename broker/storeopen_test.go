package broker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestStoreConfig: SQLite in DATA_DIR by default; postgres needs a DSN;
// an unknown driver is refused; the DSN's password is never shown.
func TestStoreConfig(t *testing.T) {
	load := func(store string) (*Config, error) {
		dir := t.TempDir()
		path := writeTestConfig(t, dir, 1, defaultRules)
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(store); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
		return LoadConfig(path, false)
	}
	cfg, err := load("")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Store.Driver != "sqlite" || cfg.Store.DSN != filepath.Join(cfg.DataDir, DBFile) {
		t.Errorf("default store %+v, want sqlite in %s", cfg.Store, cfg.DataDir)
	}
	for store, want := range map[string]string{
		"store:\n  driver: postgres\n":                     "store.dsn",
		"store:\n  driver: mysql\n  dsn: x\n":              "store.driver",
		"store:\n  driver: Postgres\n  dsn: postgres://\n": "store.driver",
	} {
		if _, err := load(store); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: %v, want an error about %s", store, err, want)
		}
	}
	cfg, err = load("store:\n  driver: postgres\n  dsn: postgres://writ:s3cret-pw@db.example:5432/writ\n")
	if err != nil {
		t.Fatal(err)
	}
	if s := cfg.Store.String(); strings.Contains(s, "s3cret-pw") || !strings.Contains(s, "db.example:5432/writ") {
		t.Errorf("store shown as %q: want the database without the password", s)
	}
	// A broker that cannot reach its database does not start, and says
	// which database without the password.
	cfg.Store.DSN = "postgres://writ:s3cret-pw@127.0.0.1:1/writ?connect_timeout=2"
	if b, err := New(cfg, nil); err == nil {
		_ = b.Stop()
		t.Fatal("a broker started on an unreachable database")
	} else if strings.Contains(err.Error(), "s3cret-pw") {
		t.Errorf("error shows the password: %v", err)
	}
}
