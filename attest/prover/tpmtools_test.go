package prover_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// go-tpm-tools' AK is a primary key: made twice, it is the same key, so
// it needs no blob; and it is usable only through AttestTPMTools, writ's
// AK only through Quote.
func TestTPMToolsAK(t *testing.T) {
	_, tpm, _ := booted(t)
	ak, err := tpm.NewTPMToolsAK()
	if err != nil {
		t.Fatal(err)
	}
	again, err := tpm.NewTPMToolsAK()
	if err != nil || !bytes.Equal(ak.Params.Public, again.Params.Public) || !prover.IsTPMToolsAK(ak.Blob) {
		t.Fatalf("go-tpm-tools AK made twice differs (%v)", err)
	}
	if _, err := attest.CheckAKPublic(ak.Params.Public); err != nil {
		t.Fatal(err)
	}
	writAK, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	if prover.IsTPMToolsAK(writAK.Blob) {
		t.Fatal("writ's AK taken for go-tpm-tools'")
	}
	nonce := []byte("0123456789abcdef")
	if _, err := tpm.AttestTPMTools(writAK.Blob, nonce, nil); err == nil {
		t.Fatal("AttestTPMTools with writ's AK")
	}
	if _, err := tpm.Quote(ak.Blob, nonce, []int{0}); err == nil {
		t.Fatal("Quote with go-tpm-tools' AK")
	}
}

// A TPM without an event log attests with none: go-tpm-tools' client.Attest
// would otherwise read the host's log, which belongs to another TPM.
func TestAttestTPMToolsWithoutEventLog(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewTPMToolsAK()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := tpm.AttestTPMTools(ak.Blob, []byte("0123456789abcdef"), []byte("runtime log"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := attest.ParseTPMTools(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(e.EventLog()) != 0 || string(e.CanonicalEventLog()) != "runtime log" || !bytes.Equal(e.AKPublic(), ak.Params.Public) {
		t.Fatalf("attestation: event log %d bytes, canonical %q", len(e.EventLog()), e.CanonicalEventLog())
	}
}

// Why an AK may enroll by its public area alone (attest.CheckAKPublic,
// docs/adr/0036): activation proves that the TPM holding the EK has loaded
// an object of the AK's name, and a TPM refuses to load a private key from
// outside with fixedTPM set. So a software key cannot pose as an AK with
// the attributes CheckAKPublic requires.
func TestTPMRefusesExternalFixedTPMKey(t *testing.T) {
	sw := swtpmtest.Start(t)
	tp := sw.Transport()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	d, err := key.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	load := func(fixed bool) error {
		pub := tpm2.TPMTPublic{
			Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
			// fixedTPM alone: the attribute that says the TPM made the key.
			ObjectAttributes: tpm2.TPMAObject{FixedTPM: fixed, FixedParent: fixed, UserWithAuth: true, SignEncrypt: true},
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
				CurveID: tpm2.TPMECCNistP256,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: key.X.FillBytes(make([]byte, 32))},
				Y: tpm2.TPM2BECCParameter{Buffer: key.Y.FillBytes(make([]byte, 32))},
			}),
		}
		priv := tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC,
			Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: d})}
		rsp, err := tpm2.LoadExternal{InPrivate: tpm2.New2B(priv), InPublic: tpm2.New2B(pub), Hierarchy: tpm2.TPMRHNull}.Execute(tp)
		if err == nil {
			_, _ = tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(tp)
		}
		return err
	}
	if err := load(false); err != nil {
		t.Fatalf("the TPM refuses an ordinary external key: %v", err)
	}
	err = load(true)
	if err == nil {
		t.Fatal("the TPM loaded a software key marked fixedTPM")
	}
	if !errors.Is(err, tpm2.TPMRCAttributes) {
		t.Fatalf("refused for %v, want TPM_RC_ATTRIBUTES", err)
	}
}
