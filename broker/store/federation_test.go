package store

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"
)

// TestFederatedBundle: a bundle reads back as stored across a reopen; a
// sequence going back, or dropped once one was given, is refused and the
// stored bundle kept; an equal or higher one replaces it; domains are
// kept apart.
func TestFederatedBundle(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	s, ctx := openTest(t, path), context.Background()
	u := func(v uint64) *uint64 { return &v }
	at := time.Unix(1700000000, 0).UTC()
	if _, err := s.FederatedBundle(ctx, "a.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("nothing stored: %v, want ErrNotFound", err)
	}
	put := func(doc string, seq *uint64) error {
		return s.PutFederatedBundle(ctx, FederatedBundle{TrustDomain: "a.example", Bundle: []byte(doc), Sequence: seq, FetchedAt: at})
	}
	if err := put("v5", u(5)); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		seq  *uint64
	}{{"lower", u(4)}, {"none after one", nil}} {
		if err := put("old", tc.seq); !errors.Is(err, ErrSequenceBackwards) {
			t.Fatalf("%s: %v, want ErrSequenceBackwards", tc.name, err)
		}
	}
	got, err := openTest(t, path).FederatedBundle(ctx, "a.example")
	if err != nil {
		t.Fatal(err)
	}
	if string(got.Bundle) != "v5" || got.Sequence == nil || *got.Sequence != 5 || !got.FetchedAt.Equal(at) {
		t.Fatalf("read back %q seq %v at %s, want v5 seq 5 at %s", got.Bundle, got.Sequence, got.FetchedAt, at)
	}
	if err := put("v5 again", u(5)); err != nil {
		t.Fatalf("same sequence: %v", err)
	}
	if err := put("v6", u(6)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.FederatedBundle(ctx, "b.example"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("another domain: %v, want ErrNotFound", err)
	}
	if err := s.PutFederatedBundle(ctx, FederatedBundle{TrustDomain: "b.example", Bundle: []byte("x"), FetchedAt: at}); err != nil {
		t.Fatalf("another domain, no sequence: %v", err)
	}
	if err := s.PutFederatedBundle(ctx, FederatedBundle{TrustDomain: "b.example", FetchedAt: at}); err == nil {
		t.Fatal("an empty bundle was stored")
	}
}
