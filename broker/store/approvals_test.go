package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func testApproval(id string, b ApprovalBinding, created time.Time) Approval {
	return Approval{ID: id, State: ApprovalPending, ApprovalBinding: b, Display: "mcp tools/call read_file", Rule: 1,
		Approvers: []string{"spiffe://x/person/alice"}, CreatedAt: created, ExpiresAt: created.Add(10 * time.Minute)}
}

var testBinding = ApprovalBinding{Subject: "spiffe://x/node/n1", Node: "spiffe://x/node/n1", Kind: "mcp",
	Digest: "sha256:aa", Audience: "spiffe://x/gateway", Once: true, RulesVersion: "sha256:r1", Policy: "p@1"}

// TestApprovalLifecycle: an approval reads back as stored; one open
// approval per binding; decided once, only while pending and unexpired;
// used once, only when approved and unexpired; expired ones can be
// marked so and pruned.
func TestApprovalLifecycle(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	a := testApproval("a1", testBinding, t0)
	if err := s.PutApproval(ctx, a); err != nil {
		t.Fatal(err)
	}
	got, err := s.Approval(ctx, "a1")
	if err != nil || fmt.Sprint(got) != fmt.Sprint(a) {
		t.Fatalf("read back %+v %v, want %+v", got, err, a)
	}
	if err := s.PutApproval(ctx, testApproval("a2", testBinding, t0.Add(time.Second))); !errors.Is(err, ErrApprovalOpen) {
		t.Fatalf("a second open approval for the same binding: %v", err)
	}
	other := testBinding
	other.RulesVersion = "sha256:r2"
	if err := s.PutApproval(ctx, testApproval("b1", other, t0)); err != nil {
		t.Fatalf("another rules version is another binding: %v", err)
	}
	if latest, err := s.LatestApproval(ctx, testBinding); err != nil || latest.ID != "a1" {
		t.Fatalf("latest %+v %v", latest, err)
	}

	if err := s.UseApproval(ctx, "a1", "jti-0", t0.Add(time.Minute)); !errors.Is(err, ErrApprovalUnusable) {
		t.Fatalf("a pending approval used: %v", err)
	}
	if err := s.DecideApproval(ctx, "a1", ApprovalApproved, "spiffe://x/person/alice", "ok", t0.Add(11*time.Minute)); !errors.Is(err, ErrApprovalNotPending) {
		t.Fatalf("decided after expiry: %v", err)
	}
	if err := s.DecideApproval(ctx, "a1", ApprovalApproved, "spiffe://x/person/alice", "ok", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.DecideApproval(ctx, "a1", ApprovalDenied, "spiffe://x/person/bob", "no", t0.Add(time.Minute)); !errors.Is(err, ErrApprovalNotPending) {
		t.Fatalf("decided twice: %v", err)
	}
	if err := s.UseApproval(ctx, "a1", "jti-1", t0.Add(11*time.Minute)); !errors.Is(err, ErrApprovalUnusable) {
		t.Fatalf("used after expiry: %v", err)
	}
	if err := s.UseApproval(ctx, "a1", "jti-1", t0.Add(2*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if err := s.UseApproval(ctx, "a1", "jti-2", t0.Add(2*time.Minute)); !errors.Is(err, ErrApprovalUnusable) {
		t.Fatalf("used twice: %v", err)
	}
	got, err = s.Approval(ctx, "a1")
	if err != nil || got.State != ApprovalApproved || got.DecidedBy != "spiffe://x/person/alice" || got.Reason != "ok" ||
		got.UsedJTI != "jti-1" || !got.UsedAt.Equal(t0.Add(2*time.Minute)) {
		t.Fatalf("after use: %+v %v", got, err)
	}
	if _, err := s.LatestApproval(ctx, testBinding); !errors.Is(err, ErrNotFound) {
		t.Fatalf("a used approval is still the binding's latest: %v", err)
	}
	// Used, the binding is free for a new approval.
	if err := s.PutApproval(ctx, testApproval("a3", testBinding, t0.Add(3*time.Minute))); err != nil {
		t.Fatal(err)
	}

	// Expiry: not before its time; then the binding is free again.
	if err := s.ExpireApproval(ctx, "a3", t0.Add(5*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Approval(ctx, "a3"); got.State != ApprovalPending {
		t.Fatalf("expired early: %s", got.State)
	}
	if err := s.ExpireApproval(ctx, "a3", t0.Add(13*time.Minute)); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.Approval(ctx, "a3"); got.State != ApprovalExpired {
		t.Fatalf("not expired: %s", got.State)
	}
	if err := s.PutApproval(ctx, testApproval("a4", testBinding, t0.Add(14*time.Minute))); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PendingApprovals(ctx, testBinding.Node, t0.Add(14*time.Minute)); err != nil || n != 1 {
		t.Fatalf("pending approvals of the node, b1 expired: %d %v, want 1", n, err)
	}
	if n, err := s.PendingApprovals(ctx, testBinding.Node, t0.Add(9*time.Minute)); err != nil || n != 2 {
		t.Fatalf("pending approvals of the node before b1 expired: %d %v, want 2", n, err)
	}
	pending, err := s.Approvals(ctx, ApprovalPending, 100)
	if err != nil || len(pending) != 2 || pending[0].ID != "a4" || pending[1].ID != "b1" {
		t.Fatalf("pending approvals %+v %v", pending, err)
	}
	all, err := s.Approvals(ctx, "", 100)
	if err != nil || len(all) != 4 {
		t.Fatalf("all approvals %d %v", len(all), err)
	}

	if err := s.PruneApprovals(ctx, t0.Add(20*time.Minute)); err != nil {
		t.Fatal(err)
	}
	for id, kept := range map[string]bool{"a1": false, "a3": false, "b1": false, "a4": true} {
		_, err := s.Approval(ctx, id)
		if kept && err != nil || !kept && !errors.Is(err, ErrNotFound) {
			t.Errorf("approval %s: %v, want kept=%v", id, err, kept)
		}
	}
}

// TestUseApprovalConcurrently: many callers spend one approval at once;
// exactly one succeeds.
func TestUseApprovalConcurrently(t *testing.T) {
	s, ctx := newStore(t), context.Background()
	if err := s.PutApproval(ctx, testApproval("a1", testBinding, t0)); err != nil {
		t.Fatal(err)
	}
	if err := s.DecideApproval(ctx, "a1", ApprovalApproved, "spiffe://x/person/alice", "", t0); err != nil {
		t.Fatal(err)
	}
	var ok atomic.Int32
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			err := s.UseApproval(ctx, "a1", fmt.Sprint("jti-", i), t0.Add(time.Second))
			switch {
			case err == nil:
				ok.Add(1)
			case !errors.Is(err, ErrApprovalUnusable):
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 1 {
		t.Fatalf("%d callers spent the approval, want 1", ok.Load())
	}
}
