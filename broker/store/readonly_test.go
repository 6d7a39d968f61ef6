package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestReadOnlyReadsALiveStore: a read-only store reads what the broker's
// store holds while the broker has it open, and every write through it
// fails, leaving the data as it was.
func TestReadOnlyReadsALiveStore(t *testing.T) {
	sqliteOnly(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	w := openTest(t, path)
	putNodes(t, w, "aa")
	ctx := context.Background()
	if err := w.PutAuditAnchor(ctx, AuditAnchor{NodeID: "aa", Size: 3, Root: []byte("r"), Checkpoint: []byte("cp"), ResultID: "r1", AnchoredAt: t0}); err != nil {
		t.Fatal(err)
	}
	r, err := OpenSQLiteReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = r.Close() }()
	nodes, err := r.Nodes(ctx)
	if err != nil || len(nodes) != 1 || nodes[0].ID != "aa" {
		t.Fatalf("nodes %v, %v; want node aa", nodes, err)
	}
	if a, err := r.LatestAuditAnchor(ctx, "aa"); err != nil || a.Size != 3 || !a.AnchoredAt.Equal(t0) {
		t.Fatalf("anchor %+v, %v", a, err)
	}
	if _, err := r.SetNodeState(ctx, "aa", NodeRevoked, "by a reader", t0); err == nil {
		t.Fatal("a read-only store changed a node's standing")
	}
	if err := r.PutNode(ctx, testNode("bb")); err == nil {
		t.Fatal("a read-only store enrolled a node")
	}
	if n, err := w.Node(ctx, "aa"); err != nil || n.State != NodeEnrolled {
		t.Fatalf("node after the refused writes: %+v, %v", n, err)
	}
	if _, err := w.Node(ctx, "bb"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("node bb: %v; want not found", err)
	}
}

// TestReadOnlyRefusesUnknownSchemas: no migration is run and no file is
// created; a database at another version than this build's, or one that is
// not a broker's, is refused.
func TestReadOnlyRefusesUnknownSchemas(t *testing.T) {
	sqliteOnly(t)
	ctx := context.Background()
	missing := filepath.Join(t.TempDir(), "none.db")
	if _, err := OpenSQLiteReadOnly(missing); err == nil {
		t.Fatal("opened a database that does not exist")
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the read-only open created %s (%v)", missing, err)
	}

	for name, edit := range map[string]string{
		"newer": `INSERT INTO schema_version (version, applied_at) VALUES (1000, 0)`,
		"older": `DELETE FROM schema_version WHERE version = (SELECT MAX(version) FROM schema_version)`,
		"none":  `DROP TABLE schema_version`,
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "broker.db")
			w := openTest(t, path)
			if _, err := w.db.ExecContext(ctx, edit); err != nil {
				t.Fatal(err)
			}
			before, _ := queryAll[int](w, `SELECT COUNT(*) FROM sqlite_master`)
			if r, err := OpenSQLiteReadOnly(path); !errors.Is(err, ErrSchemaUnknown) {
				if r != nil {
					_ = r.Close()
				}
				t.Fatalf("OpenSQLiteReadOnly: %v; want ErrSchemaUnknown", err)
			}
			after, _ := queryAll[int](w, `SELECT COUNT(*) FROM sqlite_master`)
			if before[0] != after[0] {
				t.Fatalf("the schema changed: %d objects, then %d", before[0], after[0])
			}
			if name == "older" {
				if v, _ := queryAll[int](w, `SELECT MAX(version) FROM schema_version`); v[0] != SchemaVersion()-1 {
					t.Fatalf("schema version %d after a read-only open; want %d (no migration)", v[0], SchemaVersion()-1)
				}
			}
		})
	}
}
