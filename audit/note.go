package audit

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/mod/sumdb/note"
)

// Checkpoints are signed notes (c2sp.org/signed-note) with signature type
// 0x02, which the signed-note spec assigns to "ECDSA signatures as
// implemented by github.com/transparency-dev/witness" (the scheme Sigstore's
// Rekor also uses), with curve NIST P-256:
//
//   - the signature is ASN.1 DER ECDSA over SHA-256 of the note text;
//   - the key ID is NOT the spec's default SHA-256(name || 0x0A || type ||
//     key)[:4]: for type 0x02 the spec says it is the first four bytes of
//     SHA-256 of the DER SubjectPublicKeyInfo alone;
//   - a verifier key string is <name>+<hex key ID>+base64(0x02 || SPKI DER),
//     as transparency-dev/formats/note.NewECDSAVerifier parses it.
//
// So any type-0x02 verifier (formats/note, the witness) accepts our notes.
// We are stricter than the scheme in one way: signatures are normalized to
// low S (s <= n/2) when signed and anything else is refused when verified, so
// a checkpoint's bytes cannot be altered without a new signature.
const sigTypeECDSA = 0x02

var p256HalfOrder = new(big.Int).Rsh(elliptic.P256().Params().N, 1)

// ecdsaKeyID is the type-0x02 key ID of a public key.
func ecdsaKeyID(spki []byte) uint32 {
	h := sha256.Sum256(spki)
	return binary.BigEndian.Uint32(h[:4])
}

func isValidKeyName(name string) bool {
	return name != "" && utf8.ValidString(name) && strings.IndexFunc(name, unicode.IsSpace) < 0 && !strings.Contains(name, "+")
}

// p256Key returns pub as a P-256 key with its SPKI DER encoding.
func p256Key(pub crypto.PublicKey) (*ecdsa.PublicKey, []byte, error) {
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok || ec.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("audit: signing key is a %T, not an ECDSA P-256 key", pub)
	}
	spki, err := x509.MarshalPKIXPublicKey(ec)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: encode public key: %w", err)
	}
	return ec, spki, nil
}

// noteSigner signs notes with a crypto.Signer holding a P-256 key (a TPM key
// or a file key alike).
type noteSigner struct {
	name   string
	id     uint32
	signer crypto.Signer
}

var _ note.Signer = (*noteSigner)(nil)

// NewNoteSigner returns a signed-note signer of type 0x02 named name for s,
// whose Sign must return ASN.1 DER ECDSA signatures over SHA-256 digests.
func NewNoteSigner(name string, s crypto.Signer) (note.Signer, error) {
	if !isValidKeyName(name) {
		return nil, fmt.Errorf("audit: invalid key name %q", name)
	}
	_, spki, err := p256Key(s.Public())
	if err != nil {
		return nil, err
	}
	return &noteSigner{name: name, id: ecdsaKeyID(spki), signer: s}, nil
}

func (s *noteSigner) Name() string    { return s.name }
func (s *noteSigner) KeyHash() uint32 { return s.id }

func (s *noteSigner) Sign(msg []byte) ([]byte, error) {
	digest := sha256.Sum256(msg)
	der, err := s.signer.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, err // signCheckpoint says what failed
	}
	r, sv, err := parseSig(der)
	if err != nil {
		return nil, fmt.Errorf("audit: signer returned a malformed signature: %w", err)
	}
	if sv.Cmp(p256HalfOrder) > 0 {
		sv.Sub(elliptic.P256().Params().N, sv)
	}
	return asn1.Marshal(ecdsaSig{r, sv})
}

type ecdsaSig struct{ R, S *big.Int }

// parseSig decodes a DER ECDSA signature, refusing any encoding but the
// canonical one.
func parseSig(der []byte) (r, s *big.Int, err error) {
	var sig ecdsaSig
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil {
		return nil, nil, err
	}
	if len(rest) != 0 || sig.R.Sign() <= 0 || sig.S.Sign() <= 0 {
		return nil, nil, errors.New("trailing data or non-positive value")
	}
	if again, err := asn1.Marshal(sig); err != nil || !bytes.Equal(again, der) {
		return nil, nil, errors.New("not DER")
	}
	return sig.R, sig.S, nil
}

// noteVerifier verifies type-0x02 signatures by one P-256 key.
type noteVerifier struct {
	name string
	id   uint32
	key  *ecdsa.PublicKey
}

var _ note.Verifier = (*noteVerifier)(nil)

func newNoteVerifier(name string, pub *ecdsa.PublicKey) (*noteVerifier, error) {
	if !isValidKeyName(name) {
		return nil, fmt.Errorf("audit: invalid key name %q", name)
	}
	key, spki, err := p256Key(pub)
	if err != nil {
		return nil, err
	}
	return &noteVerifier{name: name, id: ecdsaKeyID(spki), key: key}, nil
}

func (v *noteVerifier) Name() string    { return v.name }
func (v *noteVerifier) KeyHash() uint32 { return v.id }

func (v *noteVerifier) Verify(msg, sig []byte) bool {
	_, s, err := parseSig(sig)
	if err != nil || s.Cmp(p256HalfOrder) > 0 {
		return false
	}
	digest := sha256.Sum256(msg)
	return ecdsa.VerifyASN1(v.key, digest[:], sig)
}

// VerifierKey returns the signed-note verifier key string for pub under
// name: <name>+<hex key ID>+base64(0x02 || SPKI DER).
func VerifierKey(name string, pub *ecdsa.PublicKey) (string, error) {
	v, err := newNoteVerifier(name, pub)
	if err != nil {
		return "", err
	}
	spki, _ := x509.MarshalPKIXPublicKey(v.key)
	return fmt.Sprintf("%s+%08x+%s", name, v.id, base64.StdEncoding.EncodeToString(append([]byte{sigTypeECDSA}, spki...))), nil
}

// NewNoteVerifier parses a verifier key string made by VerifierKey (or any
// type-0x02 P-256 key string) into a note verifier.
func NewNoteVerifier(vkey string) (note.Verifier, error) {
	name, rest, ok1 := strings.Cut(vkey, "+")
	idHex, keyB64, ok2 := strings.Cut(rest, "+")
	key, err := base64.StdEncoding.Strict().DecodeString(keyB64)
	if !ok1 || !ok2 || err != nil || len(idHex) != 8 || len(key) < 2 || key[0] != sigTypeECDSA {
		return nil, fmt.Errorf("audit: malformed ECDSA verifier key %q", vkey)
	}
	id, err := strconv.ParseUint(idHex, 16, 32)
	if err != nil {
		return nil, fmt.Errorf("audit: malformed ECDSA verifier key %q", vkey)
	}
	pub, err := x509.ParsePKIXPublicKey(key[1:])
	if err != nil {
		return nil, fmt.Errorf("audit: verifier key: %w", err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("audit: verifier key is a %T, not ECDSA", pub)
	}
	v, err := newNoteVerifier(name, ec)
	if err != nil {
		return nil, err
	}
	if uint32(id) != v.id {
		return nil, fmt.Errorf("audit: verifier key ID %s does not match its key (%08x)", idHex, v.id)
	}
	return v, nil
}
