package prover_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// enroll runs writ's enrollment protocol between a TPM and a verifier that
// trusts roots: the EK (certificate and key), its verification, a new AK,
// credential activation and its check. It returns the trusted EK.
func enroll(t *testing.T, tpm *prover.TPM, roots *x509.CertPool, inter *x509.CertPool) *attest.EK {
	t.Helper()
	certDER, pubDER, err := tpm.EK()
	if err != nil {
		t.Fatal(err)
	}
	if len(certDER) == 0 {
		t.Fatal("no EK certificate")
	}
	ek, err := (&attest.EKPolicy{Roots: roots, Intermediates: inter}).VerifyEK(certDER, pubDER)
	if err != nil {
		t.Fatalf("VerifyEK: %v", err)
	}
	ak, err := tpm.NewAK()
	if err != nil {
		t.Fatal(err)
	}
	secret, cred, err := attest.NewChallenge(ek.Public, ak.Params, nil)
	if err != nil {
		t.Fatal(err)
	}
	answer, err := tpm.Activate(ak.Blob, cred)
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.CheckActivation(secret, answer); err != nil {
		t.Fatal(err)
	}
	// A challenge for another EK is not answered.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, cred, err = attest.NewChallenge(&other.PublicKey, ak.Params, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tpm.Activate(ak.Blob, cred); err == nil {
		t.Fatal("the TPM answered a challenge made for another EK")
	}
	return ek
}

// TestEnrollECCP384EK enrolls with swtpm's ECC P-384 EK and the certificate
// swtpm_setup wrote for it.
func TestEnrollECCP384EK(t *testing.T) {
	sw := swtpmtest.Start(t)
	tpm, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(prover.EKECCP384))
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(sw.Authority.Root)
	inter.AddCert(sw.Authority.Intermediate)
	ek := enroll(t, tpm, roots, inter)
	if k, ok := ek.Public.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P384() || ek.Certificate == nil {
		t.Fatalf("EK %T", ek.Public)
	}
}

// ekCA is a manufacturer CA of the test's own, for an EK whose certificate
// is not in the TPM's NV.
type ekCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newEKCA(t *testing.T) *ekCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test EK CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &ekCA{cert: cert, key: key}
}

// issue certifies an EK public key (PKIX DER) with the TCG EK extended key
// usage.
func (ca *ekCA) issue(t *testing.T, ekDER []byte) []byte {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(ekDER)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageKeyEncipherment, UnknownExtKeyUsage: []asn1.ObjectIdentifier{{2, 23, 133, 8, 1}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestEnrollECCP256EKCertFromFileAndURL enrolls with an ECC P-256 EK, which
// swtpm makes without a certificate in NV (as Intel PTT does): the
// certificate comes from a file, or from a URL template with the EK's
// fingerprint substituted.
func TestEnrollECCP256EKCertFromFileAndURL(t *testing.T) {
	sw := swtpmtest.Start(t)
	ca := newEKCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)

	plain, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(prover.EKECCP256))
	if err != nil {
		t.Fatal(err)
	}
	noCert, pubDER, err := plain.EK()
	plain.Close()
	if err != nil || noCert != nil {
		t.Fatalf("EK without a source: cert %d bytes, %v", len(noCert), err)
	}
	certDER := ca.issue(t, pubDER)
	sum := sha256.Sum256(pubDER)

	t.Run("file", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "ek.pem")
		if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), 0o600); err != nil {
			t.Fatal(err)
		}
		tpm, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(prover.EKECCP256), prover.WithEKCert(prover.EKCertSource{File: file}))
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		ek := enroll(t, tpm, roots, nil)
		if k, ok := ek.Public.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() || !bytes.Equal(ek.Certificate.Raw, certDER) {
			t.Fatalf("EK %T", ek.Public)
		}
	})
	t.Run("url", func(t *testing.T) {
		var asked []string
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			asked = append(asked, r.URL.Path)
			if r.URL.Path != "/ekcerts/"+hex.EncodeToString(sum[:]) {
				http.NotFound(w, r)
				return
			}
			_, _ = w.Write(certDER)
		}))
		defer srv.Close()
		tpm, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(prover.EKECCP256),
			prover.WithEKCert(prover.EKCertSource{URLTemplate: srv.URL + "/ekcerts/{{ek_sha256}}"}))
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		enroll(t, tpm, roots, nil)
		if len(asked) == 0 {
			t.Fatal("the URL was not asked")
		}
	})
	t.Run("certificate of another EK", func(t *testing.T) {
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		otherDER, _ := x509.MarshalPKIXPublicKey(&other.PublicKey)
		file := filepath.Join(t.TempDir(), "ek.der")
		if err := os.WriteFile(file, ca.issue(t, otherDER), 0o600); err != nil {
			t.Fatal(err)
		}
		tpm, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(prover.EKECCP256), prover.WithEKCert(prover.EKCertSource{File: file}))
		if err != nil {
			t.Fatal(err)
		}
		defer tpm.Close()
		if _, _, err := tpm.EK(); err == nil {
			t.Fatal("a certificate for another key was accepted as this TPM's EK certificate")
		}
	})
	t.Run("bad options", func(t *testing.T) {
		for _, opt := range []prover.Option{prover.WithEKAlgorithm("dsa"),
			prover.WithEKCert(prover.EKCertSource{URLTemplate: "ftp://x/{{ek_sha256}}"}),
			prover.WithEKCert(prover.EKCertSource{URLTemplate: "https://x/ek"})} {
			if tpm, err := prover.New(sw.Channel(), "", opt); err == nil {
				tpm.Close()
				t.Fatal("a bad option was accepted")
			}
		}
	})
}

// TestImpostorAtPersistentEKHandle: the EK is taken from the persistent
// handle swtpm_setup (and TPM vendors) provision, 0x81010001 for RSA and
// 0x81010016 for P-384, with no key generation; so the key found there
// must be the one the EK certificate certifies. Here another key of the
// same public area (the same template made in the owner hierarchy) sits at
// the handle, the certificate in NV unchanged: EK refuses it, and a
// challenge made for the certified EK is not answered with it.
func TestImpostorAtPersistentEKHandle(t *testing.T) {
	for _, c := range []struct {
		alg    string
		handle tpm2.TPMHandle
	}{{prover.EKRSA, 0x81010001}, {prover.EKECCP384, 0x81010016}} {
		t.Run(c.alg, func(t *testing.T) {
			sw := swtpmtest.Start(t)
			tp := sw.Transport()
			genuine, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(c.alg))
			if err != nil {
				t.Fatal(err)
			}
			certDER, pubDER, err := genuine.EK()
			genuine.Close()
			if err != nil || certDER == nil {
				t.Fatalf("the provisioned EK at 0x%08x: cert %d bytes, %v", uint32(c.handle), len(certDER), err)
			}

			pub, err := tpm2.ReadPublic{ObjectHandle: c.handle}.Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			tmpl, err := pub.OutPublic.Contents()
			if err != nil {
				t.Fatal(err)
			}
			if tmpl.Type == tpm2.TPMAlgRSA {
				tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
			} else {
				tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
					X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 48)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 48)}})
			}
			impostor, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(*tmpl)}.Execute(tp)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _, _ = tpm2.FlushContext{FlushHandle: impostor.ObjectHandle}.Execute(tp) }()
			if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: c.handle, Name: pub.Name},
				PersistentHandle: c.handle}).Execute(tp); err != nil {
				t.Fatal(err)
			}
			if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner,
				ObjectHandle:     tpm2.NamedHandle{Handle: impostor.ObjectHandle, Name: impostor.Name},
				PersistentHandle: c.handle}).Execute(tp); err != nil {
				t.Fatal(err)
			}

			tpm, err := prover.New(sw.Channel(), "", prover.WithEKAlgorithm(c.alg))
			if err != nil {
				t.Fatal(err)
			}
			defer tpm.Close()
			if _, _, err := tpm.EK(); err == nil || !strings.Contains(err.Error(), "does not certify this TPM's EK") {
				t.Fatalf("a key at 0x%08x that the EK certificate does not certify: %v", uint32(c.handle), err)
			}
			cert, err := attest.ParseEKCertificate(certDER)
			if err != nil || !bytes.Equal(mustPKIX(t, cert.PublicKey), pubDER) {
				t.Fatalf("EK certificate: %v", err)
			}
			ak, err := tpm.NewAK()
			if err != nil {
				t.Fatal(err)
			}
			_, cred, err := attest.NewChallenge(cert.PublicKey, ak.Params, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tpm.Activate(ak.Blob, cred); err == nil {
				t.Fatal("the impostor key answered a challenge made for the certified EK")
			}
		})
	}
}

func mustPKIX(t *testing.T, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return der
}
