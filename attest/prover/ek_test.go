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
	"testing"
	"time"

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
