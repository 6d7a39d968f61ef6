package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/writ-dev/writ/attest"
)

// Key kinds.
const (
	KeyTPM  = "tpm"  // TPM-resident, PCR-bound, certified by the AK
	KeyFile = "file" // a software key: for tests and development only
)

// KeyInfo describes the key that signs a log's checkpoints. Create writes it
// to key.json; it is public.
type KeyInfo struct {
	// Kind is KeyTPM or KeyFile.
	Kind string `json:"kind"`
	// Origin is the log's checkpoint origin and the signed-note key name.
	// Create sets it from Options.Origin.
	Origin string `json:"origin"`
	// PublicKey is the signing key, PKIX DER. Create fills it in from the
	// signer when empty.
	PublicKey []byte `json:"public_key"`

	// For KeyTPM only:

	// AKPublic is the TPMT_PUBLIC of the AK that certified the key.
	AKPublic []byte `json:"ak_public,omitempty"`
	// Certification is the key's TPMT_PUBLIC and the AK's TPM2_Certify of it
	// (TPMS_ATTEST, TPMT_SIGNATURE).
	Certification *attest.KeyParams `json:"certification,omitempty"`
	// PCRs is the sha256-bank PCR selection the key's policy binds.
	PCRs []int `json:"pcrs,omitempty"`
	// PCRValues are the hex sha256 values of PCRs that the policy binds.
	PCRValues map[int]string `json:"pcr_values,omitempty"`
	// Qualifying is the qualifying data of the certification.
	Qualifying []byte `json:"qualifying,omitempty"`
}

// publicKey decodes PublicKey as a P-256 key.
func (k *KeyInfo) publicKey() (*ecdsa.PublicKey, error) {
	pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("audit: key.json public key: %w", err)
	}
	ec, _, err := p256Key(pub)
	return ec, err
}

func (k *KeyInfo) pcrValues() (map[int][]byte, error) {
	out := make(map[int][]byte, len(k.PCRValues))
	for pcr, v := range k.PCRValues {
		b, err := hex.DecodeString(v)
		if err != nil {
			return nil, fmt.Errorf("audit: key.json PCR %d value: %w", pcr, err)
		}
		out[pcr] = b
	}
	return out, nil
}

// errKeyNotCertified marks a KeyInfo whose TPM certification does not hold.
var errKeyNotCertified = errors.New("audit: key is not certified by the AK")

// errKeyNotAttested marks a key the broker's evidence does not hold.
var errKeyNotAttested = errors.New("audit: key was not attested by the broker")

// checkCertification checks a KeyTPM key's certification by akPublic (the
// AK the caller trusts) with attest.CheckPCRKey, and that it certifies
// PublicKey. key.json's own AK must be that AK.
func (k *KeyInfo) checkCertification(akPublic []byte) error {
	if !bytes.Equal(k.AKPublic, akPublic) {
		return fmt.Errorf("%w: key.json names a different AK than the trusted one", errKeyNotCertified)
	}
	if k.Certification == nil {
		return fmt.Errorf("%w: key.json has no certification", errKeyNotCertified)
	}
	values, err := k.pcrValues()
	if err != nil {
		return fmt.Errorf("%w: %w", errKeyNotCertified, err)
	}
	certified, err := attest.CheckPCRKey(akPublic, *k.Certification, values, k.PCRs, k.Qualifying)
	if err != nil {
		return fmt.Errorf("%w: %w", errKeyNotCertified, err)
	}
	pub, err := k.publicKey()
	if err != nil {
		return fmt.Errorf("%w: %w", errKeyNotCertified, err)
	}
	if !certified.Equal(pub) {
		return fmt.Errorf("%w: the certified key is not key.json's public key", errKeyNotCertified)
	}
	return nil
}

func (k *KeyInfo) marshal() ([]byte, error) {
	b, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("audit: encode key.json: %w", err)
	}
	return append(b, '\n'), nil
}

func parseKeyInfo(b []byte) (*KeyInfo, error) {
	var k KeyInfo
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&k); err != nil {
		return nil, fmt.Errorf("audit: key.json: %w", err)
	}
	if k.Kind != KeyTPM && k.Kind != KeyFile {
		return nil, fmt.Errorf("audit: key.json: kind %q is not %q or %q", k.Kind, KeyTPM, KeyFile)
	}
	if !isValidKeyName(k.Origin) {
		return nil, fmt.Errorf("audit: key.json: invalid origin %q", k.Origin)
	}
	if _, err := k.publicKey(); err != nil {
		return nil, err
	}
	return &k, nil
}
