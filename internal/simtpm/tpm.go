package simtpm

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/google/go-tpm/tpm2"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
)

// EKKind is the endorsement key's algorithm.
type EKKind int

// EK algorithms. ECC P-256 is the default: an RSA-2048 key takes about
// 100 ms of CPU to generate, which thousands of nodes cannot afford.
const (
	EKECCP256 EKKind = iota
	EKRSA2048
)

// TPM is one simulated TPM. Its keys live in process memory: it proves
// nothing about any machine, and only a broker that trusts its
// Manufacturer accepts it. It is safe for concurrent use.
type TPM struct {
	ek     crypto.Signer // *ecdsa.PrivateKey or *rsa.PrivateKey
	ekCert []byte        // DER, from the Manufacturer
	boot   *Boot

	mu         sync.Mutex
	ak         *ecdsa.PrivateKey
	akPublic   []byte // TPMT_PUBLIC
	runtimePCR [32]byte
	runtimeLog []byte
	clock      uint64
}

// New creates a simulated TPM with a fresh EK certified by m, which has
// measured boot.
func (m *Manufacturer) New(kind EKKind, boot *Boot) (*TPM, error) {
	var (
		ek  crypto.Signer
		err error
	)
	switch kind {
	case EKECCP256:
		ek, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case EKRSA2048:
		ek, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, fmt.Errorf("simtpm: unknown EK kind %d", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("simtpm: EK: %w", err)
	}
	cert, err := m.certifyEK(ek.Public())
	if err != nil {
		return nil, err
	}
	return &TPM{ek: ek, ekCert: cert, boot: boot}, nil
}

// EK returns the EK certificate (DER) and the EK public key (PKIX DER).
func (t *TPM) EK() (certDER, publicDER []byte, err error) {
	pub, err := x509.MarshalPKIXPublicKey(t.ek.Public())
	if err != nil {
		return nil, nil, fmt.Errorf("simtpm: EK public key: %w", err)
	}
	return slices.Clone(t.ekCert), pub, nil
}

// signingPublic is the public area of a P-256 ECDSA-SHA256 key generated
// in and fixed to its TPM: restricted for an AK, not for a key the AK
// certifies.
func signingPublic(pub *ecdsa.PublicKey, restricted bool) tpm2.TPMTPublic {
	point, _ := pub.ECDH() // a P-256 key always converts
	raw := point.Bytes()   // 04 || X || Y
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true,
			Restricted: restricted, SignEncrypt: true, NoDA: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]},
			Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]},
		}),
	}
}

// NewAK creates the attestation key (ECC P-256, restricted) and returns
// its public area with its creation statement, signed by itself as a TPM
// does (TPM2_CertifyCreation).
func (t *TPM) NewAK() (attest.KeyParams, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return attest.KeyParams{}, fmt.Errorf("simtpm: AK: %w", err)
	}
	pub := signingPublic(&key.PublicKey, true)
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return attest.KeyParams{}, fmt.Errorf("simtpm: AK name: %w", err)
	}
	createData := tpm2.Marshal(tpm2.TPMSCreationData{
		PCRSelect:     tpm2.TPMLPCRSelection{},
		PCRDigest:     tpm2.TPM2BDigest{Buffer: sha256Sum(nil)},
		Locality:      tpm2.TPMALocality{TPMLocZero: true},
		ParentNameAlg: tpm2.TPMAlgSHA256,
		ParentName:    tpm2.TPM2BName{Buffer: []byte{0x40, 0, 0, 1}},
	})
	t.mu.Lock()
	defer t.mu.Unlock()
	att := t.attestLocked(nil, tpm2.TPMSTAttestCreation, tpm2.NewTPMUAttest(tpm2.TPMSTAttestCreation, &tpm2.TPMSCreationInfo{
		ObjectName: *name, CreationHash: tpm2.TPM2BDigest{Buffer: sha256Sum(createData)},
	}))
	sig, err := signAttest(key, att)
	if err != nil {
		return attest.KeyParams{}, err
	}
	t.ak, t.akPublic = key, tpm2.Marshal(pub)
	return attest.KeyParams{Public: slices.Clone(t.akPublic), CreateData: createData, CreateAttestation: att, CreateSignature: sig}, nil
}

// attestLocked encodes a TPMS_ATTEST with a TPM's magic and a clock that
// moves forward.
func (t *TPM) attestLocked(extra []byte, typ tpm2.TPMST, body tpm2.TPMUAttest) []byte {
	t.clock++
	return tpm2.Marshal(tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            typ,
		QualifiedSigner: tpm2.TPM2BName{Buffer: []byte{0x40, 0, 0, 7}},
		ExtraData:       tpm2.TPM2BData{Buffer: extra},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: t.clock, Safe: true},
		Attested:        body,
	})
}

// signAttest is the TPMT_SIGNATURE (ECDSA SHA-256) of a TPMS_ATTEST.
func signAttest(key *ecdsa.PrivateKey, att []byte) ([]byte, error) {
	r, s, err := ecdsa.Sign(rand.Reader, key, sha256Sum(att))
	if err != nil {
		return nil, fmt.Errorf("simtpm: sign: %w", err)
	}
	return tpm2.Marshal(tpm2.TPMTSignature{
		SigAlg: tpm2.TPMAlgECDSA,
		Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       tpm2.TPMAlgSHA256,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, 32))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, 32))},
		}),
	}), nil
}

// ErrActivation is what ActivateCredential answers to a challenge it
// cannot open: one made for another EK or another AK, or altered.
var ErrActivation = errors.New("simtpm: the credential does not open with this EK and AK")

// ActivateCredential answers a credential-activation challenge as
// TPM2_ActivateCredential does (TPM 2.0 Part 1, 24 "Credential
// Protection"): recover the seed with the EK's private key, check the
// integrity HMAC over the AK's name, decrypt the secret.
func (t *TPM) ActivateCredential(cred attest.Credential) ([]byte, error) {
	t.mu.Lock()
	akPublic := t.akPublic
	t.mu.Unlock()
	if akPublic == nil {
		return nil, errors.New("simtpm: no AK")
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](akPublic)
	if err != nil {
		return nil, fmt.Errorf("simtpm: AK: %w", err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, fmt.Errorf("simtpm: AK name: %w", err)
	}
	seed, err := t.seed(cred.Secret)
	if err != nil {
		return nil, err
	}
	// TPMS_ID_OBJECT: TPM2B integrityHMAC, then encIdentity.
	mac, err := tpm2.Unmarshal[tpm2.TPM2BDigest](cred.Credential)
	if err != nil || len(cred.Credential) < 2+len(mac.Buffer) {
		return nil, ErrActivation
	}
	encIdentity := cred.Credential[2+len(mac.Buffer):]
	h := hmac.New(sha256.New, tpm2.KDFa(crypto.SHA256, seed, "INTEGRITY", nil, nil, 256))
	h.Write(encIdentity)
	h.Write(name.Buffer)
	if !hmac.Equal(h.Sum(nil), mac.Buffer) {
		return nil, ErrActivation
	}
	// Both EK templates (RSA L-1, ECC L-2) protect with AES-128-CFB, zero IV.
	block, err := aes.NewCipher(tpm2.KDFa(crypto.SHA256, seed, "STORAGE", name.Buffer, nil, 128))
	if err != nil {
		return nil, fmt.Errorf("simtpm: %w", err)
	}
	plain := make([]byte, len(encIdentity))
	cipher.NewCFBDecrypter(block, make([]byte, aes.BlockSize)).XORKeyStream(plain, encIdentity) //nolint:staticcheck // the TPM's own mode
	secret, err := tpm2.Unmarshal[tpm2.TPM2BDigest](plain)
	if err != nil || len(plain) != 2+len(secret.Buffer) {
		return nil, ErrActivation
	}
	return secret.Buffer, nil
}

// seed recovers the credential's seed from its encrypted secret with the
// EK: RSA-OAEP (SHA-256, label "IDENTITY") or ECDH and KDFe.
func (t *TPM) seed(encSecret []byte) ([]byte, error) {
	switch ek := t.ek.(type) {
	case *rsa.PrivateKey:
		seed, err := rsa.DecryptOAEP(sha256.New(), nil, ek, encSecret, []byte("IDENTITY\x00"))
		if err != nil {
			return nil, ErrActivation
		}
		return seed, nil
	case *ecdsa.PrivateKey:
		point, err := tpm2.Unmarshal[tpm2.TPMSECCPoint](encSecret)
		if err != nil || len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 {
			return nil, ErrActivation
		}
		raw := append([]byte{4}, leftPad(point.X.Buffer)...)
		raw = append(raw, leftPad(point.Y.Buffer)...)
		eph, err := ecdh.P256().NewPublicKey(raw)
		if err != nil {
			return nil, ErrActivation
		}
		priv, err := ek.ECDH()
		if err != nil {
			return nil, fmt.Errorf("simtpm: EK: %w", err)
		}
		z, err := priv.ECDH(eph)
		if err != nil {
			return nil, ErrActivation
		}
		ekRaw := priv.PublicKey().Bytes()
		return tpm2.KDFe(crypto.SHA256, z, "IDENTITY", leftPad(point.X.Buffer), ekRaw[1:33], 256), nil
	}
	return nil, fmt.Errorf("simtpm: EK of type %T", t.ek)
}

// Quote quotes the selected PCRs (sha256 bank) over nonce with the AK, as
// TPM2_Quote does, and gathers the evidence with the boot event log. It
// returns the runtime log as it was when quoted.
func (t *TPM) Quote(nonce []byte, sel []int) (attest.Evidence, []byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ak == nil {
		return attest.Evidence{}, nil, errors.New("simtpm: no AK")
	}
	sel = slices.Sorted(slices.Values(sel))
	var bitmap [3]byte
	values := make(map[int][]byte, len(sel))
	digest := sha256.New()
	for _, pcr := range sel {
		if pcr < 0 || pcr > 23 {
			return attest.Evidence{}, nil, fmt.Errorf("simtpm: no PCR %d", pcr)
		}
		v := t.pcrLocked(pcr)
		values[pcr] = v[:]
		digest.Write(v[:])
		bitmap[pcr/8] |= 1 << (pcr % 8)
	}
	quote := t.attestLocked(nonce, tpm2.TPMSTAttestQuote, tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{
		PCRSelect: tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap[:]}}},
		PCRDigest: tpm2.TPM2BDigest{Buffer: digest.Sum(nil)},
	}))
	sig, err := signAttest(t.ak, quote)
	if err != nil {
		return attest.Evidence{}, nil, err
	}
	return attest.Evidence{Quote: quote, Signature: sig, PCRs: values, EventLog: t.boot.log}, bytes.Clone(t.runtimeLog), nil
}

// pcrLocked is the value of a PCR: the boot's, or the runtime PCR's.
func (t *TPM) pcrLocked(pcr int) [32]byte {
	if pcr == runtime.PCR {
		return t.runtimePCR
	}
	return t.boot.pcrs[pcr] // zero for a PCR the boot did not extend
}

// NewKey creates a P-256 signing key "in the TPM" (not restricted, fixed to
// it) and certifies it with the AK over qualifying (TPM2_Certify), for an
// SVID. The private key is returned for the simulated node to sign with.
func (t *TPM) NewKey(qualifying []byte) (*ecdsa.PrivateKey, attest.KeyParams, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, attest.KeyParams{}, fmt.Errorf("simtpm: key: %w", err)
	}
	pub := signingPublic(&key.PublicKey, false)
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		return nil, attest.KeyParams{}, fmt.Errorf("simtpm: key name: %w", err)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.ak == nil {
		return nil, attest.KeyParams{}, errors.New("simtpm: no AK")
	}
	att := t.attestLocked(qualifying, tpm2.TPMSTAttestCertify, tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
		Name: *name, QualifiedName: *name,
	}))
	sig, err := signAttest(t.ak, att)
	if err != nil {
		return nil, attest.KeyParams{}, err
	}
	return key, attest.KeyParams{Public: tpm2.Marshal(pub), CreateAttestation: att, CreateSignature: sig}, nil
}

// Measure appends a runtime event to the runtime log and extends the
// runtime PCR with it, as the agent does.
func (t *TPM) Measure(e runtime.Event) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	log, err := runtime.Append(t.runtimeLog, e, func(pcr int, digest []byte) error {
		if pcr != runtime.PCR {
			return fmt.Errorf("simtpm: runtime events extend PCR %d, not %d", runtime.PCR, pcr)
		}
		t.runtimePCR = sha256.Sum256(append(t.runtimePCR[:], digest...))
		return nil
	})
	if err != nil {
		return err
	}
	t.runtimeLog = log
	return nil
}

// RuntimeLog returns the runtime log (CEL).
func (t *TPM) RuntimeLog() []byte {
	t.mu.Lock()
	defer t.mu.Unlock()
	return bytes.Clone(t.runtimeLog)
}

func sha256Sum(b []byte) []byte {
	s := sha256.Sum256(b)
	return s[:]
}

func leftPad(b []byte) []byte {
	if len(b) >= 32 {
		return b
	}
	return append(make([]byte, 32-len(b)), b...)
}
