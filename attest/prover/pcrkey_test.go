package prover_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// bootPCRs is the selection the checkpoint key binds in these tests.
var bootPCRs = []int{7, 0, 1, 2, 3, 4, 5, 6} // deliberately unsorted

// noSessions fails the test if any authorization session is left loaded in
// the TPM when it ends (swtpmtest checks transient objects only).
func noSessions(t *testing.T, sw *swtpmtest.TPM) {
	t.Helper()
	t.Cleanup(func() {
		rsp, err := tpm2.GetCapability{
			Capability:    tpm2.TPMCapHandles,
			Property:      0x02000000, // TPM_HT_LOADED_SESSION
			PropertyCount: 64,
		}.Execute(sw.Transport())
		if err != nil {
			t.Errorf("count loaded sessions: %v", err)
			return
		}
		h, err := rsp.CapabilityData.Data.Handles()
		if err != nil {
			t.Errorf("count loaded sessions: %v", err)
		} else if n := len(h.Handle); n != 0 {
			t.Errorf("%d session(s) left loaded in the TPM", n)
		}
	})
}

// pcrKeyFixture is an honestly booted swtpm with an AK and a checkpoint key
// bound to bootPCRs.
type pcrKeyFixture struct {
	sw     *swtpmtest.TPM
	tpm    *prover.TPM
	log    *tcglog.Log
	ak     *prover.AK
	nonce  []byte
	key    *prover.PCRKey
	values map[int][]byte
}

func newPCRKeyFixture(t *testing.T) *pcrKeyFixture {
	t.Helper()
	sw, tpm, log := booted(t)
	noSessions(t, sw)
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	f := &pcrKeyFixture{sw: sw, tpm: tpm, log: log, ak: ak, nonce: make([]byte, 32)}
	rand.Read(f.nonce)
	if f.key, err = tpm.NewPCRKey(ak.Blob, bootPCRs, f.nonce); err != nil {
		t.Fatalf("NewPCRKey: %v", err)
	}
	if f.values, err = tpm.PCRValues(bootPCRs); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *pcrKeyFixture) check(t *testing.T) *ecdsa.PublicKey {
	t.Helper()
	pub, err := attest.CheckPCRKey(f.ak.Params.Public, f.key.Certification, f.values, f.key.Sel, f.nonce)
	if err != nil {
		t.Fatalf("CheckPCRKey: %v", err)
	}
	return pub
}

func (f *pcrKeyFixture) signer(t *testing.T) *prover.PCRSigner {
	t.Helper()
	return loadSigner(t, f.tpm, f.key.Blob)
}

// loadSigner loads a PCR key, closing it when the test ends (before the
// swtpm harness counts loaded objects).
func loadSigner(tb testing.TB, tpm *prover.TPM, blob []byte) *prover.PCRSigner {
	tb.Helper()
	s, err := tpm.LoadPCRSigner(blob)
	if err != nil {
		tb.Fatalf("LoadPCRSigner: %v", err)
	}
	tb.Cleanup(func() {
		if err := s.Close(); err != nil {
			tb.Errorf("close PCR signer: %v", err)
		}
	})
	return s
}

// signs signs a fresh digest and reports whether the TPM signed it; a
// signature that does not verify against pub fails the test.
func signs(t *testing.T, s crypto.Signer, pub *ecdsa.PublicKey) error {
	t.Helper()
	msg := make([]byte, 16)
	rand.Read(msg)
	digest := sha256.Sum256(msg)
	sig, err := s.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return err
	}
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatal("the TPM's signature does not verify against the certified key")
	}
	other := sha256.Sum256(append(msg, 0))
	if ecdsa.VerifyASN1(pub, other[:], sig) {
		t.Fatal("the signature verifies over another digest")
	}
	return nil
}

func TestPCRKeySignsWhilePCRsHold(t *testing.T) {
	f := newPCRKeyFixture(t)
	if want := []int{0, 1, 2, 3, 4, 5, 6, 7}; !slices.Equal(f.key.Sel, want) {
		t.Fatalf("Sel = %v, want %v", f.key.Sel, want)
	}
	if len(f.key.Certification.CreateData) != 0 {
		t.Fatal("CreateData is set")
	}
	pub := f.check(t)
	s := f.signer(t)
	if p, ok := s.Public().(*ecdsa.PublicKey); !ok || !p.Equal(pub) {
		t.Fatal("the signer's public key is not the certified key")
	}
	if err := signs(t, s, pub); err != nil {
		t.Fatalf("Sign: %v", err)
	}

	// A PCR outside the selection (here 10, where IMA measures) may move.
	f.sw.Extend(t, 10, sha256.Sum256([]byte("runtime event")))
	if err := signs(t, s, pub); err != nil {
		t.Fatalf("Sign after extending an unbound PCR: %v", err)
	}

	// A bound PCR moves: the TPM refuses, for good.
	f.sw.Extend(t, 4, sha256.Sum256([]byte("rogue bootloader")))
	for range 2 {
		if err := signs(t, s, pub); !errors.Is(err, prover.ErrPCRPolicy) {
			t.Fatalf("Sign after extending PCR 4: %v, want ErrPCRPolicy", err)
		}
	}
	// A fresh load changes nothing.
	s2 := f.signer(t)
	if err := signs(t, s2, pub); !errors.Is(err, prover.ErrPCRPolicy) {
		t.Fatalf("Sign with a reloaded key: %v, want ErrPCRPolicy", err)
	}
}

func TestPCRSignerRejectsBadInput(t *testing.T) {
	f := newPCRKeyFixture(t)
	s := f.signer(t)
	d := sha256.Sum256([]byte("x"))
	if _, err := s.Sign(nil, d[:31], crypto.SHA256); err == nil {
		t.Error("signed a 31-byte digest")
	}
	if _, err := s.Sign(nil, make([]byte, 48), crypto.SHA384); err == nil {
		t.Error("signed a SHA-384 digest")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := s.Sign(nil, d[:], crypto.SHA256); err == nil {
		t.Error("a closed signer signed")
	}
}

func TestPCRKeyAfterReboot(t *testing.T) {
	t.Run("boot measured again", func(t *testing.T) {
		f := newPCRKeyFixture(t)
		pub := f.check(t)
		f.sw.Extend(t, 7, sha256.Sum256([]byte("secure boot off")))
		s := f.signer(t)
		if err := signs(t, s, pub); !errors.Is(err, prover.ErrPCRPolicy) {
			t.Fatalf("Sign after extending PCR 7: %v, want ErrPCRPolicy", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}

		f.sw.Reboot(t)
		s = f.signer(t)
		if err := signs(t, s, pub); !errors.Is(err, prover.ErrPCRPolicy) {
			t.Fatalf("Sign before the boot is measured: %v, want ErrPCRPolicy", err)
		}
		for _, ev := range f.log.Events() {
			f.sw.Extend(t, ev.PCR, ev.Digest)
		}
		if err := signs(t, s, pub); err != nil {
			t.Fatalf("Sign after the same boot: %v", err)
		}
	})
	t.Run("reset values", func(t *testing.T) {
		sw := swtpmtest.Start(t)
		noSessions(t, sw)
		tpm, err := prover.New(sw.Channel(), "")
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		ak, err := tpm.NewAK()
		if err != nil {
			t.Fatal(err)
		}
		key, err := tpm.NewPCRKey(ak.Blob, bootPCRs, nil)
		if err != nil {
			t.Fatal(err)
		}
		zeros := map[int][]byte{}
		for _, p := range bootPCRs {
			zeros[p] = make([]byte, 32)
		}
		pub, err := attest.CheckPCRKey(ak.Params.Public, key.Certification, zeros, bootPCRs, nil)
		if err != nil {
			t.Fatalf("CheckPCRKey against reset values: %v", err)
		}
		s := loadSigner(t, tpm, key.Blob)
		sw.Extend(t, 0, sha256.Sum256([]byte("firmware")))
		if err := signs(t, s, pub); !errors.Is(err, prover.ErrPCRPolicy) {
			t.Fatalf("Sign after extending PCR 0: %v, want ErrPCRPolicy", err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		sw.Reboot(t)
		s = loadSigner(t, tpm, key.Blob)
		if err := signs(t, s, pub); err != nil {
			t.Fatalf("Sign after reboot: %v", err)
		}
	})
}

// TestCheckPCRKeyRefusals covers the verifier's refusals on genuine keys
// and certifications that do not match what the verifier expects.
func TestCheckPCRKeyRefusals(t *testing.T) {
	f := newPCRKeyFixture(t)
	f.check(t)
	ak2, err := f.tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	byAK2, err := f.tpm.NewPCRKey(ak2.Blob, bootPCRs, f.nonce)
	if err != nil {
		t.Fatal(err)
	}
	// A key the AK certifies but that anyone may use with its auth value.
	plain, err := f.tpm.NewKey(f.ak.Blob, f.nonce)
	if err != nil {
		t.Fatal(err)
	}
	narrower, err := f.tpm.NewPCRKey(f.ak.Blob, []int{0, 7}, f.nonce)
	if err != nil {
		t.Fatal(err)
	}

	type input struct {
		akPublic []byte
		key      attest.KeyParams
		values   map[int][]byte
		sel      []int
		nonce    []byte
	}
	cases := []struct {
		name   string
		edit   func(in *input)
		reason attest.Reason
	}{
		{"other PCR 7 value", func(in *input) { in.values[7] = make([]byte, 32) }, attest.ReasonKeyPolicy},
		{"PCR value missing", func(in *input) { delete(in.values, 3) }, attest.ReasonKeyPolicy},
		{"PCR value short", func(in *input) { in.values[3] = in.values[3][:20] }, attest.ReasonKeyPolicy},
		{"fewer PCRs", func(in *input) { in.sel = []int{0, 1, 2, 3, 4, 5, 6} }, attest.ReasonKeyPolicy},
		{"more PCRs", func(in *input) { in.sel = append(in.sel, 8); in.values[8] = make([]byte, 32) }, attest.ReasonKeyPolicy},
		{"resettable PCR 23", func(in *input) { in.sel = append(in.sel, 23); in.values[23] = make([]byte, 32) }, attest.ReasonKeyPolicy},
		{"PCR selected twice", func(in *input) { in.sel = append(in.sel, 7) }, attest.ReasonKeyPolicy},
		{"key bound to fewer PCRs", func(in *input) { in.key = narrower.Certification }, attest.ReasonKeyPolicy},
		{"key without policy", func(in *input) { in.key = plain.Certification }, attest.ReasonKeyPolicy},
		{"other AK", func(in *input) { in.akPublic = ak2.Params.Public }, attest.ReasonKeyNotCertified},
		{"key certified by another AK", func(in *input) { in.key = byAK2.Certification }, attest.ReasonKeyNotCertified},
		{"other nonce", func(in *input) { in.nonce = []byte("another nonce") }, attest.ReasonKeyNotCertified},
		{"public area altered", func(in *input) { in.key.Public[len(in.key.Public)-1] ^= 1 }, attest.ReasonKeyNotCertified},
		{"public area truncated", func(in *input) { in.key.Public = in.key.Public[:20] }, attest.ReasonKeyNotCertified},
		{"attestation altered", func(in *input) { in.key.CreateAttestation[len(in.key.CreateAttestation)-1] ^= 1 }, attest.ReasonKeyNotCertified},
		{"signature altered", func(in *input) { in.key.CreateSignature[len(in.key.CreateSignature)-1] ^= 1 }, attest.ReasonKeyNotCertified},
		{"AK garbage", func(in *input) { in.akPublic = []byte("not an AK") }, attest.ReasonAKInvalid},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			in := input{
				akPublic: f.ak.Params.Public,
				key: attest.KeyParams{
					Public:            bytes.Clone(f.key.Certification.Public),
					CreateAttestation: bytes.Clone(f.key.Certification.CreateAttestation),
					CreateSignature:   bytes.Clone(f.key.Certification.CreateSignature),
				},
				values: map[int][]byte{},
				sel:    slices.Clone(f.key.Sel),
				nonce:  f.nonce,
			}
			for k, v := range f.values {
				in.values[k] = bytes.Clone(v)
			}
			tc.edit(&in)
			pub, err := attest.CheckPCRKey(in.akPublic, in.key, in.values, in.sel, in.nonce)
			if pub != nil || attest.ReasonOf(err) != tc.reason {
				t.Fatalf("CheckPCRKey = %v, %v; want reason %s", pub, err, tc.reason)
			}
		})
	}
}

func TestPCRKeyBlobIsBoundToItsTPM(t *testing.T) {
	f := newPCRKeyFixture(t)
	other := swtpmtest.StartWith(t, swtpmtest.NewTestAuthority(t))
	noSessions(t, other)
	tpm, err := prover.New(other.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	s, err := tpm.LoadPCRSigner(f.key.Blob)
	if err == nil {
		_ = s.Close()
		t.Fatal("another TPM loaded the key")
	}
	t.Logf("other TPM: %v", err)
	// Nor can the other TPM use this TPM's AK to certify its own key.
	if _, err := tpm.NewPCRKey(f.ak.Blob, bootPCRs, f.nonce); err == nil {
		t.Fatal("another TPM loaded the AK")
	}
}

func TestLoadPCRSignerRefusesMalformedBlobs(t *testing.T) {
	f := newPCRKeyFixture(t)
	b := f.key.Blob
	swapped := bytes.Clone(b)
	// Swap in the public area of a different key: the TPM's integrity check fails.
	other, err := f.tpm.NewPCRKey(f.ak.Blob, bootPCRs, nil)
	if err != nil {
		t.Fatal(err)
	}
	swapped = spliceField(t, swapped, 1, fieldOf(t, other.Blob, 1))
	for name, blob := range map[string][]byte{
		"empty":              nil,
		"other version":      append([]byte{9}, b[1:]...),
		"truncated":          b[:len(b)-1],
		"trailing byte":      append(bytes.Clone(b), 0),
		"other key's public": swapped,
		"not a blob":         []byte("{}"),
	} {
		if s, err := f.tpm.LoadPCRSigner(blob); err == nil {
			_ = s.Close()
			t.Errorf("%s: loaded", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// fieldOf returns field i of a PCR key blob (version byte, then
// uint16-length-prefixed fields).
func fieldOf(t *testing.T, b []byte, i int) []byte {
	t.Helper()
	b = b[1:]
	for ; ; i-- {
		n := int(binary.BigEndian.Uint16(b))
		if i == 0 {
			return b[2 : 2+n]
		}
		b = b[2+n:]
	}
}

func spliceField(t *testing.T, b []byte, i int, field []byte) []byte {
	t.Helper()
	out := []byte{b[0]}
	for j := 0; j < 3; j++ {
		f := fieldOf(t, b, j)
		if j == i {
			f = field
		}
		out = binary.BigEndian.AppendUint16(out, uint16(len(f)))
		out = append(out, f...)
	}
	return out
}

func TestNewPCRKeyRefusesSelections(t *testing.T) {
	sw, tpm, _ := booted(t)
	noSessions(t, sw)
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	for _, sel := range [][]int{nil, {16}, {0, 23}, {24}, {-1}, {0, 0}} {
		if _, err := tpm.NewPCRKey(ak.Blob, sel, nil); err == nil {
			t.Errorf("NewPCRKey(%v) succeeded", sel)
		}
	}
	if _, err := tpm.NewPCRKey([]byte("not an AK"), bootPCRs, nil); err == nil {
		t.Error("NewPCRKey with a garbage AK blob succeeded")
	}
}

// go-attestation creates the storage root key on first use; NewPCRKey
// creates it the same way when it is missing, so blobs wrapped by the old
// one (here the AK) still load.
func TestNewPCRKeyRecreatesTheSameSRK(t *testing.T) {
	sw, tpm, _ := booted(t)
	noSessions(t, sw)
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	const srk = tpm2.TPMHandle(prover.DefaultSRKHandle)
	before, err := tpm2.ReadPublic{ObjectHandle: srk}.Execute(sw.Transport())
	if err != nil {
		t.Fatalf("no SRK at writ's handle: %v", err)
	}
	if _, err := (tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: srk, Name: before.Name},
		PersistentHandle: srk,
	}).Execute(sw.Transport()); err != nil {
		t.Fatalf("evict SRK: %v", err)
	}
	key, err := tpm.NewPCRKey(ak.Blob, bootPCRs, nil)
	if err != nil {
		t.Fatalf("NewPCRKey without an SRK: %v", err)
	}
	after, err := tpm2.ReadPublic{ObjectHandle: srk}.Execute(sw.Transport())
	if err != nil {
		t.Fatalf("no SRK after NewPCRKey: %v", err)
	}
	if !bytes.Equal(before.Name.Buffer, after.Name.Buffer) {
		t.Fatal("NewPCRKey made a different SRK from go-attestation's")
	}
	if _, err := tpm.Quote(ak.Blob, make([]byte, 32), bootPCRs); err != nil {
		t.Fatalf("go-attestation cannot use its AK after the SRK was re-created: %v", err)
	}
	if err := loadSigner(t, tpm, key.Blob).Close(); err != nil {
		t.Fatal(err)
	}
}

// extendBeforeSign is a TPM channel that extends an unbound PCR just before
// the next n TPM2_Sign commands, as a concurrent measurement would.
type extendBeforeSign struct {
	io.ReadWriteCloser
	t  *testing.T
	sw *swtpmtest.TPM
	n  int
}

func (c *extendBeforeSign) Write(p []byte) (int, error) {
	const ccSign = 0x0000015d
	if c.n > 0 && len(p) >= 10 && binary.BigEndian.Uint32(p[6:10]) == ccSign {
		c.n--
		c.sw.Extend(c.t, 10, sha256.Sum256([]byte("concurrent event")))
	}
	return c.ReadWriteCloser.Write(p)
}

// A PCR extended between TPM2_PolicyPCR and TPM2_Sign, even one the key is
// not bound to, makes the TPM refuse with TPM_RC_PCR_CHANGED; Sign retries.
func TestPCRSignerRetriesWhenAPCRMoves(t *testing.T) {
	sw, _, log := booted(t)
	noSessions(t, sw)
	ch := &extendBeforeSign{ReadWriteCloser: sw.Channel(), t: t, sw: sw}
	tpm, err := prover.New(ch, "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm.NewPCRKey(ak.Blob, bootPCRs, nil)
	if err != nil {
		t.Fatal(err)
	}
	values := map[int][]byte{}
	for p, v := range log.PCRs() {
		values[p] = v[:]
	}
	pub, err := attest.CheckPCRKey(ak.Params.Public, key.Certification, values, bootPCRs, nil)
	if err != nil {
		t.Fatal(err)
	}
	s := loadSigner(t, tpm, key.Blob)
	ch.n = 2
	if err := signs(t, s, pub); err != nil {
		t.Fatalf("Sign with two interleaved extends: %v", err)
	}
	if ch.n != 0 {
		t.Fatal("the channel did not see the signatures")
	}
	ch.n = 100
	err = signs(t, s, pub)
	if !errors.Is(err, tpm2.TPMRCPCRChanged) || errors.Is(err, prover.ErrPCRPolicy) {
		t.Fatalf("Sign while PCRs keep moving: %v, want TPM_RC_PCR_CHANGED", err)
	}
	ch.n = 0
	if err := signs(t, s, pub); err != nil {
		t.Fatalf("Sign once PCRs settle: %v", err)
	}
}

func BenchmarkPCRSignerSign(b *testing.B) {
	sw := swtpmtest.Start(b)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		b.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		b.Fatal(err)
	}
	key, err := tpm.NewPCRKey(ak.Blob, bootPCRs, nil)
	if err != nil {
		b.Fatal(err)
	}
	s := loadSigner(b, tpm, key.Blob)
	digest := sha256.Sum256([]byte("checkpoint"))
	for b.Loop() {
		if _, err := s.Sign(nil, digest[:], crypto.SHA256); err != nil {
			b.Fatal(err)
		}
	}
}
