package audit

import (
	"bytes"
	"cmp"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/transparency-dev/merkle/compact"
)

// Problem kinds: stable codes that tests, logs and `writ audit verify` use.
const (
	ProblemEntryMalformed         = "entry_malformed"          // a line is not a canonical entry
	ProblemSeqMismatch            = "seq_mismatch"             // an entry's seq is not its line number
	ProblemChainBroken            = "chain_broken"             // an entry's prev is not the hash of the line before
	ProblemTornTail               = "torn_tail"                // the last line or checkpoint is incomplete (a crash mid-append)
	ProblemUnsignedTail           = "unsigned_tail"            // entries no checkpoint covers
	ProblemRootMismatch           = "root_mismatch"            // a checkpoint's root is not the root of the entries
	ProblemEntriesMissing         = "entries_missing"          // a checkpoint covers more entries than there are
	ProblemCheckpointMalformed    = "checkpoint_malformed"     // not a canonical checkpoint of this log
	ProblemCheckpointBadSignature = "checkpoint_bad_signature" // signed under the log's key ID, but the signature fails
	ProblemCheckpointKeyUntrusted = "checkpoint_key_untrusted" // signed by another key, or the log's key is not trusted
	ProblemCheckpointOrder        = "checkpoint_order"         // a checkpoint is no larger than the one before it
	ProblemKeyMalformed           = "key_malformed"            // key.json is unreadable
	ProblemKeyNotCertified        = "key_not_certified"        // the TPM key's certification by the AK does not hold
	ProblemKeyFile                = "key_file"                 // checkpoints are signed by a file key
	ProblemKeyNotAttested         = "key_not_attested"         // the broker's evidence does not hold the key
	ProblemAnchorMissing          = "anchor_missing"           // the log is shorter than the checkpoint the broker anchored: truncated or rolled back
	ProblemAnchorMismatch         = "anchor_mismatch"          // the entries do not match the checkpoint the broker anchored: rewritten
	ProblemTooMany                = "too_many_problems"        // the list was cut short
)

// maxProblems bounds a Report.
const maxProblems = 1000

// Problem is one finding of Verify. Index is the first entry it concerns, or
// -1 when it concerns the log as a whole (its key). For a checkpoint that
// cannot be trusted, Index is the first entry that no good checkpoint before
// it covers; for a root mismatch, the first entry in the range it covers
// that has a problem of its own, when one does.
type Problem struct {
	Index  int64
	Kind   string
	Detail string
}

func (p Problem) String() string { return fmt.Sprintf("%s at %d: %s", p.Kind, p.Index, p.Detail) }

// Report is what Verify found. Problems are ordered by Index: the first one
// is the first bad entry and why (or what is wrong with the key).
type Report struct {
	Entries      uint64 // complete lines in entries.jsonl
	Checkpointed uint64 // entries covered by the largest checkpoint that verifies
	KeyKind      string // key.json's kind: "tpm" or "file"
	Keys         int    // keys in the log's history (key.json and keys.jsonl)
	Anchored     uint64 // size of the broker's anchored checkpoint the log holds (with Evidence)
	Problems     []Problem
}

// OK reports whether Verify found nothing wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 }

// VerifyOptions say what the auditor trusts.
type VerifyOptions struct {
	// Evidence is what the broker attested about the node (ParseEvidence of
	// `writ node evidence`): every "tpm" key must be one the broker
	// recorded, certified by the AK it enrolled over the nonce of a passing
	// attestation and bound to the PCR values that attestation reported; and
	// the log must hold the checkpoint the broker anchored last. This is the
	// way to verify a node's log.
	Evidence *Evidence
	// AKPublic is the TPMT_PUBLIC of an AK: a "tpm" key must be certified by
	// exactly this AK. It proves only that some TPM holding that AK signed:
	// not that the broker enrolled it, nor that the key's PCR values passed
	// attestation. Ignored when Evidence is set.
	AKPublic []byte
	// TrustedKey, when set, must be key.json's key. It is the only way to
	// trust a file key, and it vouches for a TPM key without AKPublic.
	TrustedKey *ecdsa.PublicKey
	// AllowUnsignedTail accepts entries past the last checkpoint (a live log).
	AllowUnsignedTail bool
	// AllowFileKey accepts checkpoints signed by a file key.
	AllowFileKey bool
}

// Verify checks the log in dir offline, with public keys only: key.json
// against the trusted AK or key, every entry's encoding, sequence number and
// chain link, every checkpoint's signature, and its root against the root
// recomputed from the entries. It returns an error only when the files cannot
// be read; everything wrong with them is a Problem.
func Verify(dir string, opts VerifyOptions) (*Report, error) {
	entries, checkpoints, key, err := readLog(dir)
	if err != nil {
		return nil, err
	}
	keys, err := os.ReadFile(filepath.Join(dir, keysFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return verifyLog(entries, checkpoints, key, keys, opts), nil
}

type verification struct {
	rep      Report
	problems []Problem
	counts   map[string]int
}

// add records a problem. A garbled file could yield one per line: each kind
// is kept to a bounded number, enough to fill a Report.
func (v *verification) add(index int64, kind, format string, args ...any) {
	if v.counts == nil {
		v.counts = make(map[string]int)
	}
	if v.counts[kind]++; v.counts[kind] <= maxProblems {
		v.problems = append(v.problems, Problem{Index: index, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	}
}

func verifyLog(entries, checkpoints, key, keys []byte, opts VerifyOptions) *Report {
	v := &verification{}
	h, nvs := v.checkKeys(key, keys, opts)
	lines, torn := splitEntries(entries)
	n := uint64(len(lines))
	v.rep.Entries = n
	s := scanLines(lines)
	leaves, hashes := s.leaves, s.hashes
	own := make([]bool, n) // the entry has a problem of its own
	var breaks []uint64    // entries whose prev does not match
	for i := range lines {
		if err := s.errs[i]; err != nil {
			v.add(int64(i), ProblemEntryMalformed, "%v", err)
			own[i] = true
			continue
		}
		if seq := s.seqs[i]; seq != uint64(i) {
			// An entry removed or inserted shifts all that follow: report
			// where the shift starts.
			if i == 0 || s.errs[i-1] != nil || seq-uint64(i) != s.seqs[i-1]-uint64(i-1) {
				v.add(int64(i), ProblemSeqMismatch, "line %d holds entry %d", i, seq)
			}
			own[i] = true
		}
		var want [32]byte // zeros: the prev of entry 0
		if i > 0 {
			want = hashes[i-1]
		}
		if s.prevs[i] != want {
			breaks = append(breaks, uint64(i))
		}
	}
	if torn != nil {
		v.add(int64(n), ProblemTornTail, "entries.jsonl ends in a %d-byte partial line (a crash mid-append)", len(torn))
	}

	var cps []verifiedCheckpoint
	if nvs != nil {
		cps = v.checkCheckpoints(checkpoints, h, nvs, n, leaves)
		if opts.Evidence != nil {
			v.checkAnchor(opts.Evidence.AuditAnchor, h, nvs, n, leaves)
		}
	}
	flagged := v.locateBreaks(breaks, own, lines, hashes, leaves, cps)
	for _, c := range cps {
		if c.problem == ProblemRootMismatch {
			idx := c.covered
			for i := c.covered; i < c.Size; i++ {
				if own[i] || flagged[i] {
					idx = i
					break
				}
			}
			v.add(int64(idx), ProblemRootMismatch, "checkpoint %d (size %d) does not commit to these entries", c.n, c.Size)
		}
	}
	var claimed uint64
	for _, c := range cps {
		claimed = max(claimed, min(c.Size, n))
	}
	if n > claimed && !opts.AllowUnsignedTail {
		v.add(int64(claimed), ProblemUnsignedTail, "entries %d-%d are covered by no checkpoint", claimed, n-1)
	}

	slices.SortStableFunc(v.problems, func(a, b Problem) int { return cmp.Compare(a.Index, b.Index) })
	if len(v.problems) > maxProblems {
		last := v.problems[maxProblems-1].Index
		v.problems = append(v.problems[:maxProblems], Problem{Index: last, Kind: ProblemTooMany, Detail: "further problems are not listed"})
	}
	v.rep.Problems = v.problems
	return &v.rep
}

// checkKeys reads key.json and keys.jsonl and checks each key against
// what the auditor trusts. It returns the history and one verifier per key,
// or nils if the keys are unreadable.
func (v *verification) checkKeys(keyJSON, keysJSONL []byte, opts VerifyOptions) (keyHistory, []*noteVerifier) {
	h, err := parseKeyHistory(keyJSON, keysJSONL)
	if err != nil {
		v.add(-1, ProblemKeyMalformed, "%v", err)
		return nil, nil
	}
	v.rep.KeyKind, v.rep.Keys = h[0].Kind, len(h)
	nvs, err := h.verifiers()
	if err != nil {
		v.add(-1, ProblemKeyMalformed, "%v", err)
		return nil, nil
	}
	if ev := opts.Evidence; ev != nil && h[0].Origin != NodeOrigin(ev.Node) {
		v.add(-1, ProblemCheckpointKeyUntrusted, "the log's origin %q is not that of the node in the evidence (%s)", h[0].Origin, ev.Node)
	}
	for i, info := range h {
		v.checkKey(i, info, nvs[i].key, opts)
	}
	return h, nvs
}

// checkKey checks key i of the history.
func (v *verification) checkKey(i int, info *KeyInfo, pub *ecdsa.PublicKey, opts VerifyOptions) {
	name := "key.json's key"
	if i > 0 {
		name = fmt.Sprintf("key %d of %s", i, keysFile)
	}
	if opts.TrustedKey != nil && !opts.TrustedKey.Equal(pub) {
		v.add(-1, ProblemCheckpointKeyUntrusted, "%s is not the trusted key", name)
	}
	switch info.Kind {
	case KeyTPM:
		switch {
		case opts.Evidence != nil:
			if err := info.checkAttested(opts.Evidence); errors.Is(err, errKeyNotAttested) {
				v.add(-1, ProblemKeyNotAttested, "%s: %v", name, err)
			} else if err != nil {
				v.add(-1, ProblemKeyNotCertified, "%s: %v", name, err)
			}
		case opts.AKPublic != nil:
			if err := info.checkCertification(opts.AKPublic); err != nil {
				v.add(-1, ProblemKeyNotCertified, "%s: %v", name, err)
			}
		case opts.TrustedKey == nil:
			v.add(-1, ProblemKeyNotCertified, "no evidence or AK was given to check the TPM key's certification")
		}
	case KeyFile:
		if !opts.AllowFileKey {
			v.add(-1, ProblemKeyFile, "checkpoints are signed by a file key, not a TPM-resident one")
		}
		if opts.TrustedKey == nil {
			v.add(-1, ProblemCheckpointKeyUntrusted, "a file key is trusted only when given as the trusted key")
		}
	}
}

// checkAnchor checks that the log holds the checkpoint the broker anchored
// last: at least its size of entries, whose root is its root. A log cut back
// to an earlier checkpoint, or rewritten, fails here though it is a valid
// log in itself.
func (v *verification) checkAnchor(anchor string, h keyHistory, nvs []*noteVerifier, n uint64, leaves [][]byte) {
	if anchor == "" {
		return
	}
	c, id, err := openCheckpointBy([]byte(anchor), noteVerifiers(nvs))
	if err == nil && c.Origin != h[0].Origin {
		err = fmt.Errorf("origin %q is not the log's %q", c.Origin, h[0].Origin)
	}
	if err != nil || keyIndex(nvs, id) < 0 {
		v.add(-1, ProblemAnchorMismatch, "the broker's anchored checkpoint is not one of this log's keys: %v", err)
		return
	}
	if c.Size > n {
		v.add(int64(n), ProblemAnchorMissing, "the broker anchored a checkpoint of %d entries; the log has %d (truncated or rolled back)", c.Size, n)
		return
	}
	if !bytes.Equal(rootsAt(leaves, []uint64{c.Size})[c.Size], c.Root) {
		v.add(0, ProblemAnchorMismatch, "the first %d entries do not match the checkpoint the broker anchored (rewritten)", c.Size)
		return
	}
	v.rep.Anchored = c.Size
}

// verifiedCheckpoint is a checkpoint whose signature verified.
type verifiedCheckpoint struct {
	checkpoint
	n       int    // position in the checkpoints file
	key     int    // the key that signed it: its position in the history
	covered uint64 // entries good checkpoints before it cover
	problem string // ProblemRootMismatch, or "" when its root is right
}

// checkCheckpoints verifies each checkpoint's signature, form and root.
func (v *verification) checkCheckpoints(data []byte, h keyHistory, nvs []*noteVerifier, n uint64, leaves [][]byte) []verifiedCheckpoint {
	notes, rest := splitRecords(data)
	type result struct {
		c   verifiedCheckpoint
		err error
	}
	results := make([]result, len(notes))
	var sizes []uint64
	vs := noteVerifiers(nvs)
	for k, msg := range notes {
		c, id, err := openCheckpointBy(msg, vs)
		key := keyIndex(nvs, id)
		if err == nil && c.Origin != h[0].Origin {
			err = fmt.Errorf("%w: origin %q is not key.json's %q", errCheckpointMalformed, c.Origin, h[0].Origin)
		}
		if err == nil && c.KeyKind != h[key].Kind {
			err = fmt.Errorf("%w: says \"key: %s\" but its key is %q", errCheckpointMalformed, c.KeyKind, h[key].Kind)
		}
		results[k] = result{verifiedCheckpoint{checkpoint: c, n: k, key: key}, err}
		if err == nil && c.Size <= n {
			sizes = append(sizes, c.Size)
		}
	}
	roots := rootsAt(leaves, sizes)

	var out []verifiedCheckpoint
	var good, last uint64
	var seen bool
	lastKey := 0
	for _, r := range results {
		c := r.c
		c.covered = good
		switch {
		case r.err != nil:
			kind := ProblemCheckpointMalformed
			if errors.Is(r.err, errCheckpointUntrusted) {
				kind = ProblemCheckpointKeyUntrusted
			} else if errors.Is(r.err, errCheckpointSignature) {
				kind = ProblemCheckpointBadSignature
			}
			v.add(int64(good), kind, "checkpoint %d: %v", c.n, r.err)
			continue
		case seen && c.Size <= last:
			v.add(int64(good), ProblemCheckpointOrder, "checkpoint %d (size %d) follows one of size %d", c.n, c.Size, last)
		case c.key < lastKey:
			// Keys sign in the order the history lists them: a retired key
			// (bound to boot PCRs the node has left) signs no later one.
			v.add(int64(good), ProblemCheckpointOrder, "checkpoint %d is signed by key %d after one signed by key %d", c.n, c.key, lastKey)
		}
		seen, last, lastKey = true, c.Size, max(lastKey, c.key)
		if c.Size > n {
			v.add(int64(n), ProblemEntriesMissing, "checkpoint %d covers %d entries; the log has %d", c.n, c.Size, n)
			out = append(out, c)
			continue
		}
		if !bytes.Equal(roots[c.Size], c.Root) {
			c.problem = ProblemRootMismatch
		} else {
			good = max(good, c.Size)
		}
		out = append(out, c)
	}
	if len(rest) > 0 {
		v.add(int64(good), ProblemTornTail, "the checkpoints file ends in a %d-byte partial checkpoint", len(rest))
	}
	v.rep.Checkpointed = good
	return out
}

func rootOf(r *compact.Range) []byte {
	if r.End() == 0 {
		return hasher.EmptyRoot()
	}
	root, _ := r.GetRootHash(nil) // cannot fail: r starts at 0
	return bytes.Clone(root)
}

// maxRepairs bounds the chain breaks locateBreaks examines with a tree.
const maxRepairs = 16

// locateBreaks reports each broken link (entry i's prev is not the hash of
// entry i-1) at the entry that was altered. The chain alone cannot tell
// whether entry i-1 changed or entry i's prev did; a checkpoint covering
// entry i can: if restoring entry i's prev to the hash of entry i-1 makes the
// checkpoint's root match, entry i's prev was altered, otherwise entry i-1
// was. Without a covering checkpoint the break is reported at entry i-1.
// One altered entry breaks at most two links; it is reported once. The
// result marks the entries reported.
func (v *verification) locateBreaks(breaks []uint64, own []bool, lines [][]byte, hashes [][32]byte, leaves [][]byte, cps []verifiedCheckpoint) []bool {
	flagged := make([]bool, len(leaves))
	report := func(at uint64, format string, args ...any) {
		if !flagged[at] {
			flagged[at] = true
			v.add(int64(at), ProblemChainBroken, format, args...)
		}
	}
	for k, i := range breaks {
		switch {
		case i == 0:
			report(0, "entry 0's prev is not all zeros")
		case own[i]:
			report(i, "entry %d does not chain onto entry %d", i, i-1)
		case own[i-1] || k >= maxRepairs:
			report(i-1, "entry %d does not hash to entry %d's prev", i-1, i)
		case prevAltered(i, lines[i], hashes[i-1], leaves, cps):
			report(i, "entry %d's prev was altered: it is not the hash of entry %d", i, i-1)
		default:
			report(i-1, "entry %d was altered: it does not hash to entry %d's prev", i-1, i)
		}
	}
	return flagged
}

func prevAltered(i uint64, line []byte, prevHash [32]byte, leaves [][]byte, cps []verifiedCheckpoint) bool {
	var c *verifiedCheckpoint
	for k := range cps {
		if cps[k].Size > i && cps[k].Size <= uint64(len(leaves)) && (c == nil || cps[k].Size < c.Size) {
			c = &cps[k]
		}
	}
	if c == nil {
		return false
	}
	repaired, err := ParseEntry(line) // entry i has no problem of its own
	if err != nil {
		return false
	}
	repaired.Prev = hexHash(prevHash)
	r := rangeFactory.NewEmptyRange(0)
	for j := uint64(0); j < c.Size; j++ {
		leaf := leaves[j]
		if j == i {
			leaf = hasher.HashLeaf(appendLine(nil, &repaired))
		}
		_ = r.Append(leaf, nil)
	}
	return bytes.Equal(rootOf(r), c.Root)
}

// Read returns the log's entries for display, without verifying them (use
// Verify). A torn last line is not an entry and is skipped; at a malformed
// line Read stops and returns the entries before it with the error.
func Read(dir string) ([]Entry, error) {
	data, err := os.ReadFile(filepath.Join(dir, entriesFile))
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	lines, _ := splitEntries(data)
	out := make([]Entry, 0, len(lines))
	for i, line := range lines {
		e, err := ParseEntry(line)
		if err != nil {
			return out, fmt.Errorf("audit: entry %d: %w", i, err)
		}
		out = append(out, e)
	}
	return out, nil
}
