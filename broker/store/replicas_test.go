package store

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Two replicas publish their keys through separate stores; each reads
// both sets; republishing replaces a replica's set, and keys not
// republished expire.
func TestReplicaKeys(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	a, b := openTest(t, path), openTest(t, path)
	now := time.Unix(1_800_000_000, 0)
	ka := []ReplicaKey{{Kind: ReplicaWritKey, Key: []byte("writ-a")}, {Kind: ReplicaX509Root, Key: []byte("root-a")}}
	kb := []ReplicaKey{{Kind: ReplicaJWTKey, Key: []byte("jwt-b")}}
	if err := a.PutReplicaKeys(ctx, "a", ka, now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := b.PutReplicaKeys(ctx, "b", kb, now.Add(2*time.Minute), now); err != nil {
		t.Fatal(err)
	}
	got, err := b.ReplicaKeys(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if want := "a/writ/writ-a a/x509-root/root-a b/jwt-svid/jwt-b"; describeKeys(got) != want {
		t.Fatalf("keys = %q, want %q", describeKeys(got), want)
	}
	if !got[0].NotAfter.Equal(now.Add(time.Minute)) {
		t.Errorf("not_after = %v", got[0].NotAfter)
	}
	// a rotates its writ key: the old one is gone at once.
	if err := a.PutReplicaKeys(ctx, "a", []ReplicaKey{{Kind: ReplicaWritKey, Key: []byte("writ-a2")}}, now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	// After a's keys expired (a stopped publishing), only b's remain.
	later := now.Add(90 * time.Second)
	if got, err = a.ReplicaKeys(ctx, later); err != nil {
		t.Fatal(err)
	}
	if want := "b/jwt-svid/jwt-b"; describeKeys(got) != want {
		t.Fatalf("keys after a expired = %q, want %q", describeKeys(got), want)
	}
	// Absent is not empty: a key without bytes or kind is refused.
	for _, bad := range []ReplicaKey{{Kind: ReplicaWritKey}, {Kind: "other", Key: []byte("k")}} {
		if err := a.PutReplicaKeys(ctx, "a", []ReplicaKey{bad}, now.Add(time.Minute), now); err == nil {
			t.Errorf("PutReplicaKeys(%+v) succeeded", bad)
		}
	}
	if err := a.PutReplicaKeys(ctx, "", ka, now.Add(time.Minute), now); err == nil {
		t.Error("PutReplicaKeys without a replica succeeded")
	}
}

func describeKeys(ks []ReplicaKey) string {
	var s []string
	for _, k := range ks {
		s = append(s, k.Replica+"/"+string(k.Kind)+"/"+string(k.Key))
	}
	return strings.Join(s, " ")
}

// A notification sent through one store reaches a listener on another
// (another replica) once the LISTEN is in place; SQLite has none.
func TestNotify(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	a, b := openTest(t, path), openTest(t, path)
	if backend == "sqlite" {
		if err := a.Notify(ctx, "writ_test", "x"); !errors.Is(err, ErrNoNotify) {
			t.Fatalf("Notify on SQLite: %v, want ErrNoNotify", err)
		}
		if err := a.Listen(ctx, "writ_test", time.Second, nil, func(string) {}, func(error) {}); !errors.Is(err, ErrNoNotify) {
			t.Fatalf("Listen on SQLite: %v, want ErrNoNotify", err)
		}
		return
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan struct{}, 1)
	got := make(chan string, 4)
	done := make(chan error, 1)
	go func() {
		done <- b.Listen(lctx, "writ_test", 100*time.Millisecond, func() { ready <- struct{}{} },
			func(p string) { got <- p }, func(err error) { t.Errorf("listener lost: %v", err) })
	}()
	<-ready
	if err := a.Notify(ctx, "writ_test", "hello"); err != nil {
		t.Fatal(err)
	}
	if p := <-got; p != "hello" {
		t.Fatalf("payload %q, want hello", p)
	}
	if err := a.Notify(ctx, "writ_test", string(bytes.Repeat([]byte("x"), 8000))); !errors.Is(err, ErrNotifyTooLarge) {
		t.Errorf("oversized Notify: %v, want ErrNotifyTooLarge", err)
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Listen returned %v, want context.Canceled", err)
	}
}
