package audit

import (
	"crypto/sha256"
	"runtime"
	"slices"
	"sync"

	"github.com/transparency-dev/merkle/compact"
)

// treeChunk is the number of leaves whose subtree one worker hashes at a
// time: a power of two, so that each chunk but the last is one perfect
// subtree of the log's tree.
const treeChunk = 1 << 12

// rootsAt returns the tree root at each of sizes (all at most len(leaves)).
// Hashing the tree is as much work as there are leaves, and it was the part
// of Verify left on one CPU: the leaves are cut into aligned chunks hashed
// in parallel, each chunk's compact range kept at every size inside it;
// then the ranges are joined from the left, which costs a few hashes a
// chunk and a size. The roots are exactly those of appending the leaves in
// order (compact.Range does the joining; TestRootsAt compares).
func rootsAt(leaves [][]byte, sizes []uint64) map[uint64][]byte {
	sizes = slices.Clone(sizes)
	slices.Sort(sizes)
	sizes = slices.Compact(sizes)
	roots := make(map[uint64][]byte, len(sizes))
	if len(sizes) > 0 && sizes[0] == 0 {
		roots[0] = hasher.EmptyRoot()
		sizes = sizes[1:]
	}
	if len(sizes) == 0 {
		return roots
	}
	chunks := chunkRanges(leaves[:sizes[len(sizes)-1]], sizes)
	// Ranges join only if one factory made both: the workers' are remade
	// here. A range that fails to join (it cannot) leaves its root nil:
	// a root mismatch, not a pass.
	f := newNodeFactory()
	prefix := f.NewEmptyRange(0)
	for k, c := range chunks {
		begin := uint64(k) * treeChunk
		for _, snap := range c.snaps {
			r, err := f.NewRange(0, prefix.End(), slices.Clone(prefix.Hashes()))
			if err == nil {
				err = appendHashes(r, f, begin, snap)
			}
			if err == nil {
				roots[snap.end] = rootOf(r)
			}
		}
		if c.full != nil {
			_ = appendHashes(prefix, f, begin, *c.full)
		}
	}
	return roots
}

// appendHashes joins the range [begin, s.end) of s's hashes onto r.
func appendHashes(r *compact.Range, f *compact.RangeFactory, begin uint64, s rangeHashes) error {
	other, err := f.NewRange(begin, s.end, s.hashes)
	if err != nil {
		return err
	}
	return r.AppendRange(other, nil)
}

// rangeHashes is a compact range that begins at its chunk.
type rangeHashes struct {
	end    uint64
	hashes [][]byte
}

// chunkRange is a chunk's part of the tree: its compact range at each of
// the sizes that end inside it, and when it is whole, its perfect subtree.
type chunkRange struct {
	snaps []rangeHashes
	full  *rangeHashes
}

// chunkRanges hashes the chunks of leaves on every CPU.
func chunkRanges(leaves [][]byte, sizes []uint64) []chunkRange {
	n := (len(leaves) + treeChunk - 1) / treeChunk
	out := make([]chunkRange, n)
	var next sync.Mutex
	k := 0
	take := func() int {
		next.Lock()
		defer next.Unlock()
		k++
		return k - 1
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), n) {
		wg.Go(func() {
			f := newNodeFactory()
			for c := take(); c < n; c = take() {
				out[c] = hashChunk(f, leaves, c, sizes)
			}
		})
	}
	wg.Wait()
	return out
}

// hashChunk appends chunk c's leaves to a range that begins at the chunk.
func hashChunk(f *compact.RangeFactory, leaves [][]byte, c int, sizes []uint64) chunkRange {
	begin := uint64(c) * treeChunk
	end := min(begin+treeChunk, uint64(len(leaves)))
	i, _ := slices.BinarySearch(sizes, begin+1) // the first size that ends in the chunk
	var out chunkRange
	r := f.NewEmptyRange(begin)
	for j := begin; j < end; j++ {
		_ = r.Append(leaves[j], nil) // cannot fail: j is r's end
		for ; i < len(sizes) && sizes[i] == j+1; i++ {
			out.snaps = append(out.snaps, rangeHashes{j + 1, slices.Clone(r.Hashes())})
		}
	}
	if end-begin == treeChunk {
		out.full = &rangeHashes{end, r.Hashes()}
	}
	return out
}

// newNodeFactory makes ranges that hash nodes as RFC 6962 does, with
// SHA-256(0x01 || left || right), into an arena: rfc6962.Hasher makes three
// allocations a node, and a log of a million entries has a million nodes.
// A factory is for one goroutine.
func newNodeFactory() *compact.RangeFactory {
	var arena []byte
	return &compact.RangeFactory{Hash: func(left, right []byte) []byte {
		var buf [1 + 2*sha256.Size]byte
		buf[0] = 1 // RFC 6962's node prefix
		copy(buf[1:], left)
		copy(buf[1+sha256.Size:], right)
		if len(arena) < sha256.Size {
			arena = make([]byte, 1024*sha256.Size)
		}
		sum := sha256.Sum256(buf[:])
		out := arena[:sha256.Size:sha256.Size]
		arena = arena[sha256.Size:]
		copy(out, sum[:])
		return out
	}}
}
