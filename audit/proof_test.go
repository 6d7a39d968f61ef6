package audit

import (
	"bytes"
	"context"
	"errors"
	"testing"
)

func TestProve(t *testing.T) {
	key := newKey(t)
	dir, l := createLog(t, key, manual)
	appendN(t, l, 0, 13)
	if err := l.Checkpoint(context.Background()); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 13, 2) // not checkpointed
	mustClose(t, l)

	for _, seq := range []uint64{0, 1, 5, 7, 8, 11, 12} {
		p, err := Prove(dir, seq)
		if err != nil {
			t.Fatalf("Prove(%d): %v", seq, err)
		}
		if p.TreeSize != 13 || p.Index != seq {
			t.Fatalf("Prove(%d): size %d index %d", seq, p.TreeSize, p.Index)
		}
		if err := p.Verify(); err != nil {
			t.Errorf("Prove(%d).Verify: %v", seq, err)
		}
		if err := p.VerifySigned(&key.PublicKey); err != nil {
			t.Errorf("Prove(%d).VerifySigned: %v", seq, err)
		}
		if err := p.VerifySigned(&newKey(t).PublicKey); err == nil {
			t.Errorf("Prove(%d).VerifySigned with another key succeeded", seq)
		}

		// A proof for a modified entry fails.
		e, _ := ParseEntry(p.Entry)
		e.Decision = DecisionDeny
		forged := *p
		forged.Entry = appendLine(nil, &e)
		forged.LeafHash = hasher.HashLeaf(forged.Entry)
		if err := forged.Verify(); err == nil {
			t.Errorf("proof of a modified entry %d verified", seq)
		}
		// So does one whose path was tampered with, when it has one.
		if len(p.Hashes) > 0 {
			bad := *p
			bad.Hashes = append([][]byte{bytes.Repeat([]byte{1}, 32)}, p.Hashes[1:]...)
			if err := bad.Verify(); err == nil {
				t.Errorf("proof %d with a wrong path verified", seq)
			}
		}
	}
	if _, err := Prove(dir, 13); !errors.Is(err, ErrNotCheckpointed) {
		t.Errorf("Prove past the checkpoint: %v, want ErrNotCheckpointed", err)
	}

	// Against a log whose entry was modified, Prove refuses.
	editEntry(4, func(e *Entry) { e.Decision = DecisionDeny })(t, dir)
	if _, err := Prove(dir, 4); !errors.Is(err, ErrCorrupt) {
		t.Errorf("Prove on a modified log: %v, want ErrCorrupt", err)
	}
}
