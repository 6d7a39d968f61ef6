package store

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"
)

func TestAuditKeysAndAnchors(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	if err := s.PutNode(ctx, testNode("n1")); err != nil {
		t.Fatal(err)
	}
	t0 := time.Unix(100, 0).UTC()
	k1 := AuditKey{NodeID: "n1", PublicKey: []byte("pk1"), ResultID: "r1", Nonce: []byte("nonce1"),
		PCRValues: map[int][]byte{0: bytes.Repeat([]byte{1}, 32), 7: bytes.Repeat([]byte{7}, 32)}, CreatedAt: t0}
	k2 := AuditKey{NodeID: "n1", PublicKey: []byte("pk2"), ResultID: "r2", Nonce: []byte("nonce2"),
		PCRValues: map[int][]byte{0: bytes.Repeat([]byte{2}, 32)}, CreatedAt: t0.Add(time.Second)}
	for _, k := range []AuditKey{k1, k2, {NodeID: "n1", PublicKey: []byte("pk1"), ResultID: "again", Nonce: []byte("x"), CreatedAt: t0.Add(time.Hour)}} {
		if err := s.PutAuditKey(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutAuditKey(ctx, AuditKey{NodeID: "unknown", PublicKey: []byte("pk"), Nonce: []byte("n"), CreatedAt: t0}); !errors.Is(err, ErrNotFound) {
		t.Errorf("audit key of an unknown node: %v, want ErrNotFound", err)
	}
	keys, err := s.AuditKeys(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 2 || keys[0].ResultID != "r1" || keys[1].ResultID != "r2" ||
		!bytes.Equal(keys[0].PCRValues[7], k1.PCRValues[7]) || !bytes.Equal(keys[0].Nonce, k1.Nonce) || !keys[1].CreatedAt.Equal(k2.CreatedAt) {
		t.Fatalf("audit keys = %+v", keys)
	}

	if _, err := s.LatestAuditAnchor(ctx, "n1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("anchor before any: %v, want ErrNotFound", err)
	}
	for _, a := range []AuditAnchor{
		{NodeID: "n1", Size: 5, Root: []byte("r5"), Checkpoint: []byte("cp5"), ResultID: "r1", AnchoredAt: t0},
		{NodeID: "n1", Size: 9, Root: []byte("r9"), Checkpoint: []byte("cp9"), ResultID: "r2", AnchoredAt: t0},
		{NodeID: "n1", Size: 9, Root: []byte("other"), Checkpoint: []byte("other"), ResultID: "r3", AnchoredAt: t0},
	} {
		if err := s.PutAuditAnchor(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	a, err := s.LatestAuditAnchor(ctx, "n1")
	if err != nil || a.Size != 9 || string(a.Root) != "r9" || string(a.Checkpoint) != "cp9" || a.ResultID != "r2" {
		t.Fatalf("latest anchor = %+v, %v", a, err)
	}
}
