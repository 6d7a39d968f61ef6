package audit

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/proof"
)

// ConsistencyProof proves that the tree a signed checkpoint commits to
// extends the tree of the log's first OldSize entries (RFC 6962 consistency
// proof): nothing in those entries was changed or removed.
type ConsistencyProof struct {
	OldSize    uint64   `json:"old_size"`
	OldRoot    []byte   `json:"old_root"`   // root of the first OldSize entries
	NewSize    uint64   `json:"new_size"`   // the checkpoint's size
	NewRoot    []byte   `json:"new_root"`   // the checkpoint's root
	Hashes     [][]byte `json:"hashes"`     // the proof, RFC 9162 order
	Checkpoint []byte   `json:"checkpoint"` // the signed note of NewSize
}

// ProveConsistency returns a consistency proof from the first oldSize
// entries to the log's newest checkpoint that verifies under a key of its
// history (newSize 0), or to its checkpoint of size newSize. Like Prove it
// does not judge the keys. It fails with ErrNotCheckpointed when there is
// no such checkpoint or it is smaller than oldSize, and with ErrCorrupt when
// the entries do not match it.
func ProveConsistency(dir string, oldSize, newSize uint64) (*ConsistencyProof, error) {
	lines, c, msg, err := checkpointOfSize(dir, newSize)
	if err != nil {
		return nil, err
	}
	if msg == nil || c.Size < oldSize {
		return nil, fmt.Errorf("%w: no checkpoint of size %d at least %d", ErrNotCheckpointed, newSize, oldSize)
	}
	if uint64(len(lines)) < c.Size {
		return nil, fmt.Errorf("%w: the checkpoint covers %d entries; the log has %d", ErrCorrupt, c.Size, len(lines))
	}
	leaves := make([][]byte, c.Size)
	for i := range leaves {
		leaves[i] = hasher.HashLeaf(lines[i])
	}
	roots := rootsAt(leaves, []uint64{oldSize, c.Size})
	if !bytes.Equal(roots[c.Size], c.Root) {
		return nil, fmt.Errorf("%w: the entries do not match the checkpoint's root", ErrCorrupt)
	}
	hashes, err := consistencyHashes(leaves, oldSize)
	if err != nil {
		return nil, err
	}
	return &ConsistencyProof{OldSize: oldSize, OldRoot: roots[oldSize], NewSize: c.Size, NewRoot: c.Root,
		Hashes: hashes, Checkpoint: bytes.Clone(msg)}, nil
}

// consistencyHashes computes the proof from oldSize to len(leaves).
func consistencyHashes(leaves [][]byte, oldSize uint64) ([][]byte, error) {
	size := uint64(len(leaves))
	if oldSize == 0 || oldSize == size {
		return [][]byte{}, nil
	}
	nodes, err := proof.Consistency(oldSize, size)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return nodeHashes(leaves, nodes)
}

// VerifyConsistency checks an RFC 6962 consistency proof from the tree
// (oldSize, oldRoot) to (newSize, newRoot). An old tree of size 0 is
// consistent with any tree; equal sizes need equal roots.
func VerifyConsistency(oldSize, newSize uint64, oldRoot, newRoot []byte, hashes [][]byte) error {
	if oldSize == 0 {
		return nil
	}
	if err := proof.VerifyConsistency(hasher, oldSize, newSize, hashes, oldRoot, newRoot); err != nil {
		return fmt.Errorf("audit: consistency proof: %w", err)
	}
	return nil
}

// Verify checks the proof's own consistency: NewSize and NewRoot are its
// checkpoint's, and the hashes lead from (OldSize, OldRoot) to them. It does
// not check the checkpoint's signature: VerifySigned does.
func (p *ConsistencyProof) Verify() error {
	c, err := parseBody(noteText(p.Checkpoint))
	if err != nil {
		return err
	}
	if c.Size != p.NewSize || !bytes.Equal(c.Root, p.NewRoot) {
		return errors.New("audit: proof's new size or root is not its checkpoint's")
	}
	return VerifyConsistency(p.OldSize, p.NewSize, p.OldRoot, p.NewRoot, p.Hashes)
}

// VerifySigned is Verify plus the checkpoint's signature by key.
func (p *ConsistencyProof) VerifySigned(key *ecdsa.PublicKey) error {
	if _, err := OpenCheckpoint(p.Checkpoint, []*ecdsa.PublicKey{key}); err != nil {
		return err
	}
	return p.Verify()
}

// SignedCheckpoint is a checkpoint whose signature verified.
type SignedCheckpoint struct {
	Origin string
	Size   uint64
	Root   []byte
	Key    int // which of the keys given signed it
}

// OpenCheckpoint verifies a signed checkpoint (a note as the checkpoints
// file holds it, without the blank line) made by one of keys, all under
// the origin the note names, and parses it.
func OpenCheckpoint(msg []byte, keys []*ecdsa.PublicKey) (SignedCheckpoint, error) {
	origin, _, _ := bytes.Cut(msg, []byte("\n"))
	nvs := make([]*noteVerifier, len(keys))
	for i, k := range keys {
		v, err := newNoteVerifier(string(origin), k)
		if err != nil {
			return SignedCheckpoint{}, err
		}
		nvs[i] = v
	}
	c, id, err := openCheckpointBy(msg, noteVerifiers(nvs))
	if err != nil {
		return SignedCheckpoint{}, err
	}
	return SignedCheckpoint{Origin: c.Origin, Size: c.Size, Root: c.Root, Key: keyIndex(nvs, id)}, nil
}
