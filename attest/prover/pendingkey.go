package prover

import (
	"errors"
	"fmt"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// PendingKey is a signing key created in the TPM and not yet certified.
// Creating a key is a key generation, the slow part of NewKey, and needs no
// nonce: the agent creates it while it waits for the broker's challenge and
// has the AK certify it once the nonce is there (docs/adr/0050). The
// certification is the same statement NewKey's is, whenever the key was
// made: the AK signs the key's name, which binds its public area and
// attributes, over the nonce.
type PendingKey struct {
	public, private []byte
}

// CreateKey creates, under the storage root key, the key NewKey would
// (go-attestation's ECC P-256 ECDSA-SHA256 key: fixedTPM, fixedParent,
// sensitiveDataOrigin, userWithAuth, sign), without loading it.
func (t *TPM) CreateKey() (*PendingKey, error) {
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	created, err := tpm2.Create{ParentHandle: srk, InPublic: tpm2.New2B(signingKeyTemplate())}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: create key: %w", err)
	}
	return &PendingKey{public: created.OutPublic.Bytes(), private: created.OutPrivate.Buffer}, nil
}

// CertifyKey has the AK (akBlob, from NewAK) certify k over qualifying
// (the broker's nonce) and returns the key as NewKey does: its blob loads
// with LoadSigner.
func (t *TPM) CertifyKey(akBlob []byte, k *PendingKey, qualifying []byte) (*Key, error) {
	if k == nil {
		return nil, errors.New("prover: no key to certify")
	}
	if IsTPMToolsAK(akBlob) {
		return nil, errors.New("prover: the go-tpm-tools AK certifies through NewKey")
	}
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	params, err := certifyCreated(tp, srk, k.public, k.private, "key", "the AK",
		func() (tpm2.NamedHandle, error) { return loadAK(tp, srk, akBlob) }, qualifying)
	if err != nil {
		return nil, err
	}
	return certifiedKey(params, k.private)
}

// signingKeyTemplate is go-attestation's template for an ECC P-256 key
// (v0.6.4 ecdsaKeyTemplate with KeyConfig{ECDSA, 256}): what NewKey makes.
func signingKeyTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{}),
	}
}
