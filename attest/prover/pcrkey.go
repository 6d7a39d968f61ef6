package prover

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/asn1"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"slices"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/attest"
)

// ErrPCRPolicy reports that the TPM refused to use a PCR-bound key because
// the PCRs it is bound to no longer hold the values they held at creation.
var ErrPCRPolicy = errors.New("prover: the TPM refused the key: bound PCRs have changed")

// pcrChangedRetries bounds how often Sign restarts when some PCR (bound or
// not, e.g. the runtime PCR) was extended between TPM2_PolicyPCR and
// TPM2_Sign.
const pcrChangedRetries = 3

// PCRKey is a TPM-resident P-256 signing key usable only while the PCRs in
// Sel hold the values they held at creation.
type PCRKey struct {
	// Blob is the key wrapped by this TPM's storage root key, with its PCR
	// selection; only this TPM can load it (LoadPCRSigner).
	Blob []byte
	// Sel is the sha256-bank PCR selection the key's policy binds, ascending.
	Sel []int
	// Certification is the key's TPMT_PUBLIC and the AK's TPM2_Certify of it
	// (TPMS_ATTEST, TPMT_SIGNATURE); CreateData is empty.
	Certification attest.KeyParams
}

// NewPCRKey creates, under the storage root key, an ECC P-256 ECDSA-SHA256
// signing key whose only authorization is TPM2_PolicyPCR over the current
// sha256 values of the PCRs in sel (userWithAuth clear), and has the AK
// (akBlob, from NewAK) certify it over qualifying. Check the result with
// attest.CheckPCRKey. PCRs 16 and 23 are refused: locality 0 can reset them.
func (t *TPM) NewPCRKey(akBlob []byte, sel []int, qualifying []byte) (*PCRKey, error) {
	pcrs, err := checkSelection(sel)
	if err != nil {
		return nil, err
	}
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	policy, err := trialPolicyPCR(tp, pcrs)
	if err != nil {
		return nil, err
	}
	created, err := tpm2.Create{
		ParentHandle: srk,
		InPublic:     tpm2.New2B(pcrKeyTemplate(policy)),
	}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: create PCR key: %w", err)
	}
	// The (empty) auth value gives Certify the ADMIN role, not the PCR
	// policy: adminWithPolicy is clear.
	params, err := certifyCreated(tp, srk, created.OutPublic.Bytes(), created.OutPrivate.Buffer, "PCR key", "the AK",
		func() (tpm2.NamedHandle, error) { return loadAK(tp, srk, akBlob) }, qualifying)
	if err != nil {
		return nil, err
	}
	return &PCRKey{
		Blob:          marshalPCRKey(pcrs, created.OutPublic.Bytes(), created.OutPrivate.Buffer),
		Sel:           pcrs,
		Certification: params,
	}, nil
}

func pcrKeyTemplate(policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        false, // the policy is the only way to sign
			NoDA:                true,
			SignEncrypt:         true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
			Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)},
		}),
	}
}

// checkSelection returns sel sorted, refusing an empty selection, PCRs
// outside 0-23, duplicates and the PCRs locality 0 can reset.
func checkSelection(sel []int) ([]int, error) {
	if len(sel) == 0 {
		return nil, errors.New("prover: empty PCR selection")
	}
	pcrs := slices.Clone(sel)
	slices.Sort(pcrs)
	for i, pcr := range pcrs {
		switch {
		case pcr < 0 || pcr > 23:
			return nil, fmt.Errorf("prover: PCR %d is outside 0-23", pcr)
		case pcr == 16 || pcr == 23:
			return nil, fmt.Errorf("prover: PCR %d can be reset at locality 0: a policy over it binds nothing", pcr)
		case i > 0 && pcrs[i-1] == pcr:
			return nil, fmt.Errorf("prover: PCR %d selected twice", pcr)
		}
	}
	return pcrs, nil
}

func pcrSelection(pcrs []int) tpm2.TPMLPCRSelection {
	u := make([]uint, len(pcrs))
	for i, p := range pcrs {
		u[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
		{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(u...)},
	}}
}

// trialPolicyPCR has the TPM compute PolicyPCR over the current values of
// pcrs, in one step, so no PCR can move between reading and binding.
func trialPolicyPCR(tp transport.TPM, pcrs []int) ([]byte, error) {
	sess, closeSess, err := tpm2.PolicySession(tp, tpm2.TPMAlgSHA256, 16, tpm2.Trial())
	if err != nil {
		return nil, fmt.Errorf("prover: start trial policy session: %w", err)
	}
	defer func() { _ = closeSess() }()
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: pcrSelection(pcrs)}).Execute(tp); err != nil {
		return nil, fmt.Errorf("prover: trial PolicyPCR: %w", err)
	}
	d, err := tpm2.PolicyGetDigest{PolicySession: sess.Handle()}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: trial policy digest: %w", err)
	}
	return d.PolicyDigest.Buffer, nil
}

func load(tp transport.TPM, parent tpm2.AuthHandle, public, private []byte) (tpm2.NamedHandle, error) {
	rsp, err := tpm2.Load{
		ParentHandle: parent,
		InPrivate:    tpm2.TPM2BPrivate{Buffer: private},
		InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](public),
	}.Execute(tp)
	if err != nil {
		return tpm2.NamedHandle{}, err
	}
	return tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}, nil
}

func flush(tp transport.TPM, h tpm2.TPMHandle) {
	_, _ = tpm2.FlushContext{FlushHandle: h}.Execute(tp)
}

// goAttestationKey is go-attestation's serialized key (its serializedKey,
// v0.6.4): for KeyEncodingEncrypted (2) a TPMT_PUBLIC and the TPM2B_PRIVATE
// contents, wrapped by the SRK. go-attestation keeps its loaded AK's handle
// to itself and its AK.Certify takes no qualifying data, so the AK is loaded
// here directly.
type goAttestationKey struct {
	Encoding   uint8 `json:"KeyEncoding"`
	TPMVersion uint8
	Public     []byte
	Blob       []byte `json:"KeyBlob"`
}

func loadAK(tp transport.TPM, srk tpm2.AuthHandle, blob []byte) (tpm2.NamedHandle, error) {
	if IsTPMToolsAK(blob) {
		return loadTPMToolsAK(tp)
	}
	var k goAttestationKey
	if err := json.Unmarshal(blob, &k); err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("prover: AK blob: %w", err)
	}
	if k.TPMVersion != 2 || k.Encoding != 2 {
		return tpm2.NamedHandle{}, fmt.Errorf("prover: AK blob: unsupported encoding %d (TPM version %d)", k.Encoding, k.TPMVersion)
	}
	h, err := load(tp, srk, k.Public, k.Blob)
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("prover: load AK: %w", err)
	}
	return h, nil
}

// Blob layout: a version byte, then three uint16-length-prefixed fields:
// TPML_PCR_SELECTION, TPMT_PUBLIC, TPM2B_PRIVATE contents.
const pcrKeyBlobV1 = 1

func marshalPCRKey(pcrs []int, public, private []byte) []byte {
	b := []byte{pcrKeyBlobV1}
	for _, f := range [][]byte{tpm2.Marshal(pcrSelection(pcrs)), public, private} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b
}

func unmarshalPCRKey(b []byte) (sel tpm2.TPMLPCRSelection, public, private []byte, err error) {
	bad := errors.New("prover: malformed PCR key blob")
	if len(b) == 0 || b[0] != pcrKeyBlobV1 {
		return sel, nil, nil, bad
	}
	b = b[1:]
	var fields [3][]byte
	for i := range fields {
		if len(b) < 2 || len(b)-2 < int(binary.BigEndian.Uint16(b)) {
			return sel, nil, nil, bad
		}
		n := int(binary.BigEndian.Uint16(b))
		fields[i], b = b[2:2+n], b[2+n:]
	}
	if len(b) != 0 {
		return sel, nil, nil, bad
	}
	s, err := tpm2.Unmarshal[tpm2.TPMLPCRSelection](fields[0])
	if err != nil || len(s.PCRSelections) != 1 || s.PCRSelections[0].Hash != tpm2.TPMAlgSHA256 {
		return sel, nil, nil, bad
	}
	return *s, fields[1], fields[2], nil
}

// PCRSigner is a PCRKey loaded for signing. Every signature runs a fresh
// policy session with TPM2_PolicyPCR; when the bound PCRs have changed the
// TPM refuses and Sign returns an error wrapping ErrPCRPolicy. Close unloads
// the key.
type PCRSigner struct {
	*loadedKey // its mutex: one policy session and signature at a time
	sel        tpm2.TPMLPCRSelection
}

var _ crypto.Signer = (*PCRSigner)(nil)

// LoadPCRSigner loads a key made by NewPCRKey from its blob. The blob is
// wrapped by this TPM's storage root key: no other TPM can load it.
func (t *TPM) LoadPCRSigner(blob []byte) (*PCRSigner, error) {
	sel, public, private, err := unmarshalPCRKey(blob)
	if err != nil {
		return nil, err
	}
	key, err := t.loadKey(public, private)
	if err != nil {
		return nil, err
	}
	return &PCRSigner{loadedKey: key, sel: sel}, nil
}

func eccPublicKey(public []byte) (*ecdsa.PublicKey, error) {
	p, err := tpm2.Unmarshal[tpm2.TPMTPublic](public)
	if err != nil {
		return nil, fmt.Errorf("prover: PCR key public area: %w", err)
	}
	params, err := p.Parameters.ECCDetail()
	if err != nil || params.CurveID != tpm2.TPMECCNistP256 {
		return nil, errors.New("prover: PCR key is not ECC P-256")
	}
	point, err := p.Unique.ECC()
	if err != nil || len(point.X.Buffer) > 32 || len(point.Y.Buffer) > 32 {
		return nil, errors.New("prover: PCR key has no P-256 point")
	}
	raw := make([]byte, 65)
	raw[0] = 4
	copy(raw[33-len(point.X.Buffer):33], point.X.Buffer)
	copy(raw[65-len(point.Y.Buffer):], point.Y.Buffer)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("prover: PCR key public point: %w", err)
	}
	return pub, nil
}

// Sign signs a SHA-256 digest with ECDSA in the TPM and returns the ASN.1 DER
// signature. rand is unused: the TPM makes the nonce.
func (s *PCRSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts != nil && opts.HashFunc() != crypto.SHA256 {
		return nil, fmt.Errorf("prover: PCR key signs SHA-256 digests only, not %v", opts.HashFunc())
	}
	if len(digest) != 32 {
		return nil, fmt.Errorf("prover: digest is %d bytes, want 32", len(digest))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("prover: PCR signer is closed")
	}
	for i := 0; ; i++ {
		sig, err := s.sign(digest)
		if errors.Is(err, tpm2.TPMRCPCRChanged) && i < pcrChangedRetries {
			continue
		}
		return sig, err
	}
}

func (s *PCRSigner) sign(digest []byte) ([]byte, error) {
	sess, closeSess, err := tpm2.PolicySession(s.tp, tpm2.TPMAlgSHA256, 16)
	if err != nil {
		return nil, fmt.Errorf("prover: start policy session: %w", err)
	}
	defer func() { _ = closeSess() }()
	// An empty pcrDigest makes the TPM use the PCRs' current values; if they
	// differ from the key's, the policy digest will not match at Sign.
	if _, err := (tpm2.PolicyPCR{PolicySession: sess.Handle(), Pcrs: s.sel}).Execute(s.tp); err != nil {
		return nil, fmt.Errorf("prover: PolicyPCR: %w", err)
	}
	der, err := signDigest(s.tp, tpm2.AuthHandle{Handle: s.key.Handle, Name: s.key.Name, Auth: sess}, digest)
	if errors.Is(err, tpm2.TPMRCPolicyFail) {
		return nil, fmt.Errorf("%w (%w)", ErrPCRPolicy, err)
	}
	if err != nil {
		return nil, fmt.Errorf("prover: sign with PCR key: %w", err)
	}
	return der, nil
}

// signDigest signs a SHA-256 digest with an unrestricted ECDSA key and
// returns the ASN.1 DER signature.
func signDigest(tp transport.TPM, key tpm2.AuthHandle, digest []byte) ([]byte, error) {
	rsp, err := tpm2.Sign{
		KeyHandle: key,
		Digest:    tpm2.TPM2BDigest{Buffer: digest},
		InScheme: tpm2.TPMTSigScheme{
			Scheme:  tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
		},
		// Not a restricted key: a null ticket is enough.
		Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
	}.Execute(tp)
	if err != nil {
		return nil, err
	}
	ecc, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("prover: signature: %w", err)
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(ecc.SignatureR.Buffer),
		new(big.Int).SetBytes(ecc.SignatureS.Buffer),
	})
	if err != nil {
		return nil, fmt.Errorf("prover: encode signature: %w", err)
	}
	return der, nil
}
