package audit

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/mod/sumdb/note"
)

// The testdata notes are public type-0x02 checkpoints (Sigstore's Rekor, the
// Pixel 6 binary transparency log) as transparency-dev/formats tests them:
// our verifier reads their key strings and accepts their signatures, so our
// key IDs and signatures are the ones the signed-note spec assigns to 0x02.
func TestNoteVerifierInterop(t *testing.T) {
	for _, name := range []string{"rekor", "pixel"} {
		vkey, err := os.ReadFile(filepath.Join("testdata", name+".vkey"))
		if err != nil {
			t.Fatal(err)
		}
		msg, err := os.ReadFile(filepath.Join("testdata", name+".note"))
		if err != nil {
			t.Fatal(err)
		}
		v, err := NewNoteVerifier(string(vkey))
		if err != nil {
			t.Fatalf("%s: NewNoteVerifier: %v", name, err)
		}
		if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
			t.Errorf("%s: note.Open: %v", name, err)
		}
		lines := strings.SplitN(string(msg), "\n", 3)
		forged := []byte(lines[0] + "\n" + lines[1] + "0\n" + lines[2])
		if _, err := note.Open(forged, note.VerifierList(v)); err == nil {
			t.Errorf("%s: a modified note verified", name)
		}
	}
}

func TestNoteSignerVerifier(t *testing.T) {
	key := newKey(t)
	s, err := NewNoteSigner(testOrigin, key)
	if err != nil {
		t.Fatal(err)
	}
	spki := mustSPKI(t, key)
	h := sha256.Sum256(spki)
	if s.KeyHash() != binary.BigEndian.Uint32(h[:4]) {
		t.Errorf("key hash %08x is not SHA-256(SPKI)[:4]", s.KeyHash())
	}
	vkey, err := VerifierKey(testOrigin, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	v, err := NewNoteVerifier(vkey)
	if err != nil {
		t.Fatalf("NewNoteVerifier(%q): %v", vkey, err)
	}
	if v.KeyHash() != s.KeyHash() || v.Name() != testOrigin {
		t.Errorf("verifier %s/%08x, signer %s/%08x", v.Name(), v.KeyHash(), s.Name(), s.KeyHash())
	}
	// A high-S signer: the note signer normalizes to low S every time.
	hs := &highS{key}
	s2, _ := NewNoteSigner(testOrigin, hs)
	for range 20 {
		msg, err := note.Sign(&note.Note{Text: "hello\n"}, s2)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := note.Open(msg, note.VerifierList(v)); err != nil {
			t.Fatalf("note.Open: %v", err)
		}
	}
	// And the verifier refuses high S.
	digest := sha256.Sum256([]byte("hello\n"))
	sig, _ := hs.Sign(rand.Reader, digest[:], crypto.SHA256)
	if v.Verify([]byte("hello\n"), sig) {
		t.Error("verifier accepted a high-S signature")
	}
	for _, bad := range []string{"x+00000000+AQ==", testOrigin + "+00000000+" + strings.SplitN(vkey, "+", 3)[2], "a b+1+2"} {
		if _, err := NewNoteVerifier(bad); err == nil {
			t.Errorf("NewNoteVerifier(%q) succeeded", bad)
		}
	}
	if _, err := NewNoteSigner("has space", key); err == nil {
		t.Error("NewNoteSigner accepted a name with a space")
	}
}

// highS signs with s > n/2.
type highS struct{ *ecdsa.PrivateKey }

func (h *highS) Sign(r io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	der, err := h.PrivateKey.Sign(r, digest, opts)
	if err != nil {
		return nil, err
	}
	var sig struct{ R, S *big.Int }
	if _, err := asn1.Unmarshal(der, &sig); err != nil {
		return nil, err
	}
	if sig.S.Cmp(p256HalfOrder) <= 0 {
		sig.S.Sub(elliptic.P256().Params().N, sig.S)
	}
	return asn1.Marshal(sig)
}
