package prover

import (
	"crypto"
	"crypto/ecdsa"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// A host signing key: an ECC P-256 key created inside the TPM, never
// leaving it, usable with an empty auth value by whoever holds the TPM and
// the blob. The broker signs writs with one when configured to.
//
// Blob layout: version byte 2, then two uint16-length-prefixed fields:
// TPMT_PUBLIC and TPM2B_PRIVATE contents.
const signingKeyBlobV1 = 2

// NewSigningKey creates a signing key under the storage root key and
// returns its TPM-wrapped blob.
func (t *TPM) NewSigningKey() ([]byte, error) {
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	tmpl := pcrKeyTemplate(nil)
	tmpl.ObjectAttributes.UserWithAuth = true
	created, err := tpm2.Create{ParentHandle: srk, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		return nil, fmt.Errorf("prover: create signing key: %w", err)
	}
	b := []byte{signingKeyBlobV1}
	for _, f := range [][]byte{created.OutPublic.Bytes(), created.OutPrivate.Buffer} {
		b = binary.BigEndian.AppendUint16(b, uint16(len(f)))
		b = append(b, f...)
	}
	return b, nil
}

// loadedKey is an ECC P-256 signing key loaded under the storage root key.
type loadedKey struct {
	mu     sync.Mutex
	tp     transport.TPM
	key    tpm2.NamedHandle
	pub    *ecdsa.PublicKey
	closed bool
}

func (t *TPM) loadKey(public, private []byte) (*loadedKey, error) {
	pub, err := eccPublicKey(public)
	if err != nil {
		return nil, err
	}
	tp := transport.FromReadWriter(t.ch)
	srk, err := t.storageRootKey(tp)
	if err != nil {
		return nil, err
	}
	key, err := load(tp, srk, public, private)
	if err != nil {
		return nil, fmt.Errorf("prover: load key: %w", err)
	}
	return &loadedKey{tp: tp, key: key, pub: pub}, nil
}

// Public returns the key's *ecdsa.PublicKey.
func (k *loadedKey) Public() crypto.PublicKey { return k.pub }

// Close unloads the key from the TPM. A second Close does nothing.
func (k *loadedKey) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return nil
	}
	k.closed = true
	if _, err := (tpm2.FlushContext{FlushHandle: k.key.Handle}).Execute(k.tp); err != nil {
		return fmt.Errorf("prover: unload key: %w", err)
	}
	return nil
}

// KeySigner is a signing key loaded in the TPM. Close unloads it.
type KeySigner struct{ *loadedKey }

var _ crypto.Signer = (*KeySigner)(nil)

// LoadSigningKey loads a key made by NewSigningKey.
func (t *TPM) LoadSigningKey(blob []byte) (*KeySigner, error) {
	if len(blob) == 0 || blob[0] != signingKeyBlobV1 {
		return nil, errors.New("prover: malformed signing key blob")
	}
	var fields [2][]byte
	rest := blob[1:]
	for i := range fields {
		if len(rest) < 2 || len(rest)-2 < int(binary.BigEndian.Uint16(rest)) {
			return nil, errors.New("prover: malformed signing key blob")
		}
		n := int(binary.BigEndian.Uint16(rest))
		fields[i], rest = rest[2:2+n], rest[2+n:]
	}
	if len(rest) != 0 {
		return nil, errors.New("prover: malformed signing key blob")
	}
	key, err := t.loadKey(fields[0], fields[1])
	if err != nil {
		return nil, err
	}
	return &KeySigner{key}, nil
}

// Sign signs a SHA-256 digest in the TPM; the signature is ASN.1 DER.
func (s *KeySigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if (opts != nil && opts.HashFunc() != crypto.SHA256) || len(digest) != 32 {
		return nil, errors.New("prover: the signing key signs SHA-256 digests only")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("prover: signing key is closed")
	}
	der, err := signDigest(s.tp, tpm2.AuthHandle{Handle: s.key.Handle, Name: s.key.Name, Auth: tpm2.PasswordAuth(nil)}, digest)
	if err != nil {
		return nil, fmt.Errorf("prover: sign: %w", err)
	}
	return der, nil
}
