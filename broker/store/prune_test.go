package store

import (
	"context"
	"errors"
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
