package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"runtime"
	"sync"
)

// scanned is what Verify needs of each line, computed once: its Merkle
// leaf hash, its chain hash, and the seq and prev it holds (or why it is
// not an entry).
type scanned struct {
	leaves [][]byte // RFC 6962 leaf hashes, slices of one array
	hashes [][32]byte
	seqs   []uint64
	prevs  [][32]byte // decoded prev
	errs   []error    // nil for an entry
}

// scanChunk is the number of lines a worker takes at a time.
const scanChunk = 4096

// scanLines parses and hashes lines on every CPU: each line's work depends
// on that line alone, and the chain and the tree are checked afterwards
// from the hashes. The per-line arrays are allocated once for the log.
func scanLines(lines [][]byte) *scanned {
	n := len(lines)
	s := &scanned{
		leaves: make([][]byte, n),
		hashes: make([][32]byte, n),
		seqs:   make([]uint64, n),
		prevs:  make([][32]byte, n),
		errs:   make([]error, n),
	}
	leafBuf := make([]byte, n*sha256.Size)
	for i := range s.leaves {
		s.leaves[i] = leafBuf[i*sha256.Size : (i+1)*sha256.Size : (i+1)*sha256.Size]
	}
	var next sync.Mutex
	start := 0
	take := func() (int, int) {
		next.Lock()
		defer next.Unlock()
		from := start
		start = min(start+scanChunk, n)
		return from, start
	}
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), (n+scanChunk-1)/scanChunk) {
		wg.Go(func() {
			h := sha256.New()
			for from, to := take(); from < to; from, to = take() {
				for i := from; i < to; i++ {
					s.scan(i, lines[i], h)
				}
			}
		})
	}
	wg.Wait()
	return s
}

// leafPrefix is RFC 6962's domain separator for leaves.
var leafPrefix = []byte{0}

// scan fills in line i, hashing its leaf with h (a sha256, reused).
func (s *scanned) scan(i int, line []byte, h hash.Hash) {
	h.Reset()
	_, _ = h.Write(leafPrefix)
	_, _ = h.Write(line)
	h.Sum(s.leaves[i][:0])
	s.hashes[i] = lineHash(line)
	if seq, prev, ok := checkCanonical(line); ok {
		s.seqs[i], s.prevs[i] = seq, prev
		return
	}
	e, err := ParseEntry(line) // accepts it after all, or says why not
	if err != nil {
		s.errs[i] = err
		return
	}
	s.seqs[i] = e.Seq
	_, _ = hex.Decode(s.prevs[i][:], []byte(e.Prev)) // ParseEntry checked: 64 lowercase hex digits
}
