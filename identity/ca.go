// Package identity mints and checks SPIFFE identities: the broker's CA, the
// X.509-SVIDs it issues, and the trust bundle that relying parties use.
package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	neturl "net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// File names of the CA in its directory.
const (
	CAKeyFile  = "ca.key"
	CACertFile = "ca.crt"
)

// caLifetime is the lifetime of a CA the broker creates for itself.
const caLifetime = 10 * 365 * 24 * time.Hour

// CA is the broker's certificate authority for one trust domain.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// LoadOrCreateCA loads the CA kept in dir, or creates one there: a P-256 key
// in ca.key (mode 0600) and a self-signed root in ca.crt. A key file readable
// by group or others is refused.
func LoadOrCreateCA(dir string, td spiffeid.TrustDomain) (*CA, error) {
	keyPath, certPath := filepath.Join(dir, CAKeyFile), filepath.Join(dir, CACertFile)
	_, err := os.Stat(keyPath)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return createCA(keyPath, certPath, td)
	case err != nil:
		return nil, fmt.Errorf("identity: %w", err)
	}
	key, err := LoadKey(keyPath)
	if err != nil {
		return nil, err
	}
	cert, err := loadCert(certPath)
	if err != nil {
		return nil, err
	}
	if !publicKeysEqual(cert.PublicKey, key.Public()) {
		return nil, fmt.Errorf("identity: %s does not hold the key of %s", keyPath, certPath)
	}
	ca := &CA{td: td, cert: cert, key: key}
	if id, err := x509svid.IDFromCert(cert); err == nil && id.TrustDomain() != td {
		return nil, fmt.Errorf("identity: CA in %s is for trust domain %q, not %q", dir, id.TrustDomain(), td)
	}
	return ca, nil
}

// NewKey generates an ECDSA P-256 key.
func NewKey() (crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return key, nil
}

func createCA(keyPath, certPath string, td spiffeid.TrustDomain) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"writ"}, CommonName: "writ CA " + td.Name()},
		URIs:                  []*neturl.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(caLifetime),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if err := WriteKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := WriteCerts(certPath, cert); err != nil {
		return nil, err
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Root returns the CA certificate.
func (ca *CA) Root() *x509.Certificate { return ca.cert }

// Bundle returns the trust bundle that verifies this CA's SVIDs.
func (ca *CA) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
	b.SetRefreshHint(5 * time.Minute)
	b.SetSequenceNumber(1)
	return b
}

// IssueX509SVID certifies pub as id for ttl (cut short at the CA's own end).
// The certificate follows the X.509-SVID profile: one URI SAN, not a CA,
// digitalSignature only, usable for TLS client and server authentication.
func (ca *CA) IssueX509SVID(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, error) {
	return ca.IssueWorkloadSVID(id, pub, ttl, nil)
}

// IssueWorkloadSVID is IssueX509SVID with DNS SANs besides the URI SAN (a
// registration entry's DNS names); the first is also the subject's common
// name, as SPIRE does.
func (ca *CA) IssueWorkloadSVID(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration, dnsNames []string) (*x509.Certificate, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("identity: %s is not in trust domain %s", id, ca.td)
	}
	if ttl <= 0 {
		return nil, errors.New("identity: SVID TTL must be positive")
	}
	now := time.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(ca.cert.NotAfter) {
		notAfter = ca.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          randomSerial(),
		Subject:               pkix.Name{Organization: []string{"writ"}},
		URIs:                  []*neturl.URL{id.URL()},
		NotBefore:             now.Add(-30 * time.Second),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		DNSNames:              dnsNames,
	}
	if len(dnsNames) > 0 {
		tmpl.Subject.CommonName = dnsNames[0]
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identity: issue SVID for %s: %w", id, err)
	}
	return x509.ParseCertificate(der)
}

func randomSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic("identity: crypto/rand failed: " + err.Error())
	}
	return n.Add(n, big.NewInt(1))
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

// WriteKey writes key as PKCS#8 PEM with mode 0600.
func WriteKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
}

// WritePublicKey writes a public key as PKIX PEM, readable by all.
func WritePublicKey(path string, pub crypto.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644)
}

// LoadPublicKey reads a PKIX PEM ECDSA public key.
func LoadPublicKey(path string) (*ecdsa.PublicKey, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, fmt.Errorf("identity: %s holds no PEM public key", path)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", path, err)
	}
	ec, ok := pub.(*ecdsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("identity: %s: not an ECDSA public key", path)
	}
	return ec, nil
}

// LoadOrCreateKey loads the key at path, or creates a P-256 key there
// (mode 0600) when there is none.
func LoadOrCreateKey(path string) (crypto.Signer, error) {
	key, err := LoadKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		if key, err = NewKey(); err == nil {
			err = WriteKey(path, key)
		}
	}
	return key, err
}

// LoadKey reads a PKCS#8 PEM private key, refusing a file that group or
// others can read.
func LoadKey(path string) (crypto.Signer, error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("identity: key file %s has mode %04o; it must be 0600", path, info.Mode().Perm())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("identity: %s holds no PKCS#8 private key", path)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("identity: %s: key cannot sign", path)
	}
	return signer, nil
}

// EncodeCerts encodes certificates as PEM.
func EncodeCerts(certs ...*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// WriteCerts writes certificates as PEM, readable by all.
func WriteCerts(path string, certs ...*x509.Certificate) error {
	return WriteFile(path, EncodeCerts(certs...), 0o644)
}

func loadCert(path string) (*x509.Certificate, error) {
	certs, err := LoadCerts(path)
	if err != nil {
		return nil, err
	}
	if len(certs) != 1 {
		return nil, fmt.Errorf("identity: %s holds %d certificates, want 1", path, len(certs))
	}
	return certs[0], nil
}

// LoadCerts reads PEM certificates.
func LoadCerts(path string) ([]*x509.Certificate, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, raw = pem.Decode(raw)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("identity: %s: %w", path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("identity: %s holds no PEM certificate", path)
	}
	return certs, nil
}

// WriteFile writes atomically: a temporary file in the same directory with
// the final mode, synced, then renamed over path. A reader sees the old
// file or the new one, never a part.
func WriteFile(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("identity: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return nil
}
