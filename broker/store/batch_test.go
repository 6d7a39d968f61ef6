package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/writ-dev/writ/attest"
)

// TestIssueNonce puts and trims in one commit: the node keeps its keep
// newest nonces, the new one among them; an unknown node stores nothing.
func TestIssueNonce(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	putNodes(t, s, "n1")
	for i := range 5 {
		if err := s.IssueNonce(ctx, Nonce{Value: []byte{byte(i)}, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}, 2); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		err := s.ConsumeNonce(ctx, "n1", []byte{byte(i)}, t0)
		if i >= 3 && err != nil || i < 3 && !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("nonce %d: %v", i, err)
		}
	}
	if err := s.IssueNonce(ctx, Nonce{Value: []byte("x"), NodeID: "nobody", ExpiresAt: t0.Add(time.Hour)}, 2); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nonce for an unknown node: %v, want ErrNotFound", err)
	}
	if err := s.IssueNonce(ctx, Nonce{Value: []byte("y"), NodeID: "n1"}, 2); err == nil {
		t.Fatal("a nonce without expiry was issued")
	}
}

// TestIssueNonceConcurrently: nonces issued to one node at once (several
// stores, as replicas) all succeed; once the next one is issued at most
// keep survive, the newest among them (on PostgreSQL a trim does not see
// inserts not yet committed, so the bound holds once they are), and each
// survivor is consumable once.
func TestIssueNonceConcurrently(t *testing.T) {
	path := t.TempDir() + "/broker.db"
	first := openTest(t, path)
	putNodes(t, first, "n1")
	stores := []*DB{first, openTest(t, path), openTest(t, path)}
	ctx := context.Background()
	const n, keep = 24, 3
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- stores[i%len(stores)].IssueNonce(ctx, Nonce{Value: []byte{byte(i)}, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}, keep)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := first.IssueNonce(ctx, Nonce{Value: []byte{byte(n)}, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}, keep); err != nil {
		t.Fatal(err)
	}
	if err := first.ConsumeNonce(ctx, "n1", []byte{byte(n)}, t0); err != nil {
		t.Fatalf("the newest nonce: %v", err)
	}
	live := 1
	for i := range n {
		if err := first.ConsumeNonce(ctx, "n1", []byte{byte(i)}, t0); err == nil {
			live++
			if err := first.ConsumeNonce(ctx, "n1", []byte{byte(i)}, t0); !errors.Is(err, ErrNonceReplayed) {
				t.Fatalf("nonce %d consumed twice: %v", i, err)
			}
		}
	}
	if live < 1 || live > keep {
		t.Fatalf("%d nonces survive, want 1..%d", live, keep)
	}
}

// TestPutResultState stores the result and the standing together,
// reports a change once, and keeps a revoked node revoked (the result
// is stored, ErrRevoked returned); an unknown node stores nothing.
func TestPutResultState(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	putNodes(t, s, "n1")
	r := Result{ID: "r1", NodeID: "n1", Time: t0, Passed: true, PCRDigest: "sha256:aa", Policy: "p@1", Sel: []int{0, 7},
		Claims: attest.Claims{}}
	changed, err := s.PutResultState(ctx, r, NodeAttested, "", t0)
	if err != nil || !changed {
		t.Fatalf("first result: %v %v", changed, err)
	}
	n, err := s.Node(ctx, "n1")
	if err != nil || n.State != NodeAttested {
		t.Fatalf("node after the result: %+v %v", n, err)
	}
	if got, err := s.LatestVerdict(ctx, "n1"); err != nil || got.ID != "r1" {
		t.Fatalf("latest verdict: %+v %v", got, err)
	}
	r.ID, r.Time = "r2", t0.Add(time.Second)
	if changed, err = s.PutResultState(ctx, r, NodeAttested, "", t0); err != nil || changed {
		t.Fatalf("same standing again: %v %v", changed, err)
	}
	if _, err := s.SetNodeState(ctx, "n1", NodeRevoked, "stolen", t0); err != nil {
		t.Fatal(err)
	}
	r.ID, r.Time = "r3", t0.Add(2*time.Second)
	if _, err = s.PutResultState(ctx, r, NodeAttested, "", t0); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a revoked node: %v, want ErrRevoked", err)
	}
	if n, _ := s.Node(ctx, "n1"); n.State != NodeRevoked {
		t.Fatalf("a revoked node changed standing: %+v", n)
	}
	if _, err := s.Result(ctx, "r3"); err != nil {
		t.Fatalf("the revoked node's result was not stored: %v", err)
	}
	r.ID, r.NodeID = "r4", "nobody"
	if _, err = s.PutResultState(ctx, r, NodeAttested, "", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("an unknown node: %v, want ErrNotFound", err)
	}
	if _, err := s.Result(ctx, "r4"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a result of an unknown node was stored: %v", err)
	}
}

// TestNodeStanding reads what Node and LatestVerdict read, in one query:
// the latest result by time then by order of recording, without the
// evidence; none for a node that never attested; ErrNotFound for an
// unknown node.
func TestNodeStanding(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	putNodes(t, s, "n1", "n2")
	if _, _, _, err := s.NodeStanding(ctx, "nobody"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown node: %v", err)
	}
	n, _, found, err := s.NodeStanding(ctx, "n2")
	if want, _ := s.Node(ctx, "n2"); err != nil || found || !reflect.DeepEqual(n, want) {
		t.Fatalf("never attested: %+v found=%v %v", n, found, err)
	}
	for i, r := range []Result{
		{ID: "a", Time: t0, Passed: true},
		{ID: "b", Time: t0.Add(time.Second), Passed: false, Findings: []attest.Finding{{Reason: "pcr_mismatch", PCR: 7, Detail: "x"}}},
		{ID: "c", Time: t0.Add(time.Second), Passed: true, Sel: []int{0, 1}, PCRDigest: "sha256:bb", Policy: "p@2",
			Claims: attest.Claims{}},
		{ID: "d", Time: t0.Add(-time.Hour), Passed: false},
	} {
		r.NodeID, r.Evidence = "n1", []byte(fmt.Sprintf(`{"n":%d}`, i))
		if err := s.PutResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.SetNodeState(ctx, "n1", NodeAttested, "", t0); err != nil {
		t.Fatal(err)
	}
	n, r, found, err := s.NodeStanding(ctx, "n1")
	wantN, _ := s.Node(ctx, "n1")
	wantR, _ := s.LatestVerdict(ctx, "n1")
	if err != nil || !found || !reflect.DeepEqual(n, wantN) || !reflect.DeepEqual(r, wantR) || r.ID != "c" || r.Evidence != nil {
		t.Fatalf("NodeStanding = %+v %+v %v %v\nwant %+v %+v", n, r, found, err, wantN, wantR)
	}
}
