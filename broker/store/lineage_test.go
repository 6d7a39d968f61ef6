package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestIssuedWrits(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	w := IssuedWrit{JTI: "j1", Subject: "spiffe://example.org/app/web", Node: "spiffe://example.org/node/a",
		IssuedAt: t0, ExpiresAt: t0.Add(time.Minute)}
	if err := s.PutIssuedWrit(ctx, w); err != nil {
		t.Fatal(err)
	}
	if err := s.PutIssuedWrit(ctx, w); err == nil {
		t.Fatal("a jti was recorded twice")
	}
	got, err := s.IssuedWrit(ctx, "j1")
	if err != nil || !reflect.DeepEqual(got, w) {
		t.Fatalf("IssuedWrit = %+v, %v; want %+v", got, err, w)
	}
	if _, err := s.IssuedWrit(ctx, "j2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown jti: %v, want ErrNotFound", err)
	}
	if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: "j3", Subject: "x", Node: "y"}); err == nil {
		t.Fatal("a writ without expiry was recorded")
	}
	if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: "j4", Subject: "x", ExpiresAt: t0}); err == nil {
		t.Fatal("a writ without its node was recorded")
	}
	if err := s.PruneIssuedWrits(ctx, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.IssuedWrit(ctx, "j1"); err != nil {
		t.Fatalf("pruned at its exact expiry: %v", err)
	}
	if err := s.PruneIssuedWrits(ctx, t0.Add(time.Minute+1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.IssuedWrit(ctx, "j1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("expired writ kept: %v", err)
	}
}

// TestIssuedWritsMigration9: a writ recorded before migration 9 (issued
// to its node, the only subject then) reads back with that node.
func TestIssuedWritsMigration9(t *testing.T) {
	sqliteOnly(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	all := migrations
	migrations = all[:8]
	s, err := OpenSQLite(path)
	migrations = all
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := s.db.ExecContext(ctx, `INSERT INTO issued_writs (jti, subject, issued_at, expires_at) VALUES ('old', 'spiffe://example.org/node/a', 1, ?)`,
		t0.Add(time.Minute).UnixNano()); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path)
	got, err := s.IssuedWrit(ctx, "old")
	if err != nil || got.Node != "spiffe://example.org/node/a" || got.Subject != got.Node {
		t.Fatalf("a writ from before migration 9: %+v, %v; want its subject as its node", got, err)
	}
}

// TestBundleSequence: the number changes exactly when the content does,
// and survives reopening the store.
func TestBundleSequence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	s, ctx := openTest(t, path), context.Background()
	seq := func(s *SQLite, content string) uint64 {
		t.Helper()
		n, err := s.BundleSequence(ctx, []byte(content))
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if got := seq(s, "a"); got != 1 {
		t.Fatalf("first sequence %d, want 1", got)
	}
	if got := seq(s, "a"); got != 1 {
		t.Fatalf("same content: %d, want 1", got)
	}
	if got := seq(s, "b"); got != 2 {
		t.Fatalf("new content: %d, want 2", got)
	}
	if got := seq(openTest(t, path), "b"); got != 2 {
		t.Fatalf("after reopening: %d, want 2", got)
	}
	if got := seq(s, "a"); got != 3 {
		t.Fatalf("content back to an earlier one: %d, want 3 (never reused)", got)
	}
	if _, err := s.BundleSequence(ctx, nil); err == nil {
		t.Fatal("no content accepted")
	}
}

// TestIssuedWritLineage: parent, rule, scope and depth read back as
// written; a nil scope (any rule) and an empty one (none) stay apart.
func TestIssuedWritLineage(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	for _, w := range []IssuedWrit{
		{JTI: "root", Subject: "s", Node: "n", IssuedAt: t0, ExpiresAt: t0.Add(time.Minute), Rule: "agent", Scope: []string{"tool", "fetch"}},
		{JTI: "leaf", Subject: "s", Node: "n", IssuedAt: t0, ExpiresAt: t0.Add(time.Minute), Parent: "root", Rule: "fetch", Scope: []string{}, Depth: 1},
		{JTI: "free", Subject: "s", Node: "n", IssuedAt: t0, ExpiresAt: t0.Add(time.Minute)},
	} {
		if err := s.PutIssuedWrit(ctx, w); err != nil {
			t.Fatal(err)
		}
		got, err := s.IssuedWrit(ctx, w.JTI)
		if err != nil || !reflect.DeepEqual(got, w) {
			t.Fatalf("IssuedWrit(%s) = %+v, %v; want %+v", w.JTI, got, err, w)
		}
	}
}

// TestRevokeWrit: revoking a writ revokes its descendants, transitively,
// and nothing else; a second revocation revokes nothing new; a child of a
// revoked writ is not recorded (ErrParentRevoked); revoked writs are
// listed until they expire.
func TestRevokeWrit(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	put := func(jti, parent string, exp time.Duration) {
		t.Helper()
		if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: jti, Subject: "s", Node: "n", IssuedAt: t0, ExpiresAt: t0.Add(exp), Parent: parent}); err != nil {
			t.Fatal(err)
		}
	}
	put("a", "", time.Minute)
	put("b", "a", time.Minute)
	put("c", "b", 2*time.Minute)
	put("d", "a", time.Second)
	put("other", "", time.Minute)
	put("other-child", "other", time.Minute)
	if _, err := s.RevokeWrit(ctx, "nope", "x", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown jti: %v, want ErrNotFound", err)
	}
	got, err := s.RevokeWrit(ctx, "b", "compromised", t0)
	if err != nil {
		t.Fatal(err)
	}
	if jtis := jtisOf(got); !slices.Equal(jtis, []string{"b", "c"}) {
		t.Fatalf("revoked %v, want [b c]", jtis)
	}
	got, err = s.RevokeWrit(ctx, "a", "compromised", t0)
	if err != nil {
		t.Fatal(err)
	}
	if jtis := jtisOf(got); !slices.Equal(jtis, []string{"a", "d"}) {
		t.Fatalf("revoked %v, want [a d] (b and c were revoked before)", jtis)
	}
	for _, jti := range []string{"other", "other-child"} {
		if w, err := s.IssuedWrit(ctx, jti); err != nil || !w.RevokedAt.IsZero() {
			t.Fatalf("%s: %+v, %v: revoked with an unrelated writ", jti, w, err)
		}
	}
	if w, err := s.IssuedWrit(ctx, "c"); err != nil || !w.RevokedAt.Equal(t0) || w.RevokeReason != "compromised" {
		t.Fatalf("c: %+v, %v: not revoked", w, err)
	}
	if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: "late", Subject: "s", Node: "n", ExpiresAt: t0.Add(time.Minute), Parent: "c"}); !errors.Is(err, ErrParentRevoked) {
		t.Fatalf("child of a revoked writ: %v, want ErrParentRevoked", err)
	}
	if _, err := s.IssuedWrit(ctx, "late"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("child of a revoked writ recorded: %v", err)
	}
	live, err := s.RevokedWrits(ctx, t0.Add(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if jtis := jtisOf(live); !slices.Equal(jtis, []string{"a", "b", "c"}) {
		t.Fatalf("revoked and unexpired: %v, want [a b c] (d expired)", jtis)
	}
}

func jtisOf(ws []IssuedWrit) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.JTI)
	}
	slices.Sort(out)
	return out
}

// TestRevokeWritLoop: parent links that loop (never made by issuance, but
// a store is untrusted) end the walk; every writ on the loop is revoked
// once.
func TestRevokeWritLoop(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	for _, w := range [][2]string{{"a", "c"}, {"b", "a"}, {"c", "b"}} {
		if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: w[0], Subject: "s", Node: "n", IssuedAt: t0, ExpiresAt: t0.Add(time.Minute), Parent: w[1]}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.RevokeWrit(ctx, "b", "loop", t0)
	if err != nil || len(got) != 3 || got[0].JTI != "b" {
		t.Fatalf("revoked %v, %v; want b first, then a and c", jtisOf(got), err)
	}
}
