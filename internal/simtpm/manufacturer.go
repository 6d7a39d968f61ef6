// Package simtpm is a TPM simulated in software, for load generation only:
// it produces exactly the structures writ's verifier accepts (an EK with a
// certificate, an AK with its creation statement, credential activation,
// quotes, certified keys, a TCG boot log and a runtime log) with keys held
// in process memory, so that thousands of simulated nodes run on one
// machine. Its EK certificates come from a test manufacturer CA that the
// load generator makes: only a broker configured with that CA as an EK
// root (ek.roots) accepts a simulated node (docs/adr/0042).
package simtpm

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"time"
)

// Files of a manufacturer directory.
const (
	RootFile = "ek-root.pem"     // the CA certificate: what a broker lists in ek.roots
	KeyFile  = "ek-root.key.pem" // its private key, 0600
)

// Manufacturer is a test TPM manufacturer CA: it signs the EK certificates
// of simulated TPMs. Its name says it is a load-test CA, so no one mistakes
// it for a vendor's.
type Manufacturer struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// oidTCGKpEKCert is the extended key usage of an EK certificate.
var oidTCGKpEKCert = asn1.ObjectIdentifier{2, 23, 133, 8, 1}

// NewManufacturer creates a manufacturer CA valid for a year.
func NewManufacturer() (*Manufacturer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("simtpm: manufacturer key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"writ load test"}, CommonName: "writ simulated TPM manufacturer (NOT A REAL TPM VENDOR)"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("simtpm: manufacturer certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("simtpm: manufacturer certificate: %w", err)
	}
	return &Manufacturer{cert: cert, key: key}, nil
}

// LoadOrCreateManufacturer loads the manufacturer CA of dir, or creates
// one there (dir 0700, key 0600) when dir holds none.
func LoadOrCreateManufacturer(dir string) (*Manufacturer, error) {
	_, err := os.Stat(filepath.Join(dir, RootFile))
	if errors.Is(err, fs.ErrNotExist) {
		m, err := NewManufacturer()
		if err != nil {
			return nil, err
		}
		return m, m.save(dir)
	}
	return LoadManufacturer(dir)
}

// LoadManufacturer loads the manufacturer CA of dir: its certificate
// (RootFile) and its key (KeyFile), which must match.
func LoadManufacturer(dir string) (*Manufacturer, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, RootFile))
	if err != nil {
		return nil, fmt.Errorf("simtpm: %w", err)
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("simtpm: %w", err)
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || cb.Type != "CERTIFICATE" || kb == nil || kb.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("simtpm: %s does not hold a manufacturer CA (%s and %s)", dir, RootFile, KeyFile)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("simtpm: %s: %w", RootFile, err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("simtpm: %s: %w", KeyFile, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok || !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("simtpm: %s is not the key of %s", KeyFile, RootFile)
	}
	return &Manufacturer{cert: cert, key: key}, nil
}

func (m *Manufacturer) save(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("simtpm: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(m.key)
	if err != nil {
		return fmt.Errorf("simtpm: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, KeyFile), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("simtpm: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, RootFile), m.RootPEM(), 0o644); err != nil { //nolint:gosec // G306: a CA certificate is public
		return fmt.Errorf("simtpm: %w", err)
	}
	return nil
}

// Certificate returns the CA certificate.
func (m *Manufacturer) Certificate() *x509.Certificate { return m.cert }

// RootPEM returns the CA certificate in PEM: what ek.roots names.
func (m *Manufacturer) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.cert.Raw})
}

// certifyEK issues an EK certificate for pub, as a TPM vendor does: the TCG
// EK extended key usage, no subject (the identity is the key).
func (m *Manufacturer) certifyEK(pub crypto.PublicKey) ([]byte, error) {
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:       serial,
		Subject:            pkix.Name{CommonName: "writ simulated TPM EK"},
		NotBefore:          now.Add(-time.Hour),
		NotAfter:           m.cert.NotAfter,
		KeyUsage:           x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage: []asn1.ObjectIdentifier{oidTCGKpEKCert},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.cert, pub, m.key)
	if err != nil {
		return nil, fmt.Errorf("simtpm: EK certificate: %w", err)
	}
	return der, nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("simtpm: serial: %w", err)
	}
	return s, nil
}
