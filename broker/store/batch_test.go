package store

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
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

// TestPutIssuedWritConcurrently: writs recorded at once (behind the
// write lock on SQLite) each get their own answer: every distinct jti is
// stored, of many records of one jti exactly one succeeds, a child of a
// revoked parent is refused (ErrParentRevoked) and not stored, a child of
// a live parent is stored.
func TestPutIssuedWritConcurrently(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	w := func(jti, parent string) IssuedWrit {
		return IssuedWrit{JTI: jti, Subject: "spiffe://x/node/n", Node: "spiffe://x/node/n", IssuedAt: t0,
			ExpiresAt: t0.Add(time.Hour), Parent: parent}
	}
	for _, jti := range []string{"live", "dead"} {
		if err := s.PutIssuedWrit(ctx, w(jti, "")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.RevokeWrit(ctx, "dead", "test", t0); err != nil {
		t.Fatal(err)
	}
	const n = 48
	var (
		wg                 sync.WaitGroup
		mu                 sync.Mutex
		dupWins, dupFails  int
		deadRefused, other []error
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			switch i % 4 {
			case 0:
				err = s.PutIssuedWrit(ctx, w(fmt.Sprintf("own-%d", i), ""))
			case 1:
				err = s.PutIssuedWrit(ctx, w("dup", ""))
				mu.Lock()
				if err == nil {
					dupWins++
				} else {
					dupFails++
				}
				mu.Unlock()
				return
			case 2:
				err = s.PutIssuedWrit(ctx, w(fmt.Sprintf("orphan-%d", i), "dead"))
				mu.Lock()
				deadRefused = append(deadRefused, err)
				mu.Unlock()
				return
			case 3:
				err = s.PutIssuedWrit(ctx, w(fmt.Sprintf("child-%d", i), "live"))
			}
			if err != nil {
				mu.Lock()
				other = append(other, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if len(other) > 0 {
		t.Fatalf("%d records failed, first: %v", len(other), other[0])
	}
	if dupWins != 1 || dupFails != n/4-1 {
		t.Fatalf("one jti recorded %d times (%d refused), want once", dupWins, dupFails)
	}
	for _, err := range deadRefused {
		if !errors.Is(err, ErrParentRevoked) {
			t.Fatalf("a child of a revoked parent: %v, want ErrParentRevoked", err)
		}
	}
	for i := range n {
		var jti string
		switch i % 4 {
		case 0:
			jti = fmt.Sprintf("own-%d", i)
		case 2:
			if _, err := s.IssuedWrit(ctx, fmt.Sprintf("orphan-%d", i)); !errors.Is(err, ErrNotFound) {
				t.Fatalf("a child of a revoked parent was stored: %v", err)
			}
			continue
		case 3:
			jti = fmt.Sprintf("child-%d", i)
		default:
			continue
		}
		if _, err := s.IssuedWrit(ctx, jti); err != nil {
			t.Fatalf("%s: %v", jti, err)
		}
	}
}

// TestNodeStandingVerdictCache: NodeStanding decodes a result's verdict
// once and answers later reads from the cache (verdicts.go); the cache
// never answers with a verdict other than the stored one: a new result
// (the node attested again, and failed) is read as such, and a stored
// verdict whose text changed under the same result ID (by hand: results
// are never updated) is decoded anew. A caller changing the Sel it got
// changes no later reader's.
func TestNodeStandingVerdictCache(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	putNodes(t, s, "n1")
	pass := Result{ID: "r1", NodeID: "n1", Time: t0, Passed: true, Sel: []int{0, 7}, Policy: "p@1",
		Claims: attest.Claims{PCRs: map[int]string{0: "aa"}}}
	if err := s.PutResult(ctx, pass); err != nil {
		t.Fatal(err)
	}
	standing := func() Result {
		t.Helper()
		_, r, found, err := s.NodeStanding(ctx, "n1")
		if err != nil || !found {
			t.Fatalf("NodeStanding: found=%v %v", found, err)
		}
		return r
	}
	for i := range 3 { // decoded, then from the cache
		r := standing()
		if r.ID != "r1" || !r.Passed || !reflect.DeepEqual(r.Sel, []int{0, 7}) || r.Claims.PCRs[0] != "aa" {
			t.Fatalf("read %d = %+v", i, r)
		}
		r.Sel[0] = 99 // a careless caller
	}
	if s.verdicts.m["r1"].claims == "" {
		t.Fatal("the verdict of r1 was not cached: this test does not exercise the cache")
	}
	fail := Result{ID: "r2", NodeID: "n1", Time: t0.Add(time.Second), Passed: false,
		Findings: []attest.Finding{{Reason: "pcr_mismatch", PCR: 7, Detail: "x"}}}
	if err := s.PutResult(ctx, fail); err != nil {
		t.Fatal(err)
	}
	if r := standing(); r.ID != "r2" || r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != "pcr_mismatch" {
		t.Fatalf("after a failed attestation: %+v", r)
	}
	if _, err := s.db.ExecContext(ctx, `UPDATE results SET findings = ?, claims = ? WHERE id = 'r2'`,
		`[{"reason":"changed","pcr":1}]`, `{"pcrs":{"1":"bb"}}`); err != nil {
		t.Fatal(err)
	}
	if r := standing(); len(r.Findings) != 1 || r.Findings[0].Reason != "changed" || r.Claims.PCRs[1] != "bb" {
		t.Fatalf("after the stored verdict changed: %+v", r)
	}
}

// TestPutResultStates writes several results in one commit, in order: a
// change, the same standing again, a revoked node's result (stored,
// reported revoked); a batch naming an unknown node commits none.
func TestPutResultStates(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	putNodes(t, s, "n1", "n2")
	if _, err := s.SetNodeState(ctx, "n2", NodeRevoked, "stolen", t0); err != nil {
		t.Fatal(err)
	}
	res := func(id, node string) Result {
		return Result{ID: id, NodeID: node, Time: t0, Passed: true, PCRDigest: "sha256:aa", Policy: "p@1", Sel: []int{0, 7},
			Claims: attest.Claims{}}
	}
	changed, revoked, err := s.PutResultStates(ctx, []ResultState{
		{Result: res("b1", "n1"), State: NodeAttested},
		{Result: res("b2", "n1"), State: NodeAttested},
		{Result: res("b3", "n2"), State: NodeAttested},
	}, t0)
	if err != nil || !slices.Equal(changed, []bool{true, false, false}) || !slices.Equal(revoked, []bool{false, false, true}) {
		t.Fatalf("batch: changed %v revoked %v err %v", changed, revoked, err)
	}
	for _, id := range []string{"b1", "b2", "b3"} {
		if _, err := s.Result(ctx, id); err != nil {
			t.Fatalf("result %s not stored: %v", id, err)
		}
	}
	if n, _ := s.Node(ctx, "n2"); n.State != NodeRevoked {
		t.Fatalf("a revoked node changed standing: %+v", n)
	}
	_, _, err = s.PutResultStates(ctx, []ResultState{
		{Result: res("c1", "n1"), State: NodeFailed, Reason: "pcr_mismatch"},
		{Result: res("c2", "nobody"), State: NodeAttested},
	}, t0)
	if !errors.Is(err, ErrNotFound) {
		t.Fatalf("a batch with an unknown node: %v, want ErrNotFound", err)
	}
	if _, err := s.Result(ctx, "c1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a failed batch committed its first result: %v", err)
	}
	if n, _ := s.Node(ctx, "n1"); n.State != NodeAttested {
		t.Fatalf("a failed batch changed a standing: %+v", n)
	}
}
