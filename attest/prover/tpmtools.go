package prover

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-tpm-tools/client"
	legacy "github.com/google/go-tpm/legacy/tpm2"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"google.golang.org/protobuf/proto"

	"github.com/writ-dev/writ/attest"
)

// Evidence in go-tpm-tools' format (docs/adr/0036): the attestation key is
// go-tpm-tools' own, the ECC primary key client.AKTemplateECC makes in the
// endorsement hierarchy (the shape of the GCE AK), and the evidence is what
// its client.Attest makes on this TPM connection. A primary key is derived
// from the hierarchy's seed and the template, so it has no wrapped blob: the
// AK "blob" of such a key is only a marker, and the key is made again each
// time it is used. Keys the AK certifies (the SVID key, the audit key) are
// still writ's own, under writ's storage root key: go-tpm-tools cannot
// create keys under a non-EK parent.

// tpmToolsAKBlob is the AK blob of the go-tpm-tools AK.
var tpmToolsAKBlob = []byte(`{"go-tpm-tools":"AKTemplateECC","hierarchy":"endorsement"}`)

// IsTPMToolsAK reports whether an AK blob names the go-tpm-tools AK.
func IsTPMToolsAK(akBlob []byte) bool { return bytes.Equal(akBlob, tpmToolsAKBlob) }

var errNotTPMToolsAK = errors.New("prover: evidence in go-tpm-tools' format needs the go-tpm-tools AK (NewTPMToolsAK)")

// NewTPMToolsAK makes go-tpm-tools' ECC attestation key and returns it as
// an AK: its public area and the marker blob; it has no creation
// statement, so it enrolls by its public area alone, bound to the EK by
// credential activation (Activate works as for any AK).
func (t *TPM) NewTPMToolsAK() (*AK, error) {
	k, err := client.NewKey(t.ch, legacy.HandleEndorsement, client.AKTemplateECC())
	if err != nil {
		return nil, fmt.Errorf("prover: create go-tpm-tools AK: %w", err)
	}
	defer k.Close()
	pub, err := k.PublicArea().Encode()
	if err != nil {
		return nil, fmt.Errorf("prover: go-tpm-tools AK public area: %w", err)
	}
	return &AK{Blob: bytes.Clone(tpmToolsAKBlob), Params: attest.KeyParams{Public: pub}}, nil
}

// AttestTPMTools has go-tpm-tools' client.Attest quote every PCR of every
// allocated bank over nonce with the go-tpm-tools AK, and returns the
// serialized attest.Attestation: the quotes, the PCR values, this TPM's
// boot event log (none when it has none: never the host's, which may be
// another TPM's) and runtimeLog (writ's runtime CEL) as its
// canonical_event_log. No TEE attestation is collected.
func (t *TPM) AttestTPMTools(akBlob, nonce, runtimeLog []byte) ([]byte, error) {
	if !IsTPMToolsAK(akBlob) {
		return nil, errNotTPMToolsAK
	}
	eventLog, err := t.eventLog()
	if err != nil {
		return nil, err
	}
	k, err := client.NewKey(t.ch, legacy.HandleEndorsement, client.AKTemplateECC())
	if err != nil {
		return nil, fmt.Errorf("prover: load go-tpm-tools AK: %w", err)
	}
	defer k.Close()
	att, err := k.Attest(client.AttestOpts{Nonce: nonce, TCGEventLog: eventLog, SkipTeeAttestation: true})
	if err != nil {
		return nil, fmt.Errorf("prover: go-tpm-tools attest: %w", err)
	}
	att.CanonicalEventLog = runtimeLog
	raw, err := proto.Marshal(att)
	if err != nil {
		return nil, fmt.Errorf("prover: encode go-tpm-tools attestation: %w", err)
	}
	return raw, nil
}

// eventLog returns the boot event log, empty but not nil when there is
// none (client.Attest reads the host's log for a nil one).
func (t *TPM) eventLog() ([]byte, error) {
	log, err := t.at.MeasurementLog()
	if errors.Is(err, errNoEventLog) {
		return []byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("prover: read event log: %w", err)
	}
	if log == nil {
		log = []byte{}
	}
	return log, nil
}

// loadTPMToolsAK makes the go-tpm-tools AK again, with go-tpm's tpm2 API,
// from the same template: a primary key of the same seed and template is
// the same key. Flush its handle after use.
func loadTPMToolsAK(tp transport.TPM) (tpm2.NamedHandle, error) {
	tmpl, err := client.AKTemplateECC().Encode()
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("prover: go-tpm-tools AK template: %w", err)
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](tmpl)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("prover: go-tpm-tools AK template: %w", err)
	}
	rsp, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(*pub),
	}.Execute(tp)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("prover: load go-tpm-tools AK: %w", err)
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

// newKeyCertifiedByTPMToolsAK is NewKey for the go-tpm-tools AK: an ECC
// P-256 signing key under writ's storage root key that never leaves the
// TPM, certified (TPM2_Certify) by the go-tpm-tools AK over qualifying. Its
// blob is go-attestation's, so LoadSigner loads it like any other.
func (t *TPM) newKeyCertifiedByTPMToolsAK(qualifying []byte) (*Key, error) {
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	tmpl := pcrKeyTemplate(nil)
	tmpl.ObjectAttributes.UserWithAuth = true
	created, err := tpm2.Create{ParentHandle: srk, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: create key: %w", err)
	}
	params, err := certifyCreated(tp, srk, created.OutPublic.Bytes(), created.OutPrivate.Buffer, "key", "the go-tpm-tools AK",
		func() (tpm2.NamedHandle, error) { return loadTPMToolsAK(tp) }, qualifying)
	if err != nil {
		return nil, err
	}
	return certifiedKey(params, created.OutPrivate.Buffer)
}

// certifyCreated loads a key created under srk (its public and private
// parts), loads the certifying AK with loadSigner, has it certify the key
// over qualifying, and flushes both: the certification NewKey, CertifyKey
// and NewPCRKey return. what names the key and signer the AK in errors.
func certifyCreated(tp transport.TPM, srk tpm2.AuthHandle, public, private []byte,
	what, signer string, loadSigner func() (tpm2.NamedHandle, error), qualifying []byte) (attest.KeyParams, error) {
	key, err := load(tp, srk, public, private)
	if err != nil {
		return attest.KeyParams{}, fmt.Errorf("prover: load %s: %w", what, err)
	}
	defer flush(tp, key.Handle)
	ak, err := loadSigner()
	if err != nil {
		return attest.KeyParams{}, err
	}
	defer flush(tp, ak.Handle)
	cert, err := certify(tp, key, ak, qualifying)
	if err != nil {
		return attest.KeyParams{}, fmt.Errorf("prover: certify %s with %s: %w", what, signer, err)
	}
	return attest.KeyParams{
		Public:            public,
		CreateAttestation: cert.CertifyInfo.Bytes(),
		CreateSignature:   tpm2.Marshal(cert.Signature),
	}, nil
}

// certifiedKey is a certified signing key as NewKey returns it: its blob
// is go-attestation's, which LoadSigner loads.
func certifiedKey(params attest.KeyParams, private []byte) (*Key, error) {
	blob, err := json.Marshal(goAttestationKey{Encoding: 2, TPMVersion: 2, Public: params.Public, Blob: private})
	if err != nil {
		return nil, fmt.Errorf("prover: key blob: %w", err)
	}
	return &Key{Blob: blob, Certification: params}, nil
}

// certify has ak certify key (TPM2_Certify, ECDSA SHA-256) over qualifying.
// Certify needs the ADMIN role on the key; adminWithPolicy is clear on
// writ's keys, so their (empty) auth value gives it.
func certify(tp transport.TPM, key, ak tpm2.NamedHandle, qualifying []byte) (*tpm2.CertifyResponse, error) {
	return tpm2.Certify{
		ObjectHandle:   tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: tpm2.PasswordAuth(nil)},
		SignHandle:     tpm2.AuthHandle{Handle: ak.Handle, Name: ak.Name, Auth: tpm2.PasswordAuth(nil)},
		QualifyingData: tpm2.TPM2BData{Buffer: qualifying},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
		},
	}.Execute(tp)
}
