package prover

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	goattest "github.com/google/go-attestation/attest"
	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpmutil"
)

// DefaultSRKHandle is the persistent handle where writ keeps the storage root
// key that parents its AKs and keys. It is writ's own: 0x81000001 is where
// systemd, tpm2-tss and clevis keep theirs, so writ neither uses nor
// replaces a key a disk-encryption setup relies on. See ADR 0012.
const DefaultSRKHandle = 0x81005752 // "WR"

// SRKHandleEnv names the environment variable that sets the SRK handle for
// Open, for every writ command on a node at once.
const SRKHandleEnv = "WRIT_SRK_HANDLE"

// Persistent handles in the owner hierarchy's range (TCG handle registry).
const (
	minPersistentHandle = 0x81000000
	maxPersistentHandle = 0x817FFFFF
)

// Option configures Open and New.
type Option func(*options) error

// CheckOption reports whether an option is valid, without a TPM.
func CheckOption(o Option) error { return o(&options{}) }

type options struct {
	srk   uint32
	ekAlg string
	ek    EKCertSource
}

// WithSRKHandle keeps the storage root key at handle h instead of
// DefaultSRKHandle. h must be an owner-hierarchy persistent handle.
func WithSRKHandle(h uint32) Option {
	return func(o *options) error {
		if h < minPersistentHandle || h > maxPersistentHandle {
			return fmt.Errorf("prover: SRK handle 0x%08x is not a persistent handle (0x%08x-0x%08x)", h, minPersistentHandle, maxPersistentHandle)
		}
		o.srk = h
		return nil
	}
}

func (t *TPM) parent() *goattest.ParentKeyConfig {
	alg := goattest.ECDSA
	if t.srkRSA.Load() {
		alg = goattest.RSA
	}
	return &goattest.ParentKeyConfig{Algorithm: alg, Handle: tpmutil.Handle(t.srkHandle)}
}

// legacySRKHandle is where go-attestation, and writ before ADR 0012, kept
// an RSA SRK of the endorsement hierarchy.
const legacySRKHandle = 0x81000001

// eccSRKTemplate is the public area of the storage root key writ makes: go-tpm's
// ECC P-256 SRK template (the TCG provisioning guidance's) with an
// authPolicy of its own, srkMarker. An RSA primary costs a key generation,
// a prime search that takes swtpm about 30 ms and a hardware TPM seconds;
// an ECC one a scalar multiplication (docs/adr/0050). The marker tells
// writ's key apart from the same template made by systemd or tpm2-tss,
// which is otherwise public area for public area the same key type; it
// authorizes nothing (userWithAuth stays set, so the empty password is
// how the key is used, and no policy session can reach a digest that
// no policy was made for).
func eccSRKTemplate() tpm2.TPMTPublic {
	tmpl := tpm2.ECCSRKTemplate
	tmpl.AuthPolicy = tpm2.TPM2BDigest{Buffer: srkMarker[:]}
	return tmpl
}

// srkMarker is the authPolicy of writ's ECC storage root key.
var srkMarker = sha256.Sum256([]byte("writ storage root key v1"))

// storageRootKey returns writ's storage root key at its persistent handle,
// creating it when the handle is empty, as a primary of the endorsement
// hierarchy: from eccSRKTemplate, or from go-tpm's RSA SRK template
// (tpm2.RSASRKTemplate, go-attestation's) when an RSA SRK of that template
// is at 0x81000001, where writ kept it before ADR 0012: a primary is
// derived from the TPM's seed and its template, so the re-created RSA key
// unwraps the blobs the old one wrapped. A key already at the handle is
// used only when its public area is one of the two templates': writ never
// parents its keys under a key it did not make. An RSA SRK writ made
// before ADR 0050 stays in use, so its blobs keep loading.
func (t *TPM) storageRootKey(tp transport.TPM) (tpm2.AuthHandle, error) {
	h := tpm2.TPMHandle(t.srkHandle)
	srk := tpm2.AuthHandle{Handle: h, Auth: tpm2.PasswordAuth(nil)}
	pub, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tp)
	if err == nil {
		rsa, err := checkSRK(pub.OutPublic)
		if err != nil {
			return srk, fmt.Errorf("prover: persistent handle 0x%08x: %w", t.srkHandle, err)
		}
		srk.Name = pub.Name
		t.srkRSA.Store(rsa)
		return srk, nil
	}
	if !errors.Is(err, tpm2.TPMRCHandle) {
		return srk, fmt.Errorf("prover: read storage root key: %w", err)
	}
	tmpl, rsa := eccSRKTemplate(), false
	if t.srkHandle != legacySRKHandle {
		if old, err := (tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(legacySRKHandle)}).Execute(tp); err == nil {
			if isRSA, err := checkSRK(old.OutPublic); err == nil && isRSA {
				tmpl, rsa = tpm2.RSASRKTemplate, true
			}
		}
	}
	primary, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(tp)
	if err != nil {
		return srk, fmt.Errorf("prover: create storage root key: %w", err)
	}
	defer flush(tp, primary.ObjectHandle)
	_, err = tpm2.EvictControl{
		Auth:             tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: primary.ObjectHandle, Name: primary.Name},
		PersistentHandle: h,
	}.Execute(tp)
	if err != nil {
		return srk, fmt.Errorf("prover: persist storage root key at 0x%08x: %w", t.srkHandle, err)
	}
	srk.Name = primary.Name
	t.srkRSA.Store(rsa)
	return srk, nil
}

// checkSRK checks that a persistent key's public area is writ's ECC SRK
// template's or the RSA SRK template's, whatever its unique field, and
// reports which.
func checkSRK(pub tpm2.TPM2BPublic) (rsa bool, err error) {
	got, err := pub.Contents()
	if err != nil {
		return false, fmt.Errorf("public area: %w", err)
	}
	for _, want := range []tpm2.TPMTPublic{eccSRKTemplate(), tpm2.RSASRKTemplate} {
		if got.Type != want.Type { // the unique and parameter unions follow the type
			continue
		}
		g := *got
		g.Unique = want.Unique
		if bytes.Equal(tpm2.Marshal(g), tpm2.Marshal(want)) {
			return want.Type == tpm2.TPMAlgRSA, nil
		}
	}
	return false, errors.New("it holds a key that is not writ's storage root key (another tool's?); choose another SRK handle")
}

// EKCertSource says where to find the EK certificate when the TPM's NV
// holds none (see EK).
type EKCertSource struct {
	File        string // a DER or PEM file
	URLTemplate string // an http(s) URL with {{ek_sha256}}, the hex sha256 of the EK public key (PKIX DER)
}
