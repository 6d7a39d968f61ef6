package attest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"io"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/legacy/tpm2"
)

// KeyParams are the public parts of a TPM key and the TPM's statement about
// it: TPMT_PUBLIC, TPMS_CREATION_DATA, TPMS_ATTEST and TPMT_SIGNATURE
// encodings. For an AK the statement is its creation ticket; for a key the
// AK certifies, it is the AK's certification.
type KeyParams struct {
	Public            []byte `json:"public"`
	CreateData        []byte `json:"create_data"`
	CreateAttestation []byte `json:"create_attestation"`
	CreateSignature   []byte `json:"create_signature"`
}

// Credential is a credential-activation challenge for the TPM: only the TPM
// holding both the EK and the AK can recover the secret.
type Credential struct {
	Credential []byte `json:"credential"`
	Secret     []byte `json:"secret"`
}

// CheckAK checks that the AK is a restricted, TPM-bound ECC P-256 signing key
// that the TPM itself created, and returns its public key.
func CheckAK(ak KeyParams) (*ecdsa.PublicKey, error) {
	params := goattest.ActivationParameters{AK: goattest.AttestationParameters{
		Public:            ak.Public,
		CreateData:        ak.CreateData,
		CreateAttestation: ak.CreateAttestation,
		CreateSignature:   ak.CreateSignature,
	}}
	if err := params.CheckAKParameters(); err != nil {
		return nil, fail(ReasonAKInvalid, NoPCR, err, "attestation key: %v", err)
	}
	return akPublicKey(ak.Public)
}

func akPublicKey(public []byte) (*ecdsa.PublicKey, error) {
	pub, err := tpm2.DecodePublic(public)
	if err != nil {
		return nil, fail(ReasonAKInvalid, NoPCR, err, "attestation key public area: %v", err)
	}
	if pub.Type != tpm2.AlgECC || pub.ECCParameters == nil || pub.ECCParameters.CurveID != tpm2.CurveNISTP256 {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key is not ECC P-256")
	}
	if pub.ECCParameters.Sign == nil || pub.ECCParameters.Sign.Alg != tpm2.AlgECDSA || pub.ECCParameters.Sign.Hash != tpm2.AlgSHA256 {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key does not sign with ECDSA SHA-256")
	}
	key, err := pub.Key()
	if err != nil {
		return nil, fail(ReasonAKInvalid, NoPCR, err, "attestation key: %v", err)
	}
	ec, ok := key.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key is not ECC P-256")
	}
	return ec, nil
}

// NewChallenge makes a credential-activation challenge binding ak to ek. The
// returned secret is what a genuine TPM will answer with. rnd may be nil.
func NewChallenge(ek crypto.PublicKey, ak KeyParams, rnd io.Reader) (secret []byte, cred Credential, err error) {
	if _, err := CheckAK(ak); err != nil {
		return nil, Credential{}, err
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	params := goattest.ActivationParameters{EK: ek, Rand: rnd, AK: goattest.AttestationParameters{
		Public:            ak.Public,
		CreateData:        ak.CreateData,
		CreateAttestation: ak.CreateAttestation,
		CreateSignature:   ak.CreateSignature,
	}}
	secret, ec, err := params.Generate()
	if err != nil {
		return nil, Credential{}, fail(ReasonAKInvalid, NoPCR, err, "make activation challenge: %v", err)
	}
	return secret, Credential{Credential: ec.Credential, Secret: ec.Secret}, nil
}

// CheckActivation compares the TPM's answer with the expected secret.
func CheckActivation(expected, answer []byte) error {
	if len(expected) == 0 || subtle.ConstantTimeCompare(expected, answer) != 1 {
		return fail(ReasonActivationFailed, NoPCR, nil, "the TPM's answer to the activation challenge is wrong")
	}
	return nil
}

// CheckKeyCertification checks that key was created inside the TPM as a
// non-exportable signing key and certified by the AK, over qualifying data
// equal to extra (the broker's nonce), and returns its public key.
func CheckKeyCertification(akPublic []byte, key KeyParams, extra []byte) (crypto.PublicKey, error) {
	akKey, err := akPublicKey(akPublic)
	if err != nil {
		return nil, err
	}
	cp := goattest.CertificationParameters{
		Public:            key.Public,
		CreateData:        key.CreateData,
		CreateAttestation: key.CreateAttestation,
		CreateSignature:   key.CreateSignature,
	}
	if err := cp.Verify(goattest.VerifyOpts{Public: akKey, Hash: crypto.SHA256}); err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key certification: %v", err)
	}
	att, err := tpm2.DecodeAttestationData(key.CreateAttestation)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key certification: %v", err)
	}
	if subtle.ConstantTimeCompare(att.ExtraData, extra) != 1 {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key certification is not over this attestation's nonce")
	}
	pub, err := tpm2.DecodePublic(key.Public)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key public area: %v", err)
	}
	const resident = tpm2.FlagFixedTPM | tpm2.FlagFixedParent | tpm2.FlagSensitiveDataOrigin
	if pub.Attributes&resident != resident || pub.Attributes&tpm2.FlagSign == 0 {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key is exportable or cannot sign (attributes 0x%x)", uint32(pub.Attributes))
	}
	if pub.Type != tpm2.AlgECC || pub.ECCParameters == nil || pub.ECCParameters.CurveID != tpm2.CurveNISTP256 {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key is not ECC P-256")
	}
	k, err := pub.Key()
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key: %v", err)
	}
	return k, nil
}
