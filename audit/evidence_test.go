package audit

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

const evidenceNode = "spiffe://writ.test/node/abc"

// tpmKeyFixture makes a PCR-bound key in tpm over a fresh nonce, certified
// by akBlob, and returns its signer, its KeyInfo (claims as the agent
// writes them) and the record the broker would keep of it.
func tpmKeyFixture(t *testing.T, tpm *prover.TPM, ak *prover.AK, sel []int, nonce []byte) (*prover.PCRSigner, KeyInfo, AttestedKey) {
	t.Helper()
	if nonce == nil {
		nonce = make([]byte, 32)
		rand.Read(nonce)
	}
	pk, err := tpm.NewPCRKey(ak.Blob, sel, nonce)
	if err != nil {
		t.Fatal(err)
	}
	values, err := tpm.PCRValues(sel)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tpm.LoadPCRSigner(pk.Blob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { signer.Close() })
	info := KeyInfo{Kind: KeyTPM, Origin: NodeOrigin(evidenceNode), PublicKey: mustSPKIOf(t, signer.Public()),
		AKPublic: ak.Params.Public, Certification: &pk.Certification, PCRs: pk.Sel, PCRValues: map[int]string{}, Qualifying: nonce}
	rec := AttestedKey{Result: "r-" + hex.EncodeToString(nonce[:4]), PublicKey: info.PublicKey, Nonce: nonce, PCRs: pk.Sel, PCRValues: map[int]string{}}
	for pcr, v := range values {
		info.PCRValues[pcr] = hex.EncodeToString(v)
		rec.PCRValues[pcr] = hex.EncodeToString(v)
	}
	return signer, info, rec
}

// TestVerifyEvidence: a node's log verifies against what the broker
// attested (its AK, the keys it recorded with a passing result's PCR values
// and nonce, its anchored checkpoint), across a key rotation; logs made with
// any other key, and logs cut back to before the anchor, do not.
func TestVerifyEvidence(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tpm.Close() })
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	sel := []int{0, 4, 7}
	signer1, info1, rec1 := tpmKeyFixture(t, tpm, ak, sel, nil)
	dir := filepath.Join(t.TempDir(), "log")
	l, err := Create(dir, signer1, info1, Options{Origin: NodeOrigin(evidenceNode), CheckpointEvery: 1 << 20, CheckpointInterval: 1 << 62, NoCheckpointOnClose: true})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 0, 3)
	mustCheckpoint(t, l)
	appendN(t, l, 3, 2)
	mustCheckpoint(t, l)
	mustClose(t, l)
	ev := &Evidence{Node: evidenceNode, AKPublic: ak.Params.Public, AuditKeys: []AttestedKey{rec1}}
	rep := mustVerify(t, dir, VerifyOptions{Evidence: ev})
	wantOK(t, rep)

	// A legitimate boot change: the old key can no longer sign; a new key,
	// certified over the nonce of the attestation that passed with the new
	// values, is added to the history and signs what follows.
	sw.Extend(t, 4, sha256.Sum256([]byte("kernel 6.2")))
	signer1.Close() // swtpm holds three objects
	signer2, info2, rec2 := tpmKeyFixture(t, tpm, ak, sel, nil)
	if err := AddKey(dir, info2); err != nil {
		t.Fatalf("AddKey: %v", err)
	}
	l, err = Open(dir, signer2, Options{CheckpointEvery: 1 << 20, CheckpointInterval: 1 << 62, NoCheckpointOnClose: true})
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 5, 3)
	mustCheckpoint(t, l)
	mustClose(t, l)
	signer2.Close()
	anchor := lastNote(t, dir)
	ev.AuditKeys = append(ev.AuditKeys, rec2)
	ev.AuditAnchor = string(anchor)
	rep = mustVerify(t, dir, VerifyOptions{Evidence: ev})
	wantOK(t, rep)
	if rep.Keys != 2 || rep.Checkpointed != 8 || rep.Anchored != 8 {
		t.Fatalf("report %+v, want 2 keys, 8 entries checkpointed and anchored", rep)
	}

	// A key the broker did not record fails, even one certified by the
	// node's AK (the old, trusting --ak check accepts it).
	onlyFirst := &Evidence{Node: evidenceNode, AKPublic: ak.Params.Public, AuditKeys: []AttestedKey{rec1}}
	wantProblem(t, mustVerify(t, dir, VerifyOptions{Evidence: onlyFirst}), ProblemKeyNotAttested)
	wantOK(t, mustVerify(t, dir, VerifyOptions{AKPublic: ak.Params.Public, AllowUnsignedTail: true}))

	// Attack: the node leaves its attested boot state, makes a new key
	// under the same AK (over an old nonce), and rewrites its log. Under
	// the trusting --ak check that verifies; against the evidence it does
	// not: the broker never recorded the key...
	sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	rogue, rogueInfo, rogueRec := tpmKeyFixture(t, tpm, ak, sel, rec2.Nonce)
	forged := forgeLog(t, rogue, rogueInfo)
	wantOK(t, mustVerify(t, forged, VerifyOptions{AKPublic: ak.Params.Public}))
	wantProblem(t, mustVerify(t, forged, VerifyOptions{Evidence: ev}), ProblemKeyNotAttested)
	// ...and were it listed with a passing result's values, its PCR
	// policy and nonce are not that result's.
	rogueRec.PCRValues, rogueRec.Nonce = rec2.PCRValues, rec2.Nonce
	ev2 := *ev
	ev2.AuditKeys = append([]AttestedKey{rogueRec}, ev.AuditKeys...)
	ev2.AuditAnchor = ""
	wantProblem(t, mustVerify(t, forged, VerifyOptions{Evidence: &ev2}), ProblemKeyNotCertified)

	// Attack: a log whose "AK" is the node's own, not the enrolled one.
	ak2, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	own, ownInfo, _ := tpmKeyFixture(t, tpm, ak2, sel, nil)
	ownLog := forgeLog(t, own, ownInfo)
	wantOK(t, mustVerify(t, ownLog, VerifyOptions{AKPublic: ak2.Params.Public}))
	wantProblem(t, mustVerify(t, ownLog, VerifyOptions{Evidence: ev}), ProblemKeyNotAttested)

	// Attack: roll the log back to an earlier checkpoint (5 entries, the
	// first key). The result is a valid log in itself; the broker's anchor
	// (8 entries) shows it was cut.
	cut := t.TempDir()
	copyLog(t, dir, cut)
	entries, _ := os.ReadFile(filepath.Join(dir, entriesFile))
	lines, _ := splitLines(entries)
	var five []byte
	for _, line := range lines[:5] {
		five = append(append(five, line...), '\n')
	}
	mustWrite(t, filepath.Join(cut, entriesFile), five)
	cps, _ := os.ReadFile(filepath.Join(dir, checkpointsFile))
	notes, _ := splitRecords(cps)
	var first2 []byte
	for _, n := range notes[:2] {
		first2 = append(append(first2, n...), '\n')
	}
	mustWrite(t, filepath.Join(cut, checkpointsFile), first2)
	noAnchor := *ev
	noAnchor.AuditAnchor = ""
	wantOK(t, mustVerify(t, cut, VerifyOptions{Evidence: &noAnchor}))
	wantProblem(t, mustVerify(t, cut, VerifyOptions{Evidence: ev}), ProblemAnchorMissing)

	// A consistency proof from the rolled-back size to the latest
	// checkpoint verifies, signed by the second key.
	p, err := ProveConsistency(dir, 5, 0)
	if err != nil {
		t.Fatal(err)
	}
	pub2, _ := info2.publicKey()
	if err := p.VerifySigned(pub2); err != nil {
		t.Fatalf("consistency proof 5 -> 8: %v", err)
	}
	p.OldRoot = p.NewRoot
	if err := p.Verify(); err == nil {
		t.Fatal("a consistency proof from the wrong old root verified")
	}
	if raw, err := json.Marshal(ev); err != nil {
		t.Fatal(err)
	} else if back, err := ParseEvidence(raw); err != nil || len(back.AuditKeys) != 2 {
		t.Fatalf("ParseEvidence: %v %v", back, err)
	}
}

// forgeLog makes a fresh two-entry, checkpointed log signed by signer.
func forgeLog(t *testing.T, signer *prover.PCRSigner, info KeyInfo) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "forged")
	l, err := Create(dir, signer, info, Options{Origin: info.Origin, CheckpointEvery: 1 << 20, CheckpointInterval: 1 << 62, NoCheckpointOnClose: true})
	if err != nil {
		t.Fatalf("forge: %v", err)
	}
	appendN(t, l, 0, 2)
	mustCheckpoint(t, l)
	mustClose(t, l)
	signer.Close()
	return dir
}

func copyLog(t *testing.T, from, to string) {
	t.Helper()
	for _, f := range []string{entriesFile, checkpointsFile, keyFile, keysFile} {
		if b, err := os.ReadFile(filepath.Join(from, f)); err == nil {
			mustWrite(t, filepath.Join(to, f), b)
		}
	}
}

func lastNote(t *testing.T, dir string) []byte {
	t.Helper()
	cps, err := os.ReadFile(filepath.Join(dir, checkpointsFile))
	if err != nil {
		t.Fatal(err)
	}
	notes, _ := splitRecords(cps)
	return notes[len(notes)-1]
}

func wantProblem(t *testing.T, rep *Report, kind string) {
	t.Helper()
	for _, p := range rep.Problems {
		if p.Kind == kind {
			return
		}
	}
	t.Fatalf("problems %v, want %s", rep.Problems, kind)
}
