package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestTPMKey signs checkpoints with a PCR-bound key in swtpm, certified by
// the AK, and checks the certification as an auditor would.
func TestTPMKey(t *testing.T) {
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
	sel := []int{0, 1, 2, 3, 4, 5, 6, 7}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	pk, err := tpm.NewPCRKey(ak.Blob, sel, nonce)
	if err != nil {
		t.Fatalf("NewPCRKey: %v", err)
	}
	values, err := tpm.PCRValues(sel)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := tpm.LoadPCRSigner(pk.Blob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := signer.Close(); err != nil {
			t.Errorf("close signer: %v", err)
		}
	})
	info := KeyInfo{
		Kind: KeyTPM, AKPublic: ak.Params.Public, Certification: &pk.Certification,
		PCRs: pk.Sel, PCRValues: map[int]string{}, Qualifying: nonce,
	}
	for pcr, v := range values {
		info.PCRValues[pcr] = hex.EncodeToString(v)
	}

	dir := filepath.Join(t.TempDir(), "log")
	l, err := Create(dir, signer, info, Options{Origin: testOrigin, CheckpointEvery: 8})
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	appendN(t, l, 0, 20)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	rep := mustVerify(t, dir, VerifyOptions{AKPublic: ak.Params.Public})
	wantOK(t, rep)
	if rep.KeyKind != KeyTPM || rep.Checkpointed != 20 {
		t.Errorf("report = %+v", rep)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, checkpointsFile)); !strings.Contains(string(b), "\nkey: tpm\n") {
		t.Errorf("checkpoints do not say key: tpm:\n%s", b)
	}

	ak2, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	for name, opts := range map[string]VerifyOptions{
		"another AK": {AKPublic: ak2.Params.Public},
		"no AK":      {},
	} {
		rep := mustVerify(t, dir, opts)
		if len(rep.Problems) == 0 || rep.Problems[0].Kind != ProblemKeyNotCertified || rep.Problems[0].Index != -1 {
			t.Errorf("%s: problems %v, want key_not_certified first", name, rep.Problems)
		}
	}
	// A key.json claiming other PCR values, or another AK, is refused.
	for name, edit := range map[string]func(*KeyInfo){
		"PCR value": func(k *KeyInfo) { k.PCRValues[4] = hex.EncodeToString(bytes.Repeat([]byte{1}, 32)) },
		"AK":        func(k *KeyInfo) { k.AKPublic = ak2.Params.Public },
		"nonce":     func(k *KeyInfo) { k.Qualifying = []byte("other") },
	} {
		k := info
		k.Origin, k.PublicKey = testOrigin, mustSPKIOf(t, signer.Public())
		k.PCRValues = map[int]string{}
		for pcr, v := range info.PCRValues {
			k.PCRValues[pcr] = v
		}
		edit(&k)
		b, _ := k.marshal()
		d := t.TempDir()
		for _, f := range []string{entriesFile, checkpointsFile} {
			data, _ := os.ReadFile(filepath.Join(dir, f))
			mustWrite(t, filepath.Join(d, f), data)
		}
		mustWrite(t, filepath.Join(d, keyFile), b)
		rep := mustVerify(t, d, VerifyOptions{AKPublic: ak.Params.Public})
		if len(rep.Problems) == 0 || rep.Problems[0].Kind != ProblemKeyNotCertified {
			t.Errorf("key.json with another %s: problems %v, want key_not_certified", name, rep.Problems)
		}
	}

	// Once a bound PCR moves the TPM stops signing: entries are still
	// logged, durably, but stay unsigned.
	sw.Extend(t, 4, sha256.Sum256([]byte("rogue bootloader")))
	l, err = Open(dir, signer, manual)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 20, 1)
	if err := l.Checkpoint(context.Background()); !errors.Is(err, prover.ErrPCRPolicy) {
		t.Errorf("Checkpoint after PCR 4 moved: %v, want ErrPCRPolicy", err)
	}
	mustClose(t, l)
	rep = mustVerify(t, dir, VerifyOptions{AKPublic: ak.Params.Public})
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemUnsignedTail || rep.Problems[0].Index != 20 {
		t.Errorf("problems %v, want unsigned_tail at 20", rep.Problems)
	}
}
