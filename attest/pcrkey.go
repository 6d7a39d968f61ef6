package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"slices"

	"github.com/google/go-tpm/tpm2"
)

// ReasonKeyPolicy means a TPM key's authorization policy is not
// TPM2_PolicyPCR over the expected PCR values, or the key can be used
// without its policy. Never change the string.
const ReasonKeyPolicy Reason = "key_policy_mismatch"

const (
	tpmCCPolicyPCR = 0x0000017f
	tpmAlgSHA256   = 0x000b
	// pcrSelectSize is sizeof(pcrSelect) in a PC Client TPM's PCR
	// selections: three bytes, PCRs 0-23. The TPM hashes the selection as
	// the caller sent it, so prover and verifier must agree on it.
	pcrSelectSize = 3
	maxPCR        = pcrSelectSize*8 - 1
)

// resettablePCRs can be reset from locality 0: a policy over them binds
// nothing.
var resettablePCRs = []int{16, 23}

// PolicyPCRDigest computes the authPolicy a TPM derives for TPM2_PolicyPCR
// over the given sha256 values of the PCRs in sel, starting from an empty
// policy:
//
//	SHA256(zeros(32) || TPM_CC_PolicyPCR || TPML_PCR_SELECTION(sel, sha256) || SHA256(values in PCR order))
//
// sel may be in any order; it selects PCRs 0-23, each at most once. Values of
// PCRs outside sel are ignored. Errors are *Error with ReasonKeyPolicy.
func PolicyPCRDigest(values map[int][]byte, sel []int) ([]byte, error) {
	pcrs, err := pcrSelection(sel)
	if err != nil {
		return nil, err
	}
	var bitmap [pcrSelectSize]byte
	concat := sha256.New()
	for _, pcr := range pcrs {
		v, ok := values[pcr]
		if !ok || len(v) != sha256.Size {
			return nil, fail(ReasonKeyPolicy, pcr, nil, "no sha256 value for PCR %d", pcr)
		}
		concat.Write(v)
		bitmap[pcr/8] |= 1 << (pcr % 8)
	}
	h := sha256.New()
	h.Write(make([]byte, sha256.Size))
	h.Write(binary.BigEndian.AppendUint32(nil, tpmCCPolicyPCR))
	h.Write(binary.BigEndian.AppendUint32(nil, 1)) // one TPMS_PCR_SELECTION
	h.Write(binary.BigEndian.AppendUint16(nil, tpmAlgSHA256))
	h.Write([]byte{pcrSelectSize})
	h.Write(bitmap[:])
	h.Write(concat.Sum(nil))
	return h.Sum(nil), nil
}

// pcrSelection returns sel sorted, or an error if it is empty, names a PCR
// outside 0-23 or names one twice.
func pcrSelection(sel []int) ([]int, error) {
	if len(sel) == 0 {
		return nil, fail(ReasonKeyPolicy, NoPCR, nil, "empty PCR selection")
	}
	out := slices.Clone(sel)
	slices.Sort(out)
	for i, pcr := range out {
		if pcr < 0 || pcr > maxPCR {
			return nil, fail(ReasonKeyPolicy, NoPCR, nil, "PCR %d is outside the selectable range 0-%d", pcr, maxPCR)
		}
		if i > 0 && out[i-1] == pcr {
			return nil, fail(ReasonKeyPolicy, pcr, nil, "PCR %d is selected twice", pcr)
		}
	}
	return out, nil
}

// CheckPCRKey checks that key was created inside the TPM as a non-exportable
// P-256 ECDSA-SHA256 signing key that can be used only through the policy
// PolicyPCRDigest(values, sel) (userWithAuth clear), and that the AK whose
// TPMT_PUBLIC is akPublic certified it (TPM2_Certify, its name matching the
// key's public area) over qualifying. It returns the key's public key.
//
// Errors are *Error: ReasonAKInvalid for a malformed akPublic,
// ReasonKeyNotCertified when the certification or the key's kind is wrong,
// ReasonKeyPolicy when the key's policy is not the expected one or sel names
// a PCR that locality 0 can reset (16, 23).
func CheckPCRKey(akPublic []byte, key KeyParams, values map[int][]byte, sel []int, qualifying []byte) (*ecdsa.PublicKey, error) {
	if _, err := CheckKeyCertification(akPublic, key, qualifying); err != nil {
		return nil, err
	}
	// CheckKeyCertification has checked: TPM-generated, fixedTPM,
	// fixedParent, sensitiveDataOrigin, sign, not restricted, ECC P-256, the
	// AK's signature, the attested name and the qualifying data.
	pub, err := decodePublic(key.Public)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key public area: %v", err)
	}
	// The certification covers the name, a hash of the decoded area: refuse
	// bytes beyond it, so the area passed on is the one certified.
	if !bytes.Equal(tpm2.Marshal(*pub), key.Public) {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key public area is not in canonical form")
	}
	if pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key name algorithm is 0x%x, not SHA-256", uint16(pub.NameAlg))
	}
	if pub.ObjectAttributes.Decrypt {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key can decrypt: not a signing-only key")
	}
	ec, parms, err := eccP256(pub)
	if err != nil {
		return nil, fail(ReasonKeyNotCertified, NoPCR, err, "key public point: %v", err)
	}
	if !signsECDSASHA256(parms) {
		return nil, fail(ReasonKeyNotCertified, NoPCR, nil, "key does not sign with ECDSA SHA-256")
	}

	pcrs, err := pcrSelection(sel)
	if err != nil {
		return nil, err
	}
	for _, pcr := range pcrs {
		if slices.Contains(resettablePCRs, pcr) {
			return nil, fail(ReasonKeyPolicy, pcr, nil, "PCR %d can be reset at locality 0: a policy over it binds nothing", pcr)
		}
	}
	want, err := PolicyPCRDigest(values, pcrs)
	if err != nil {
		return nil, err
	}
	if pub.ObjectAttributes.UserWithAuth {
		return nil, fail(ReasonKeyPolicy, NoPCR, nil, "key can be used with its auth value, bypassing its policy")
	}
	if subtle.ConstantTimeCompare(pub.AuthPolicy.Buffer, want) != 1 {
		return nil, fail(ReasonKeyPolicy, NoPCR, nil, "key policy is not PolicyPCR over the expected values of PCRs %v", pcrs)
	}
	return ec, nil
}
