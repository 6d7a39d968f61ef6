package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"io"
	"sync"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
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
// holding both the EK and the AK can recover the secret. Both fields are the
// contents of their TPM2B (TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET), without
// the size.
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
	if key := akKeys.get(public); key != nil {
		return key, nil
	}
	key, err := parseAKPublic(public)
	if err != nil {
		return nil, err
	}
	akKeys.put(public, key)
	return key, nil
}

// akKeys holds the AK public keys akPublicKey parsed, keyed by the exact
// bytes of their public area: go-tpm's reflective TPMT_PUBLIC decoder cost
// about 0.1 ms of CPU per call, twice per attestation (quote and SVID key
// certification; issue 11). The key is a function of those bytes alone, so
// nothing an attacker sends can make an entry stale; only keys that passed
// every check are held, at most akKeyCacheMax (then the cache starts over).
// The keys are shared: callers never change them.
var akKeys = akKeyCache{m: map[string]*ecdsa.PublicKey{}}

const akKeyCacheMax = 16384

type akKeyCache struct {
	mu sync.RWMutex
	m  map[string]*ecdsa.PublicKey
}

func (c *akKeyCache) get(public []byte) *ecdsa.PublicKey {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.m[string(public)]
}

func (c *akKeyCache) put(public []byte, key *ecdsa.PublicKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= akKeyCacheMax {
		clear(c.m)
	}
	c.m[string(public)] = key
}

func parseAKPublic(public []byte) (*ecdsa.PublicKey, error) {
	pub, err := decodePublic(public)
	if err != nil {
		return nil, fail(ReasonAKInvalid, NoPCR, err, "attestation key public area: %v", err)
	}
	key, parms, err := eccP256(pub)
	if err != nil {
		return nil, fail(ReasonAKInvalid, NoPCR, err, "attestation key is not ECC P-256: %v", err)
	}
	if !signsECDSASHA256(parms) {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key does not sign with ECDSA SHA-256")
	}
	return key, nil
}

// activationSecretLen is the size of the secret a challenge protects.
const activationSecretLen = 32

// NewChallenge makes a credential-activation challenge binding ak to ek
// (TPM2_MakeCredential, done in software with go-tpm's tpm2 API): only the
// TPM that holds both the EK and the AK can recover the secret. The EK is
// RSA-2048, ECC P-256 or ECC P-384 (see ekPublicArea). The returned secret
// is what a genuine TPM will answer with. rnd may be nil.
func NewChallenge(ek crypto.PublicKey, ak KeyParams, rnd io.Reader) (secret []byte, cred Credential, err error) {
	if _, err := CheckAK(ak); err != nil {
		return nil, Credential{}, err
	}
	return newChallenge(ek, ak.Public, rnd)
}

// CheckAKPublic checks an AK that enrolls by its public area alone, with
// no creation statement: go-tpm-tools' AK, a primary key, whose creation
// data go-tpm-tools does not keep (docs/adr/0036). The public area must be
// exactly one TPMT_PUBLIC of a restricted signing key, fixed to its TPM
// and parent, generated inside the TPM, named with sha256, ECC P-256
// ECDSA-SHA256: ak_invalid. What binds it to the TPM is credential
// activation: the challenge is made for the key's name, which hashes these
// attributes, and a TPM loads a key with fixedTPM set only if it made it.
// The creation statement CheckAK reads adds no such binding: it is signed
// by the AK itself.
func CheckAKPublic(public []byte) (*ecdsa.PublicKey, error) {
	pub, err := decodePublic(public)
	if err != nil {
		return nil, fail(ReasonAKInvalid, NoPCR, err, "attestation key public area: %v", err)
	}
	if !bytes.Equal(tpm2.Marshal(pub), public) {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key public area has trailing bytes")
	}
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.SignEncrypt || a.Decrypt {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key is not a restricted signing key generated in and fixed to its TPM (attributes 0x%x)", tpm2.Marshal(a))
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fail(ReasonAKInvalid, NoPCR, nil, "attestation key is not named with sha256")
	}
	return akPublicKey(public)
}

// NewChallengePublic is NewChallenge for an AK that enrolls by its public
// area alone (CheckAKPublic).
func NewChallengePublic(ek crypto.PublicKey, akPublic []byte, rnd io.Reader) (secret []byte, cred Credential, err error) {
	if _, err := CheckAKPublic(akPublic); err != nil {
		return nil, Credential{}, err
	}
	return newChallenge(ek, akPublic, rnd)
}

func newChallenge(ek crypto.PublicKey, akPublic []byte, rnd io.Reader) (secret []byte, cred Credential, err error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	akPub, err := decodePublic(akPublic)
	if err != nil {
		return nil, Credential{}, fail(ReasonAKInvalid, NoPCR, err, "attestation key public area: %v", err)
	}
	name, err := tpm2.ObjectName(akPub)
	if err != nil {
		return nil, Credential{}, fail(ReasonAKInvalid, NoPCR, err, "attestation key name: %v", err)
	}
	ekPub, err := ekPublicArea(ek)
	if err != nil {
		return nil, Credential{}, fail(ReasonEKUntrusted, NoPCR, err, "EK: %v", err)
	}
	key, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		return nil, Credential{}, fail(ReasonEKUntrusted, NoPCR, err, "EK: %v", err)
	}
	secret = make([]byte, activationSecretLen)
	if _, err := io.ReadFull(rnd, secret); err != nil {
		return nil, Credential{}, fmt.Errorf("attest: activation secret: %w", err)
	}
	idObject, encSecret, err := tpm2.CreateCredential(rnd, key, name.Buffer, secret)
	if err != nil {
		return nil, Credential{}, fail(ReasonAKInvalid, NoPCR, err, "make activation challenge: %v", err)
	}
	return secret, Credential{Credential: idObject, Secret: encSecret}, nil
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
	att, err := decodeAttest(key.CreateAttestation)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key certification: %v", err)
	}
	if subtle.ConstantTimeCompare(att.ExtraData.Buffer, extra) != 1 {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key certification is not over this attestation's nonce")
	}
	pub, err := decodePublic(key.Public)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key public area: %v", err)
	}
	if a := pub.ObjectAttributes; !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.SignEncrypt {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key is exportable or cannot sign (attributes 0x%x)", tpm2.Marshal(a))
	}
	k, _, err := eccP256(pub)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key is not ECC P-256: %v", err)
	}
	return k, nil
}
