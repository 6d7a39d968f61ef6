package audit

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
	"golang.org/x/mod/sumdb/note"
)

// ErrNotCheckpointed reports that no checkpoint of the log covers the entry.
var ErrNotCheckpointed = errors.New("audit: entry is not covered by a checkpoint")

// InclusionProof proves that an entry is in the tree a signed checkpoint
// commits to (RFC 6962 inclusion proof).
type InclusionProof struct {
	Index      uint64   `json:"index"`      // the entry's seq: its leaf index
	Entry      []byte   `json:"entry"`      // the entry's line
	LeafHash   []byte   `json:"leaf_hash"`  // RFC 6962 leaf hash of Entry
	TreeSize   uint64   `json:"tree_size"`  // the checkpoint's size
	RootHash   []byte   `json:"root_hash"`  // the checkpoint's root
	Hashes     [][]byte `json:"hashes"`     // the audit path, leaf to root
	Checkpoint []byte   `json:"checkpoint"` // the signed note
}

// Prove returns an inclusion proof of entry seq against the latest
// checkpoint that verifies under a key of the log's history. It does not judge that key:
// check the proof with VerifySigned and a key the auditor trusts, or run
// Verify. It fails with ErrNotCheckpointed when seq is past that checkpoint
// and with ErrCorrupt when the entries do not match its root.
func Prove(dir string, seq uint64) (*InclusionProof, error) {
	lines, c, msg, err := checkpointOfSize(dir, 0)
	if err != nil {
		return nil, err
	}
	if msg == nil || seq >= c.Size {
		return nil, fmt.Errorf("%w: entry %d, latest checkpoint size %d", ErrNotCheckpointed, seq, c.Size)
	}
	if uint64(len(lines)) < c.Size {
		return nil, fmt.Errorf("%w: the checkpoint covers %d entries; the log has %d", ErrCorrupt, c.Size, len(lines))
	}
	leaves := make([][]byte, c.Size)
	for i := range leaves {
		leaves[i] = hasher.HashLeaf(lines[i])
	}
	if !bytes.Equal(rootsAt(leaves, []uint64{c.Size})[c.Size], c.Root) {
		return nil, fmt.Errorf("%w: the entries do not match the latest checkpoint's root", ErrCorrupt)
	}
	nodes, err := proof.Inclusion(seq, c.Size)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	hashes, err := nodeHashes(leaves, nodes)
	if err != nil {
		return nil, err
	}
	return &InclusionProof{
		Index:      seq,
		Entry:      bytes.Clone(lines[seq]),
		LeafHash:   leaves[seq],
		TreeSize:   c.Size,
		RootHash:   c.Root,
		Hashes:     hashes,
		Checkpoint: bytes.Clone(msg),
	}, nil
}

// checkpointOfSize reads the log's complete lines and its newest checkpoint
// that verifies under a key of its history, of the given size, or of any
// size when size is 0 (msg nil when there is none).
func checkpointOfSize(dir string, size uint64) (lines [][]byte, c checkpoint, msg []byte, err error) {
	entries, checkpoints, _, err := readLog(dir)
	if err != nil {
		return nil, c, nil, err
	}
	h, err := readKeyHistory(dir)
	if err != nil {
		return nil, c, nil, err
	}
	nvs, err := h.verifiers()
	if err != nil {
		return nil, c, nil, err
	}
	vs := noteVerifiers(nvs)
	notes, _ := splitRecords(checkpoints)
	for k := len(notes) - 1; k >= 0 && msg == nil; k-- {
		if cp, _, err := openCheckpointBy(notes[k], vs); err == nil && cp.Origin == h[0].Origin && (size == 0 || cp.Size == size) {
			c, msg = cp, notes[k]
		}
	}
	lines, _ = splitEntries(entries)
	return lines, c, msg, nil
}

// Verify checks the proof's own consistency: Entry is entry Index and hashes
// to LeafHash, TreeSize and RootHash are the checkpoint's, and the audit
// path leads from LeafHash to RootHash. It does not check the checkpoint's
// signature: VerifySigned does.
func (p *InclusionProof) Verify() error {
	c, err := parseBody(noteText(p.Checkpoint))
	if err != nil {
		return err
	}
	if c.Size != p.TreeSize || !bytes.Equal(c.Root, p.RootHash) {
		return errors.New("audit: proof's tree size or root is not its checkpoint's")
	}
	e, err := ParseEntry(p.Entry)
	if err != nil {
		return err
	}
	if e.Seq != p.Index {
		return fmt.Errorf("audit: proof is for entry %d but holds entry %d", p.Index, e.Seq)
	}
	if !bytes.Equal(hasher.HashLeaf(p.Entry), p.LeafHash) {
		return errors.New("audit: proof's entry does not hash to its leaf hash")
	}
	if err := proof.VerifyInclusion(hasher, p.Index, p.TreeSize, p.LeafHash, p.Hashes, p.RootHash); err != nil {
		return fmt.Errorf("audit: inclusion proof: %w", err)
	}
	return nil
}

// VerifySigned is Verify plus the checkpoint's signature by key.
func (p *InclusionProof) VerifySigned(key *ecdsa.PublicKey) error {
	if _, err := OpenCheckpoint(p.Checkpoint, []*ecdsa.PublicKey{key}); err != nil {
		return err
	}
	return p.Verify()
}

// noteText returns a signed note's text, signatures unchecked.
func noteText(msg []byte) string {
	_, err := note.Open(msg, nil)
	var unverified *note.UnverifiedNoteError
	if errors.As(err, &unverified) {
		return unverified.Note.Text
	}
	return ""
}

// nodeHashes computes the hashes of a proof's nodes from the leaves.
func nodeHashes(leaves [][]byte, nodes proof.Nodes) ([][]byte, error) {
	hashes := make([][]byte, len(nodes.IDs))
	for i, id := range nodes.IDs {
		begin, end := id.Coverage()
		hashes[i] = rootsAt(leaves[begin:end], []uint64{end - begin})[end-begin]
	}
	hashes, err := nodes.Rehash(hashes, hasher.HashChildren)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return hashes, nil
}
