package broker

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
)

// TestPruneKeepsUsedWritsUntilMaxSkew: a verifier accepts a writ until exp
// plus its skew (at most artifact.MaxSkew), and only the record of its use
// refuses it a second time until then. Pruning that record at exp would let
// a single-use writ be presented again for up to MaxSkew: the record is
// kept until exp + MaxSkew.
func TestPruneKeepsUsedWritsUntilMaxSkew(t *testing.T) {
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ctx, l := context.Background(), LimitsConfig{}
	l.defaults()
	exp := time.Now().Truncate(time.Second)
	if err := st.ConsumeWrit(ctx, "jti-1", exp, exp.Add(-10*time.Second)); err != nil {
		t.Fatal(err)
	}
	// Past exp, within the largest skew a verifier may allow.
	if err := prune(ctx, st, l, DefaultLineageRetain, exp.Add(artifact.MaxSkew-time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := st.ConsumeWrit(ctx, "jti-1", exp, exp.Add(artifact.MaxSkew-time.Second)); !errors.Is(err, store.ErrWritUsed) {
		t.Fatalf("second use within MaxSkew after pruning: %v, want ErrWritUsed (the writ can be replayed)", err)
	}
	// Past exp + MaxSkew no verifier accepts it: the record may go.
	if err := prune(ctx, st, l, DefaultLineageRetain, exp.Add(artifact.MaxSkew+time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := st.ConsumeWrit(ctx, "jti-1", exp, exp.Add(artifact.MaxSkew+time.Second)); err != nil {
		t.Fatalf("the record was not pruned after exp + MaxSkew: %v", err)
	}
}

// TestPruneKeepsIssuedWritsForTheRetention: an issued writ's record stays
// for the lineage retention after its expiry (the agent may still name it
// as a parent; a revoked one stays refused), and goes after.
func TestPruneKeepsIssuedWritsForTheRetention(t *testing.T) {
	st, err := store.OpenSQLite(filepath.Join(t.TempDir(), DBFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	ctx, l := context.Background(), LimitsConfig{}
	l.defaults()
	exp := time.Now().Truncate(time.Second)
	if err := st.PutIssuedWrit(ctx, store.IssuedWrit{JTI: "w", Subject: "s", Node: "n", IssuedAt: exp.Add(-time.Minute), ExpiresAt: exp}); err != nil {
		t.Fatal(err)
	}
	if err := prune(ctx, st, l, time.Hour, exp.Add(time.Hour-time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.IssuedWrit(ctx, "w"); err != nil {
		t.Fatalf("pruned within the retention: %v", err)
	}
	if err := prune(ctx, st, l, time.Hour, exp.Add(time.Hour+time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := st.IssuedWrit(ctx, "w"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("kept after the retention: %v", err)
	}
}
