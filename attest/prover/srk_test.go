package prover_test

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// persistForeignKey makes another tool's storage key (systemd's kind: an ECC
// P-256 SRK of the owner hierarchy) persistent at h and returns its name.
// Keys of different generations differ.
func persistForeignKey(t *testing.T, tp transport.TPM, h tpm2.TPMHandle, generation byte) []byte {
	t.Helper()
	tmpl := tpm2.ECCSRKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
		X: tpm2.TPM2BECCParameter{Buffer: []byte{generation}}, Y: tpm2.TPM2BECCParameter{Buffer: []byte{generation}}})
	primary, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = tpm2.FlushContext{FlushHandle: primary.ObjectHandle}.Execute(tp) }()
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: primary.ObjectHandle, Name: primary.Name},
		PersistentHandle: h}).Execute(tp); err != nil {
		t.Fatal(err)
	}
	return primary.Name.Buffer
}

func evict(t *testing.T, tp transport.TPM, h tpm2.TPMHandle) {
	t.Helper()
	pub, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: h, Name: pub.Name},
		PersistentHandle: h}).Execute(tp); err != nil {
		t.Fatal(err)
	}
}

// TestForeignSRKUntouched: a key another tool persisted at 0x81000001 (where
// systemd's tpm2 tooling keeps its SRK) is neither used nor replaced: writ's
// AK and keys still load after that tool replaces its key, and the foreign
// key is still there, unchanged, while writ works.
func TestForeignSRKUntouched(t *testing.T) {
	sw := swtpmtest.Start(t)
	tp := sw.Transport()
	const foreign = tpm2.TPMHandle(0x81000001)
	name := persistForeignKey(t, tp, foreign, 1)

	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm.NewKey(ak.Blob, []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	pcrKey, err := tpm.NewPCRKey(ak.Blob, []int{0, 7}, []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	if pub, err := (tpm2.ReadPublic{ObjectHandle: foreign}).Execute(tp); err != nil || !bytes.Equal(pub.Name.Buffer, name) {
		t.Fatalf("the key at 0x81000001 changed: %v", err)
	}

	// The other tool rotates its key: writ's blobs must not depend on it.
	evict(t, tp, foreign)
	persistForeignKey(t, tp, foreign, 2)
	if _, err := tpm.Quote(ak.Blob, make([]byte, 32), []int{0}); err != nil {
		t.Fatalf("the AK was parented under the foreign key: %v", err)
	}
	s, err := tpm.LoadSigner(key.Blob)
	if err != nil {
		t.Fatalf("the key was parented under the foreign key: %v", err)
	}
	digest := sha256.Sum256([]byte("m"))
	sig, err := s.Sign(nil, digest[:], crypto.SHA256)
	if err != nil || !ecdsa.VerifyASN1(s.Public().(*ecdsa.PublicKey), digest[:], sig) {
		t.Fatalf("sign: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	ps, err := tpm.LoadPCRSigner(pcrKey.Blob)
	if err != nil {
		t.Fatalf("the PCR key was parented under the foreign key: %v", err)
	}
	if err := ps.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(prover.DefaultSRKHandle)}).Execute(tp); err != nil {
		t.Fatalf("no SRK at writ's handle: %v", err)
	}
}

// TestForeignKeyAtSRKHandle: a key writ did not make at its own handle is
// refused, not used; another handle can be configured.
func TestForeignKeyAtSRKHandle(t *testing.T) {
	sw := swtpmtest.Start(t)
	persistForeignKey(t, sw.Transport(), tpm2.TPMHandle(prover.DefaultSRKHandle), 1)
	if tpm, err := prover.New(sw.Channel(), ""); err == nil || !strings.Contains(err.Error(), "not writ's storage root key") {
		if tpm != nil {
			tpm.Close()
		}
		t.Fatalf("New over a foreign key at writ's handle: %v", err)
	}
	if _, err := prover.New(sw.Channel(), "", prover.WithSRKHandle(0x01000000)); err == nil {
		t.Fatal("a non-persistent SRK handle was accepted")
	}
	tpm, err := prover.New(sw.Channel(), "", prover.WithSRKHandle(0x81005753))
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := tpm.NewAK(); err != nil {
		t.Fatal(err)
	}
}

// TestSRKHandleEnv: Open takes the SRK handle from WRIT_SRK_HANDLE, so every
// writ command on a node uses the agent's.
func TestSRKHandleEnv(t *testing.T) {
	sw := swtpmtest.StartTCP(t, swtpmtest.Shared(t))
	for _, bad := range []string{"nope", "0x01000000"} {
		t.Setenv(prover.SRKHandleEnv, bad)
		if tpm, err := prover.Open(sw.Spec(), ""); err == nil {
			tpm.Close()
			t.Fatalf("%s=%s was accepted", prover.SRKHandleEnv, bad)
		}
	}
	t.Setenv(prover.SRKHandleEnv, "0x81005760")
	tpm, err := prover.Open(sw.Spec(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := tpm.NewAK(); err != nil {
		t.Fatal(err)
	}
}

// TestSRKIsECCWithWritsMarker: on a TPM without one, writ makes an ECC
// P-256 SRK (ADR 0050: an RSA primary costs a key generation) with its
// marker authPolicy, so the same template without the marker (systemd's
// kind, TestForeignKeyAtSRKHandle) is told apart; its AK and keys work.
func TestSRKIsECCWithWritsMarker(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	pub, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(prover.DefaultSRKHandle)}.Execute(sw.Transport())
	if err != nil {
		t.Fatal(err)
	}
	p, err := pub.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	ecc, err := p.Parameters.ECCDetail()
	if p.Type != tpm2.TPMAlgECC || err != nil || ecc.CurveID != tpm2.TPMECCNistP256 || len(p.AuthPolicy.Buffer) != sha256.Size ||
		!p.ObjectAttributes.Restricted || !p.ObjectAttributes.Decrypt || !p.ObjectAttributes.FixedTPM {
		t.Fatalf("SRK: type %v, auth policy %x, attributes %+v", p.Type, p.AuthPolicy.Buffer, p.ObjectAttributes)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.Quote(ak.Blob, make([]byte, 32), []int{0}); err != nil {
		t.Fatal(err)
	}
	key, err := tpm.NewKey(ak.Blob, []byte("nonce"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := tpm.LoadSigner(key.Blob)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// A second open uses the key it made, it does not make another.
	again, err := prover.New(sw.Channel(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if _, err := again.Quote(ak.Blob, make([]byte, 32), []int{0}); err != nil {
		t.Fatalf("the AK does not load after a second open: %v", err)
	}
}

// persistRSASRK makes go-tpm's RSA SRK (writ's before ADR 0050, and
// go-attestation's) a primary of the endorsement hierarchy, persistent at h.
func persistRSASRK(t *testing.T, tp transport.TPM, h tpm2.TPMHandle) {
	t.Helper()
	primary, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tpm2.RSASRKTemplate)}.Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _, _ = tpm2.FlushContext{FlushHandle: primary.ObjectHandle}.Execute(tp) }()
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner,
		ObjectHandle:     tpm2.NamedHandle{Handle: primary.ObjectHandle, Name: primary.Name},
		PersistentHandle: h}).Execute(tp); err != nil {
		t.Fatal(err)
	}
}

// TestRSASRKKept: blobs made under an RSA SRK keep loading. An RSA SRK
// writ made before ADR 0050 at its handle is used, not replaced; and when
// writ's handle is empty but go-attestation's RSA SRK is at 0x81000001
// (where writ kept it before ADR 0012), writ re-creates that RSA key at its
// handle, so the AK made under the old one loads.
func TestRSASRKKept(t *testing.T) {
	t.Run("at writ's handle", func(t *testing.T) {
		sw := swtpmtest.Start(t)
		tp := sw.Transport()
		persistRSASRK(t, tp, tpm2.TPMHandle(prover.DefaultSRKHandle))
		before, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(prover.DefaultSRKHandle)}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		tpm, err := prover.New(sw.Channel(), "")
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		ak, err := tpm.NewAK()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tpm.NewKey(ak.Blob, []byte("nonce")); err != nil {
			t.Fatal(err)
		}
		after, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(prover.DefaultSRKHandle)}.Execute(tp)
		if err != nil || !bytes.Equal(after.Name.Buffer, before.Name.Buffer) {
			t.Fatalf("the RSA SRK was replaced: %v", err)
		}
	})
	t.Run("at 0x81000001", func(t *testing.T) {
		sw := swtpmtest.Start(t)
		tp := sw.Transport()
		const legacy = 0x81000001
		persistRSASRK(t, tp, legacy)
		old, err := prover.New(sw.Channel(), "", prover.WithSRKHandle(legacy))
		if err != nil {
			t.Fatal(err)
		}
		ak, err := old.NewAK()
		old.Close()
		if err != nil {
			t.Fatal(err)
		}
		tpm, err := prover.New(sw.Channel(), "")
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		if _, err := tpm.Quote(ak.Blob, make([]byte, 32), []int{0}); err != nil {
			t.Fatalf("an AK made under go-attestation's SRK does not load under writ's: %v", err)
		}
		pub, err := tpm2.ReadPublic{ObjectHandle: tpm2.TPMHandle(prover.DefaultSRKHandle)}.Execute(tp)
		if err != nil {
			t.Fatal(err)
		}
		if p, err := pub.OutPublic.Contents(); err != nil || p.Type != tpm2.TPMAlgRSA {
			t.Fatalf("writ's SRK is not the RSA one: %v", err)
		}
	})
}
