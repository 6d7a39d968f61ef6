package audit

import (
	"context"
	"errors"
	"testing"
)

// TestOpenAppend appends through a log opened without a signer: the
// entries are durable when Append returns, the log refuses to sign (no
// background checkpoint, none on Close, Checkpoint is ErrAppendOnly), and
// a checkpoint signed later by the log's real key covers them. After a
// rotation it follows the newest key of the history.
func TestOpenAppend(t *testing.T) {
	key := newKey(t)
	signer := &countingSigner{Signer: key}
	dir, l := createLog(t, signer, manual)
	appendN(t, l, 0, 2)
	mustCheckpoint(t, l)
	mustClose(t, l)
	signed := signer.n.Load()

	// Defaults: a checkpointer would sign at once (CheckpointEvery 1).
	a, err := OpenAppend(dir, Options{CheckpointEvery: 1})
	if err != nil {
		t.Fatalf("OpenAppend: %v", err)
	}
	appendN(t, a, 2, 3)
	if err := a.Checkpoint(context.Background()); !errors.Is(err, ErrAppendOnly) {
		t.Fatalf("Checkpoint on an append-only log: %v, want ErrAppendOnly", err)
	}
	mustClose(t, a)
	if n := signer.n.Load(); n != signed {
		t.Fatalf("the append-only log signed %d checkpoints", n-signed)
	}
	entries, err := Read(dir)
	if err != nil || len(entries) != 5 {
		t.Fatalf("Read: %d entries, %v; want 5", len(entries), err)
	}
	// Unsigned entries fail verification until the real key signs.
	if rep := mustVerify(t, dir, trusting(key)); rep.OK() {
		t.Fatal("Verify accepted entries no checkpoint covers")
	}
	l, err = Open(dir, signer, manual)
	if err != nil {
		t.Fatal(err)
	}
	mustCheckpoint(t, l)
	mustClose(t, l)
	wantOK(t, mustVerify(t, dir, trusting(key)))

	// After a rotation the append-only log follows the newest key.
	next := newKey(t)
	if err := AddKey(dir, KeyInfo{Kind: KeyFile, Origin: testOrigin, PublicKey: mustSPKI(t, next)}); err != nil {
		t.Fatalf("AddKey: %v", err)
	}
	a, err = OpenAppend(dir, manual)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, a, 5, 1)
	mustClose(t, a)
	if _, err := Open(dir, key, manual); !errors.Is(err, ErrKeyMismatch) {
		t.Fatalf("Open with the old key after a rotation: %v, want ErrKeyMismatch", err)
	}
	l, err = Open(dir, next, manual)
	if err != nil {
		t.Fatal(err)
	}
	mustCheckpoint(t, l)
	mustClose(t, l)
	// It reads back the new key's checkpoint (verified against the history).
	a, err = OpenAppend(dir, manual)
	if err != nil {
		t.Fatalf("OpenAppend after the new key signed: %v", err)
	}
	if a.signed != 6 {
		t.Fatalf("append-only log sees a checkpoint of size %d, want 6", a.signed)
	}
	mustClose(t, a)
}
