package prover

import (
	"bytes"
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
	return &goattest.ParentKeyConfig{Algorithm: goattest.RSA, Handle: tpmutil.Handle(t.srkHandle)}
}

// storageRootKey returns writ's storage root key at its persistent handle,
// creating it when the handle is empty: go-tpm's RSA SRK template
// (tpm2.RSASRKTemplate, go-attestation's too) as a primary of the
// endorsement hierarchy. The key is derived from the TPM's seed, so a
// re-created SRK unwraps the blobs the old one wrapped, at any handle. A key
// already at the handle is used only when its public area is that
// template's: writ never parents its keys under a key it did not make.
func (t *TPM) storageRootKey(tp transport.TPM) (tpm2.AuthHandle, error) {
	h := tpm2.TPMHandle(t.srkHandle)
	srk := tpm2.AuthHandle{Handle: h, Auth: tpm2.PasswordAuth(nil)}
	pub, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tp)
	if err == nil {
		if err := checkSRK(pub.OutPublic); err != nil {
			return srk, fmt.Errorf("prover: persistent handle 0x%08x: %w", t.srkHandle, err)
		}
		srk.Name = pub.Name
		return srk, nil
	}
	if !errors.Is(err, tpm2.TPMRCHandle) {
		return srk, fmt.Errorf("prover: read storage root key: %w", err)
	}
	primary, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.TPMRHEndorsement,
		InPublic:      tpm2.New2B(tpm2.RSASRKTemplate),
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
	return srk, nil
}

// checkSRK checks that a persistent key's public area is the SRK template's,
// whatever its unique field.
func checkSRK(pub tpm2.TPM2BPublic) error {
	got, err := pub.Contents()
	if err != nil {
		return fmt.Errorf("public area: %w", err)
	}
	want := tpm2.RSASRKTemplate
	foreign := errors.New("it holds a key that is not writ's storage root key (another tool's?); choose another SRK handle")
	if got.Type != want.Type { // the unique and parameter unions follow the type
		return foreign
	}
	got.Unique = want.Unique
	if !bytes.Equal(tpm2.Marshal(*got), tpm2.Marshal(want)) {
		return foreign
	}
	return nil
}

// EKCertSource says where to find the EK certificate when the TPM's NV
// holds none (see EK).
type EKCertSource struct {
	File        string // a DER or PEM file
	URLTemplate string // an http(s) URL with {{ek_sha256}}, the hex sha256 of the EK public key (PKIX DER)
}
