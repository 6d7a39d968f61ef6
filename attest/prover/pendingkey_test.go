package prover_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestPendingKeyIsNewKeys: a key created before the nonce and certified
// after it (CreateKey, CertifyKey) is NewKey's key: the same public area
// but for the point, a certification the broker's check accepts over that
// nonce and refuses over another, and a blob LoadSigner signs with.
func TestPendingKeyIsNewKeys(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	nonce := bytes.Repeat([]byte{7}, 32)
	want, err := tpm.NewKey(ak.Blob, nonce)
	if err != nil {
		t.Fatal(err)
	}
	pending, err := tpm.CreateKey()
	if err != nil {
		t.Fatal(err)
	}
	got, err := tpm.CertifyKey(ak.Blob, pending, nonce)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := publicAreaWithoutPoint(t, got.Certification.Public), publicAreaWithoutPoint(t, want.Certification.Public); !bytes.Equal(a, b) {
		t.Fatalf("public area %x, NewKey's %x", a, b)
	}
	pub, err := attest.CheckKeyCertification(ak.Params.Public, got.Certification, nonce)
	if err != nil {
		t.Fatalf("CheckKeyCertification: %v", err)
	}
	if _, err := attest.CheckKeyCertification(ak.Params.Public, got.Certification, bytes.Repeat([]byte{8}, 32)); err == nil {
		t.Fatal("the certification was accepted over another nonce")
	}
	s, err := tpm.LoadSigner(got.Blob)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	digest := sha256.Sum256([]byte("m"))
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatalf("sign with the certified key: %v", err)
	}
	if _, err := tpm.CertifyKey(ak.Blob, nil, nonce); err == nil {
		t.Fatal("CertifyKey without a key succeeded")
	}
}

func publicAreaWithoutPoint(t *testing.T, public []byte) []byte {
	t.Helper()
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](public)
	if err != nil {
		t.Fatal(err)
	}
	p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})
	return tpm2.Marshal(*p)
}
