package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPruneResults: old results go, except each node's latest and those an
// unexpired SVID was issued on; expired SVID records go with them.
func TestPruneResults(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	for _, id := range []string{"n1", "n2"} {
		if err := s.PutNode(ctx, Node{ID: id, SPIFFEID: "spiffe://x/node/" + id, EnrolledAt: t0}); err != nil {
			t.Fatal(err)
		}
	}
	put := func(id, node string, at time.Time) {
		if err := s.PutResult(ctx, Result{ID: id, NodeID: node, Time: at, Passed: true}); err != nil {
			t.Fatal(err)
		}
	}
	day := 24 * time.Hour
	put("old", "n1", t0)
	put("old-svid", "n1", t0.Add(time.Hour))
	put("old-expired-svid", "n1", t0.Add(2*time.Hour))
	put("recent", "n1", t0.Add(9*day))
	put("only", "n2", t0) // n2's latest, however old
	svid := func(serial, result string, notAfter time.Time) {
		if err := s.PutSVID(ctx, SVID{Serial: serial, NodeID: "n1", SPIFFEID: "spiffe://x/node/n1", ResultID: result,
			IssuedAt: t0, NotAfter: notAfter}); err != nil {
			t.Fatal(err)
		}
	}
	svid("a", "old-svid", t0.Add(30*day))
	svid("b", "old-expired-svid", t0.Add(time.Hour))

	if err := s.PruneResults(ctx, t0.Add(5*day)); err != nil {
		t.Fatal(err)
	}
	for id, kept := range map[string]bool{"old": false, "old-svid": true, "old-expired-svid": false, "recent": true, "only": true} {
		_, err := s.Result(ctx, id)
		if kept && err != nil || !kept && !errors.Is(err, ErrNotFound) {
			t.Errorf("result %s: %v, want kept=%v", id, err, kept)
		}
	}
	svids, err := s.SVIDs(ctx, "n1")
	if err != nil || len(svids) != 1 || svids[0].Serial != "a" {
		t.Fatalf("SVIDs after pruning: %+v %v", svids, err)
	}
}

// TestTrimNonces keeps a node's newest nonces only.
func TestTrimNonces(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	if err := s.PutNode(ctx, Node{ID: "n1", SPIFFEID: "spiffe://x/node/n1", EnrolledAt: t0}); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if err := s.PutNonce(ctx, Nonce{Value: []byte{byte(i)}, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.TrimNonces(ctx, "n1", 2); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		err := s.ConsumeNonce(ctx, "n1", []byte{byte(i)}, t0)
		if i >= 3 && err != nil || i < 3 && !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("nonce %d: %v", i, err)
		}
	}
}

// TestPendingEnrollments counts live enrollments and prunes expired ones.
func TestPendingEnrollments(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	for i, exp := range []time.Time{t0.Add(-time.Minute), t0.Add(time.Minute), t0.Add(2 * time.Minute)} {
		e := Enrollment{ID: string(rune('a' + i)), Node: Node{ID: "n", SPIFFEID: "spiffe://x/node/n"}, ExpiresAt: exp}
		if err := s.PutEnrollment(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := s.PendingEnrollments(ctx, t0); err != nil || n != 2 {
		t.Fatalf("pending: %d %v, want 2", n, err)
	}
	if err := s.PruneEnrollments(ctx, t0); err != nil {
		t.Fatal(err)
	}
	var rows int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM enrollments`).Scan(&rows); err != nil || rows != 2 {
		t.Fatalf("rows after pruning: %d %v, want 2", rows, err)
	}
}

// TestPruneResultsInBatches: a backlog larger than one batch is pruned
// whole, one batch per transaction, with the same rules as one.
func TestPruneResultsInBatches(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	defer func(n int) { pruneBatch = n }(pruneBatch)
	pruneBatch = 3
	if err := s.PutNode(ctx, Node{ID: "n1", SPIFFEID: "spiffe://x/node/n1", EnrolledAt: t0}); err != nil {
		t.Fatal(err)
	}
	const old = 10 // more than three batches, and not a multiple of one
	for i := range old + 1 {
		id := fmt.Sprint("r", i)
		if err := s.PutResult(ctx, Result{ID: id, NodeID: "n1", Time: t0.Add(time.Duration(i) * time.Minute), Passed: true}); err != nil {
			t.Fatal(err)
		}
		if err := s.PutSVID(ctx, SVID{Serial: fmt.Sprint("s", i), NodeID: "n1", SPIFFEID: "spiffe://x/node/n1", ResultID: id,
			IssuedAt: t0, NotAfter: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PruneResults(ctx, t0.Add(2*time.Hour)); err != nil {
		t.Fatal(err)
	}
	for i := range old + 1 {
		_, err := s.Result(ctx, fmt.Sprint("r", i))
		if kept := i == old; kept && err != nil || !kept && !errors.Is(err, ErrNotFound) {
			t.Errorf("result r%d: %v, want kept=%v (only the node's latest)", i, err, kept)
		}
	}
	if svids, err := s.SVIDs(ctx, "n1"); err != nil || len(svids) != 0 {
		t.Fatalf("SVID records after pruning: %d %v", len(svids), err)
	}
}

// TestPruneUsesIndexes: pruning finds what to delete through an index,
// not by reading every SVID record and result, which on a long-running
// broker (millions of rows) held SQLite's write lock for seconds at every
// prune interval.
func TestPruneUsesIndexes(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	if s.d != sqliteDialect {
		// PostgreSQL's planner picks by table size: the same indexes must exist.
		for _, index := range []string{"svids_not_after", "results_time"} {
			var n int
			if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_indexes WHERE indexname = ?`, index).Scan(&n); err != nil || n != 1 {
				t.Errorf("index %s: %d %v", index, n, err)
			}
		}
		return
	}
	for query, index := range map[string]string{
		`SELECT serial FROM svids WHERE not_after < 1`: "svids_not_after",
		`SELECT id FROM results WHERE time < 1`:        "results_time",
	} {
		rows, err := s.db.QueryContext(ctx, `EXPLAIN QUERY PLAN `+query)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		if err := rows.Close(); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(strings.Join(plan, "; "), "USING INDEX "+index) && !strings.Contains(strings.Join(plan, "; "), "USING COVERING INDEX "+index) {
			t.Errorf("%s: plan %q does not use %s", query, plan, index)
		}
	}
}
