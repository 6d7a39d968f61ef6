package store

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"testing"
	"time"
)

// TestEntries: entries round-trip through SQLite, list oldest first, and
// delete once.
func TestEntries(t *testing.T) {
	s := openTest(t, filepath.Join(t.TempDir(), "b.db"))
	ctx := context.Background()
	now := time.Now().UTC().Truncate(time.Second)
	a := Entry{ID: "a", SPIFFEID: "spiffe://writ.test/app/a", Parent: "policy:test", Selectors: []string{"unix:uid:1000", "systemd:unit:a.service"},
		TTL: 10 * time.Minute, DNSNames: []string{"a.internal"}, Actions: []string{"exec:sha256:00"}, CreatedAt: now}
	b := Entry{ID: "b", SPIFFEID: "spiffe://writ.test/app/b", Parent: "claim:boot.secureboot.enabled=true", Selectors: []string{"cgroup:/x"},
		DNSNames: []string{}, Actions: []string{}, CreatedAt: now.Add(time.Second)}
	for _, e := range []Entry{b, a} {
		if err := s.PutEntry(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutEntry(ctx, a); err == nil {
		t.Fatal("a second entry with the same id was stored")
	}
	got, err := s.Entry(ctx, "a")
	if err != nil || !reflect.DeepEqual(got, a) {
		t.Fatalf("got %+v, %v; want %+v", got, err, a)
	}
	all, err := s.Entries(ctx)
	if err != nil || len(all) != 2 || all[0].ID != "a" || !reflect.DeepEqual(all[1], b) {
		t.Fatalf("entries: %+v, %v", all, err)
	}
	if err := s.DeleteEntry(ctx, "a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteEntry(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("delete twice: %v", err)
	}
	if _, err := s.Entry(ctx, "a"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("deleted entry: %v", err)
	}
}
