package attest_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestPolicyPCRDigestKnownAnswer computes one digest byte by byte, as the
// TPM specification (Part 3, TPM2_PolicyPCR) describes it.
func TestPolicyPCRDigestKnownAnswer(t *testing.T) {
	v0 := bytes.Repeat([]byte{0x11}, 32)
	v7 := bytes.Repeat([]byte{0x77}, 32)
	pcrDigest := sha256.Sum256(append(bytes.Clone(v0), v7...))
	var msg []byte
	msg = append(msg, make([]byte, 32)...)     // empty policyDigest
	msg = append(msg, 0x00, 0x00, 0x01, 0x7f)  // TPM_CC_PolicyPCR
	msg = append(msg, 0x00, 0x00, 0x00, 0x01)  // TPML_PCR_SELECTION.count
	msg = append(msg, 0x00, 0x0b)              // TPM_ALG_SHA256
	msg = append(msg, 0x03, 0b1000_0001, 0, 0) // sizeofSelect, PCRs 0 and 7
	msg = append(msg, pcrDigest[:]...)         // digest of the PCR values
	want := sha256.Sum256(msg)

	for _, sel := range [][]int{{0, 7}, {7, 0}} {
		got, err := attest.PolicyPCRDigest(map[int][]byte{0: v0, 7: v7, 8: make([]byte, 32)}, sel)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want[:]) {
			t.Fatalf("PolicyPCRDigest(%v) = %x, want %x", sel, got, want)
		}
	}

	// The same, pinned: PCR 0 at its reset value (from a swtpm trial session).
	const pcr0Reset = "093ceb41181d47808862d7946268ee6a17a10e3d1b79b32351bc56e4beaceff0"
	got, err := attest.PolicyPCRDigest(map[int][]byte{0: make([]byte, 32)}, []int{0})
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(got) != pcr0Reset {
		t.Fatalf("PolicyPCRDigest(PCR 0 reset) = %x, want %s", got, pcr0Reset)
	}
}

// TestPolicyPCRDigestMatchesTPM has swtpm compute PolicyPCR in trial
// sessions over PCRs with distinct values, and compares.
func TestPolicyPCRDigestMatchesTPM(t *testing.T) {
	sw := swtpmtest.Start(t)
	tp := sw.Transport()
	values := map[int][]byte{}
	for pcr := 0; pcr <= 22; pcr++ {
		// Locality 0 extends PCRs 0-16 and 23; 17-22 stay at their reset
		// value (all ones); 3 stays at its (all zeros).
		if pcr != 3 && pcr <= 16 {
			sw.Extend(t, pcr, sha256.Sum256([]byte{byte(pcr)}))
		}
		v := sw.PCR(t, pcr)
		values[pcr] = v[:]
	}
	for _, sel := range [][]int{{0}, {3}, {7}, {0, 1, 2, 3, 4, 5, 6, 7}, {22, 9, 0, 15}, {8, 16}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}} {
		got, err := attest.PolicyPCRDigest(values, sel)
		if err != nil {
			t.Fatalf("PolicyPCRDigest(%v): %v", sel, err)
		}
		if want := trialPolicyPCR(t, tp, sel); !bytes.Equal(got, want) {
			t.Errorf("PolicyPCRDigest(%v) = %x, the TPM computes %x", sel, got, want)
		}
	}
}

func trialPolicyPCR(t *testing.T, tp transport.TPM, sel []int) []byte {
	t.Helper()
	sess, closeSess, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := closeSess(); err != nil {
			t.Error(err)
		}
	}()
	u := make([]uint, len(sel))
	for i, p := range sel {
		u[i] = uint(p)
	}
	_, err = tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
		{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...)},
	}}}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	d, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	return d.PolicyDigest.Buffer
}

func TestPolicyPCRDigestRefuses(t *testing.T) {
	values := map[int][]byte{0: make([]byte, 32), 1: make([]byte, 32), 2: make([]byte, 20)}
	for name, sel := range map[string][]int{
		"empty selection": nil,
		"negative PCR":    {-1},
		"PCR 24":          {0, 24},
		"PCR twice":       {1, 0, 1},
		"value missing":   {0, 5},
		"value short":     {2},
	} {
		if d, err := attest.PolicyPCRDigest(values, sel); d != nil || attest.ReasonOf(err) != attest.ReasonKeyPolicy {
			t.Errorf("%s: PolicyPCRDigest = %x, %v; want %s", name, d, err, attest.ReasonKeyPolicy)
		}
	}
}

// pcrKeySample is a genuine checkpoint key from a swtpm.
type pcrKeySample struct {
	akPublic []byte
	key      attest.KeyParams
	values   map[int][]byte
	sel      []int
	nonce    []byte
	pub      *ecdsa.PublicKey
}

func newPCRKeySample(tb testing.TB) *pcrKeySample {
	tb.Helper()
	sw := swtpmtest.Start(tb)
	sw.Extend(tb, 7, sha256.Sum256([]byte("secure boot on")))
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		tb.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		tb.Fatal(err)
	}
	s := &pcrKeySample{akPublic: ak.Params.Public, sel: []int{0, 7}, nonce: []byte("checkpoint key nonce")}
	k, err := tpm.NewPCRKey(ak.Blob, s.sel, s.nonce)
	if err != nil {
		tb.Fatal(err)
	}
	s.key = k.Certification
	if s.values, err = tpm.PCRValues(s.sel); err != nil {
		tb.Fatal(err)
	}
	if s.pub, err = attest.CheckPCRKey(s.akPublic, s.key, s.values, s.sel, s.nonce); err != nil {
		tb.Fatalf("CheckPCRKey: %v", err)
	}
	return s
}

func TestCheckPCRKeyRefusesNonCanonicalPublicArea(t *testing.T) {
	s := newPCRKeySample(t)
	key := s.key
	key.Public = append(bytes.Clone(s.key.Public), 0)
	if _, err := attest.CheckPCRKey(s.akPublic, key, s.values, s.sel, s.nonce); attest.ReasonOf(err) != attest.ReasonKeyNotCertified {
		t.Fatalf("public area with a trailing byte: %v, want %s", err, attest.ReasonKeyNotCertified)
	}
}

// FuzzCheckPCRKey feeds altered public areas, certifications and signatures
// to the verifier. It must never panic, and it accepts nothing but the
// genuine key.
func FuzzCheckPCRKey(f *testing.F) {
	s := newPCRKeySample(f)
	f.Add(s.key.Public, s.key.CreateAttestation, s.key.CreateSignature)
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, public, attestation, sig []byte) {
		key := attest.KeyParams{Public: public, CreateAttestation: attestation, CreateSignature: sig}
		pub, err := attest.CheckPCRKey(s.akPublic, key, s.values, s.sel, s.nonce)
		if err != nil {
			if pub != nil {
				t.Fatal("a public key with an error")
			}
			if r := attest.ReasonOf(err); !slices.Contains([]attest.Reason{attest.ReasonKeyNotCertified, attest.ReasonKeyPolicy}, r) {
				t.Fatalf("refused for %s", r)
			}
			return
		}
		if !pub.Equal(s.pub) || !bytes.Equal(public, s.key.Public) || !bytes.Equal(attestation, s.key.CreateAttestation) {
			t.Fatal("an altered key or certification passed")
		}
	})
}
