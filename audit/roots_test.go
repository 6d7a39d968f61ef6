package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// TestRootsAt: the roots rootsAt joins from chunks hashed in parallel are
// those of appending every leaf in order with rfc6962's hasher, at sizes
// inside chunks, at their edges and around them.
func TestRootsAt(t *testing.T) {
	const n = 3*treeChunk + 77
	leaves := make([][]byte, n)
	for i := range leaves {
		var b [8]byte
		binary.BigEndian.PutUint64(b[:], uint64(i))
		leaves[i] = hasher.HashLeaf(b[:])
	}
	want := make([][]byte, n+1)
	r := rangeFactory.NewEmptyRange(0)
	want[0] = rootOf(r)
	for i, leaf := range leaves {
		if err := r.Append(leaf, nil); err != nil {
			t.Fatal(err)
		}
		want[i+1] = rootOf(r)
	}
	sizes := []uint64{0, 1, 2, 3, treeChunk - 1, treeChunk, treeChunk + 1, 2 * treeChunk, 3 * treeChunk, n - 1, n}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 40 {
		sizes = append(sizes, rng.Uint64N(n+1))
	}
	for _, set := range [][]uint64{sizes, {n}, {treeChunk}, {5, 5, 5}, {}} {
		got := rootsAt(leaves, set)
		for _, s := range set {
			if !bytes.Equal(got[s], want[s]) {
				t.Fatalf("root at %d: %x, want %x", s, got[s], want[s])
			}
		}
	}
	// The node hash is RFC 6962's: SHA-256(0x01 || left || right).
	l, rr := leaves[0], leaves[1]
	sum := sha256.Sum256(append(append([]byte{1}, l...), rr...))
	if got := newNodeFactory().Hash(l, rr); !bytes.Equal(got, sum[:]) || !bytes.Equal(got, hasher.HashChildren(l, rr)) {
		t.Fatalf("node hash %x, want %x", got, sum)
	}
}

// TestVerifyAcrossChunks verifies a log of several tree chunks with
// checkpoints that fall inside and on the edges of chunks, then with one
// entry altered in the third chunk: the checkpoints from there on no
// longer match.
func TestVerifyAcrossChunks(t *testing.T) {
	key := newKey(t)
	const n = 3*treeChunk + 5
	dir := synthLog(t, key, n, treeChunk/2+3)
	rep := mustVerify(t, dir, trusting(key))
	wantOK(t, rep)
	if rep.Entries != n || rep.Checkpointed != n {
		t.Fatalf("report %+v", rep)
	}
	path := filepath.Join(dir, entriesFile)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := 2*treeChunk + 100
	lines := bytes.SplitAfter(raw, []byte("\n"))
	lines[at] = bytes.Replace(lines[at], []byte(`"allow"`), []byte(`"deny"`), 1)
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	rep = mustVerify(t, dir, trusting(key))
	if rep.OK() || rep.Problems[0].Index != int64(at) || rep.Checkpointed >= uint64(at) {
		t.Fatalf("altered entry %d: %+v", at, rep)
	}
	t.Logf("problems: %v", rep.Problems)
}
