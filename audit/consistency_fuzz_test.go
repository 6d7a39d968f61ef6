package audit

import (
	"bytes"
	"crypto/ecdsa"
	"testing"
)

// FuzzAnchorCheck runs what the broker runs on a node's untrusted audit
// attachment: OpenCheckpoint of the note against the node's keys, then
// VerifyConsistency from an anchored checkpoint with the proof's hashes.
// It must not panic, and must accept only the original checkpoint with a
// proof that holds (the fixture's, from 3 to 5 entries).
func FuzzAnchorCheck(f *testing.F) {
	key := newKey(f)
	dir, l := createLog(f, key, manual)
	appendN(f, l, 0, 3)
	mustCheckpoint(f, l)
	appendN(f, l, 3, 2)
	mustCheckpoint(f, l)
	mustClose(f, l)
	p, err := ProveConsistency(dir, 3, 0)
	if err != nil {
		f.Fatal(err)
	}
	old, err := ProveConsistency(dir, 3, 3)
	if err != nil {
		f.Fatal(err)
	}
	keys := []*ecdsa.PublicKey{&key.PublicKey}
	f.Add(p.Checkpoint, bytes.Join(p.Hashes, nil))
	f.Add(p.Checkpoint[:len(p.Checkpoint)-3], bytes.Join(p.Hashes, nil))
	f.Add(old.Checkpoint, []byte{})
	f.Fuzz(func(t *testing.T, note, hashes []byte) {
		c, err := OpenCheckpoint(note, keys)
		if err != nil {
			return
		}
		if c.Origin != testOrigin || c.Key != 0 {
			t.Fatalf("opened checkpoint %+v", c)
		}
		var hs [][]byte
		for len(hashes) >= 32 && len(hs) < maxTestHashes {
			hs = append(hs, hashes[:32])
			hashes = hashes[32:]
		}
		if VerifyConsistency(3, c.Size, old.NewRoot, c.Root, hs) == nil && c.Size > 3 && !bytes.Equal(c.Root, p.NewRoot) {
			t.Fatalf("a proof to another root of size %d verified", c.Size)
		}
	})
}

const maxTestHashes = 128
