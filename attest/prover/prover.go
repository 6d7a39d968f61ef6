package prover

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/attest"
)

// AK is an attestation key: its TPM-wrapped blob (useless without this TPM)
// and its public parameters.
type AK struct {
	Blob   []byte
	Params attest.KeyParams
}

// NewAK creates an ECC P-256 attestation key under the storage root key.
func (t *TPM) NewAK() (*AK, error) {
	ak, err := t.at.NewAK(&goattest.AKConfig{Algorithm: goattest.ECDSA, Parent: t.parent()})
	if err != nil {
		return nil, fmt.Errorf("prover: create AK: %w", err)
	}
	defer func() { _ = ak.Close(t.at) }()
	blob, err := ak.Marshal()
	if err != nil {
		return nil, fmt.Errorf("prover: marshal AK: %w", err)
	}
	p := ak.AttestationParameters()
	return &AK{Blob: blob, Params: attest.KeyParams{
		Public: p.Public, CreateData: p.CreateData, CreateAttestation: p.CreateAttestation, CreateSignature: p.CreateSignature,
	}}, nil
}

// withAK loads the AK for the length of fn.
func (t *TPM) withAK(akBlob []byte, fn func(*goattest.AK) error) error {
	ak, err := t.at.LoadAKWithParent(akBlob, *t.parent())
	if err != nil {
		return fmt.Errorf("prover: load AK: %w", err)
	}
	err = fn(ak)
	if cerr := ak.Close(t.at); err == nil && cerr != nil {
		err = fmt.Errorf("prover: unload AK: %w", cerr)
	}
	return err
}

// Quote quotes the selected sha256-bank PCRs with the AK over nonce and
// gathers the evidence: the quote, the PCR values and the boot event log.
func (t *TPM) Quote(akBlob, nonce []byte, selection []int) (attest.Evidence, error) {
	var ev attest.Evidence
	if IsTPMToolsAK(akBlob) {
		return ev, errors.New("prover: the go-tpm-tools AK quotes through AttestTPMTools")
	}
	err := t.withAK(akBlob, func(ak *goattest.AK) error {
		q, err := ak.QuotePCRs(t.at, nonce, goattest.HashSHA256, selection)
		if err != nil {
			return fmt.Errorf("prover: quote: %w", err)
		}
		ev.Quote, ev.Signature = q.Quote, q.Signature
		return nil
	})
	if err != nil {
		return ev, err
	}
	if ev.PCRs, err = t.PCRValues(selection); err != nil {
		return ev, err
	}
	if log, err := t.at.MeasurementLog(); err == nil {
		ev.EventLog = log
	} else if !errors.Is(err, errNoEventLog) {
		return ev, fmt.Errorf("prover: read event log: %w", err)
	}
	return ev, nil
}

// Key is a signing key created inside the TPM: its TPM-wrapped blob and the
// AK's certification of it.
type Key struct {
	Blob          []byte
	Certification attest.KeyParams
}

// NewKey creates an ECC P-256 signing key that never leaves the TPM, certified
// by the AK over qualifying (the broker's nonce).
func (t *TPM) NewKey(akBlob, qualifying []byte) (*Key, error) {
	if IsTPMToolsAK(akBlob) {
		return t.newKeyCertifiedByTPMToolsAK(qualifying)
	}
	var out Key
	err := t.withAK(akBlob, func(ak *goattest.AK) error {
		k, err := t.at.NewKey(ak, &goattest.KeyConfig{Algorithm: goattest.ECDSA, Size: 256, QualifyingData: qualifying, Parent: t.parent()})
		if err != nil {
			return fmt.Errorf("prover: create key: %w", err)
		}
		defer k.Close()
		if out.Blob, err = k.Marshal(); err != nil {
			return fmt.Errorf("prover: marshal key: %w", err)
		}
		cp := k.CertificationParameters()
		out.Certification = attest.KeyParams{
			Public: cp.Public, CreateData: cp.CreateData, CreateAttestation: cp.CreateAttestation, CreateSignature: cp.CreateSignature,
		}
		return nil
	})
	return &out, err
}

// Signer is a TPM-resident key loaded for signing. Close unloads it.
type Signer struct{ *KeySigner }

// LoadSigner loads a key made by NewKey from its blob. The blob is wrapped
// by this TPM's storage root key: no other TPM can load it. It is loaded
// here, not by go-attestation, whose LoadKey takes no parent and would use
// the key at 0x81000001.
func (t *TPM) LoadSigner(blob []byte) (*Signer, error) {
	var k goAttestationKey
	if err := json.Unmarshal(blob, &k); err != nil {
		return nil, fmt.Errorf("prover: key blob: %w", err)
	}
	if k.TPMVersion != 2 || k.Encoding != 2 {
		return nil, fmt.Errorf("prover: key blob: unsupported encoding %d (TPM version %d)", k.Encoding, k.TPMVersion)
	}
	key, err := t.loadKey(k.Public, k.Blob)
	if err != nil {
		return nil, err
	}
	return &Signer{&KeySigner{key}}, nil
}

// PCRValues reads the sha256-bank values of the selected PCRs.
func (t *TPM) PCRValues(selection []int) (map[int][]byte, error) {
	pcrs, err := t.at.PCRs(goattest.HashSHA256)
	if err != nil {
		return nil, fmt.Errorf("prover: read PCRs: %w", err)
	}
	out := make(map[int][]byte, len(selection))
	for _, p := range pcrs {
		if slices.Contains(selection, p.Index) {
			out[p.Index] = p.Digest
		}
	}
	for _, sel := range selection {
		if _, ok := out[sel]; !ok {
			return nil, fmt.Errorf("prover: the TPM has no sha256 PCR %d", sel)
		}
	}
	return out, nil
}

// Extend measures digest (sha256) into a PCR: PCR = sha256(PCR || digest).
func (t *TPM) Extend(pcr int, digest []byte) error {
	if pcr < 0 || pcr > 23 || len(digest) != 32 {
		return fmt.Errorf("prover: extend: want a PCR 0-23 and a 32-byte sha256 digest")
	}
	_, err := tpm2.PCRExtend{
		PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
		Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}},
	}.Execute(transport.FromReadWriter(t.ch))
	if err != nil {
		return fmt.Errorf("prover: extend PCR %d: %w", pcr, err)
	}
	return nil
}
