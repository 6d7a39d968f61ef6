// Package identity mints and checks SPIFFE identities: the broker's CA, the
// X.509-SVIDs it issues, and the trust bundle that relying parties use.
package identity

import (
	"context"
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
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// File names of the CA in its directory (the broker's data directory).
// ca.crt holds the signing certificate followed by the intermediates above
// it, if any (never the root of an upstream). A prepared successor lives in
// ca.next.key and ca.next.crt until it is activated (rotate.go); the roots
// kept in the bundle after their CA was replaced are in ca.retained.json.
const (
	CAKeyFile      = "ca.key"
	CACertFile     = "ca.crt"
	CANextKeyFile  = "ca.next.key"
	CANextCertFile = "ca.next.crt"
	CARetainedFile = "ca.retained.json"
)

// DefaultCALifetime is the lifetime of a root the broker creates for
// itself; DefaultUpstreamCALifetime the lifetime it asks an upstream for.
const (
	DefaultCALifetime         = 10 * 365 * 24 * time.Hour
	DefaultUpstreamCALifetime = 24 * time.Hour
	DefaultRotateAt           = 0.5
)

// KeyStore keeps CA keys: Generate makes a key and returns it with the
// bytes Load takes back, which the CA writes to its key files (mode 0600).
// FileKeys keeps software keys; the broker has one for its host's TPM.
type KeyStore interface {
	Generate() (key crypto.Signer, stored []byte, err error)
	Load(stored []byte) (crypto.Signer, error)
}

// KeyReleaser is a KeyStore that holds something for each loaded key (a
// TPM's object slots). The CA releases a key it no longer signs with, one
// Rotate after it stopped, so a signature under way is not cut off.
type KeyReleaser interface {
	Release(crypto.Signer)
}

// FileKeys is the KeyStore of software P-256 keys as PKCS#8 PEM.
type FileKeys struct{}

var _ KeyStore = FileKeys{}

// Generate makes a P-256 key.
func (FileKeys) Generate() (crypto.Signer, []byte, error) {
	key, err := NewKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// Load parses a PKCS#8 PEM key.
func (FileKeys) Load(stored []byte) (crypto.Signer, error) { return parseKey(stored) }

// Upstream certifies the CA's keys as intermediates: SignCA has the CSR
// (DER) signed as a CA certificate for the trust domain and returns that
// certificate first, then the intermediates above it. Whatever it returns
// is checked before use (CheckAuthority).
type Upstream interface {
	SignCA(ctx context.Context, csr []byte, lifetime time.Duration) ([]*x509.Certificate, error)
}

// StaticCA is a CA an operator supplies: an intermediate (or root)
// certificate, the intermediates above it, the roots that anchor it, and
// its key. It is never rotated by the broker.
type StaticCA struct {
	Cert  *x509.Certificate
	Chain []*x509.Certificate
	Roots []*x509.Certificate
	Key   crypto.Signer
}

// CAOptions configures OpenCA. The zero value (but Dir) is the default: a
// self-signed root in Dir with software keys, rotated at half its life.
type CAOptions struct {
	// Dir holds the CA's files; not used with Static.
	Dir string
	// Keys keeps CA keys; nil: FileKeys.
	Keys KeyStore
	// Static is an operator-supplied CA; with it, Upstream and rotation
	// do not apply.
	Static *StaticCA
	// Upstream signs the CA's certificates; nil: the CA is its own root.
	Upstream Upstream
	// UpstreamRoots are the trust anchors an upstream's certificates must
	// chain to; required with Upstream. They, not the upstream, decide
	// what the bundle trusts.
	UpstreamRoots []*x509.Certificate
	// Lifetime of a certificate the CA makes or asks for; default
	// DefaultCALifetime, or DefaultUpstreamCALifetime with an upstream.
	Lifetime time.Duration
	// RotateAt is the fraction of its lifetime after which a successor is
	// prepared (its root published); the successor signs from halfway
	// between then and the end. Default 0.5.
	RotateAt float64
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// authority is one signing CA: its certificate, the intermediates above it
// (none for a root), the roots its chain ends at, and its key.
type authority struct {
	cert  *x509.Certificate
	chain []*x509.Certificate
	roots []*x509.Certificate
	key   crypto.Signer
}

// certs returns what an SVID carries above its leaf: nothing for a root,
// else the CA certificate and its intermediates.
func (a *authority) certs() []*x509.Certificate {
	if a.selfSigned() {
		return nil
	}
	return append([]*x509.Certificate{a.cert}, a.chain...)
}

func (a *authority) selfSigned() bool {
	return len(a.roots) == 1 && a.roots[0].Equal(a.cert)
}

// CA is the broker's certificate authority for one trust domain: the
// authority that signs now, the successor prepared before it takes over,
// and the roots of replaced authorities kept in the bundle until every
// SVID they signed has expired.
type CA struct {
	td   spiffeid.TrustDomain
	opts CAOptions

	rotateMu sync.Mutex // one Rotate at a time

	mu       sync.RWMutex
	current  *authority
	next     *authority // prepared: its roots are in the bundle; it does not sign yet
	retained []retainedRoot
	replaced crypto.Signer // the key of the authority last replaced, to release
}

// retainedRoot is a root whose authority was replaced, kept until the end
// of the last SVID it could have signed.
type retainedRoot struct {
	cert  *x509.Certificate
	until time.Time
}

// LoadOrCreateCA loads the CA kept in dir, or creates one there: a P-256 key
// in ca.key (mode 0600) and a self-signed root in ca.crt. A key file readable
// by group or others is refused.
func LoadOrCreateCA(dir string, td spiffeid.TrustDomain) (*CA, error) {
	return OpenCA(context.Background(), td, CAOptions{Dir: dir})
}

// OpenCA opens the CA opts describe: an operator's static CA, or the CA
// kept in opts.Dir, created there when absent (self-signed, or signed by
// the upstream). Every authority is checked (CheckAuthority) before use,
// and one Rotate runs before it returns, so an expired CA is replaced.
func OpenCA(ctx context.Context, td spiffeid.TrustDomain, opts CAOptions) (*CA, error) {
	if err := opts.defaults(); err != nil {
		return nil, err
	}
	ca := &CA{td: td, opts: opts}
	now := opts.Now()
	if s := opts.Static; s != nil {
		a := &authority{cert: s.Cert, chain: s.Chain, roots: s.Roots, key: s.Key}
		if err := CheckAuthority(td, a.cert, a.chain, a.roots, a.key, now); err != nil {
			return nil, err
		}
		ca.current = a
		return ca, nil
	}
	if err := ca.load(ctx); err != nil {
		return nil, err
	}
	if _, err := ca.Rotate(ctx); err != nil {
		return nil, err
	}
	return ca, nil
}

func (o *CAOptions) defaults() error {
	if o.Keys == nil {
		o.Keys = FileKeys{}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Lifetime == 0 {
		o.Lifetime = DefaultCALifetime
		if o.Upstream != nil {
			o.Lifetime = DefaultUpstreamCALifetime
		}
	}
	if o.RotateAt == 0 {
		o.RotateAt = DefaultRotateAt
	}
	switch {
	case o.Static == nil && o.Dir == "":
		return errors.New("identity: CA: no directory")
	case o.Upstream != nil && len(o.UpstreamRoots) == 0:
		return errors.New("identity: CA: an upstream needs the roots its certificates must chain to")
	case o.Lifetime < 0:
		return errors.New("identity: CA: lifetime must be positive")
	case o.RotateAt <= 0 || o.RotateAt >= 1:
		return fmt.Errorf("identity: CA: rotate_at %v: want a fraction between 0 and 1", o.RotateAt)
	}
	return nil
}

// NewKey generates an ECDSA P-256 key.
func NewKey() (crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return key, nil
}

// selfSignedRoot makes a root for td: a CA for URIs in td only (a critical
// permitted URI name constraint, which crypto/x509 enforces on every chain
// through it), signing end-entity certificates directly (path length 0).
func selfSignedRoot(td spiffeid.TrustDomain, key crypto.Signer, now time.Time, lifetime time.Duration) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber:                randomSerial(),
		Subject:                     pkix.Name{Organization: []string{"writ"}, CommonName: "writ CA " + td.Name()},
		URIs:                        []*neturl.URL{td.ID().URL()},
		NotBefore:                   now.Add(-min(time.Minute, lifetime/10)), // some clock skew, but not most of a short life
		NotAfter:                    now.Add(lifetime),
		KeyUsage:                    x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid:       true,
		IsCA:                        true,
		MaxPathLenZero:              true,
		PermittedURIDomains:         []string{td.Name()},
		PermittedDNSDomainsCritical: true, // marks the name constraints critical, as RFC 5280 asks
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return cert, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Root returns the certificate of the authority that signs now (for a
// self-signed CA, the root).
func (ca *CA) Root() *x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.current.cert
}

// Chain returns what an SVID the CA signs now carries above its leaf:
// nothing for a self-signed root, else the CA certificate and the
// intermediates above it.
func (ca *CA) Chain() []*x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	return ca.current.certs()
}

// Bundle returns the trust bundle that verifies this CA's SVIDs: the roots
// of the authority that signs now, of the prepared successor, and of
// replaced authorities whose SVIDs may still be live. It carries no
// sequence number: whoever publishes it numbers its content (the broker's
// store does, so the number survives restarts).
func (ca *CA) Bundle() *spiffebundle.Bundle {
	b := spiffebundle.FromX509Authorities(ca.td, ca.Roots())
	b.SetRefreshHint(5 * time.Minute)
	return b
}

// Roots returns the trust anchors Bundle holds, without duplicates: the
// current authority's, the prepared successor's, then the retained ones.
func (ca *CA) Roots() []*x509.Certificate {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	var out []*x509.Certificate
	add := func(c *x509.Certificate) {
		for _, have := range out {
			if have.Equal(c) {
				return
			}
		}
		out = append(out, c)
	}
	for _, c := range ca.current.roots {
		add(c)
	}
	if ca.next != nil {
		for _, c := range ca.next.roots {
			add(c)
		}
	}
	for _, r := range ca.retained {
		add(r.cert)
	}
	return out
}

// IssueX509SVID certifies pub as id for ttl (cut short at the CA's own end)
// and returns the leaf alone; IssueX509SVIDChain returns it with the
// intermediates an SVID must carry when the CA is not its own root.
func (ca *CA) IssueX509SVID(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) (*x509.Certificate, error) {
	chain, err := ca.IssueWorkloadSVIDChain(id, pub, ttl, nil)
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}

// IssueWorkloadSVID is IssueX509SVID with DNS SANs besides the URI SAN (a
// registration entry's DNS names); the first is also the subject's common
// name, as SPIRE does.
func (ca *CA) IssueWorkloadSVID(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration, dnsNames []string) (*x509.Certificate, error) {
	chain, err := ca.IssueWorkloadSVIDChain(id, pub, ttl, dnsNames)
	if err != nil {
		return nil, err
	}
	return chain[0], nil
}

// IssueX509SVIDChain is IssueX509SVID returning the leaf followed by the
// CA's intermediates: what a TLS peer or an SVID file must present.
func (ca *CA) IssueX509SVIDChain(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration) ([]*x509.Certificate, error) {
	return ca.IssueWorkloadSVIDChain(id, pub, ttl, nil)
}

// IssueWorkloadSVIDChain issues an X.509-SVID following the profile: one
// URI SAN, not a CA, digitalSignature only, usable for TLS client and
// server authentication; signed by the current authority and returned
// with its intermediates.
func (ca *CA) IssueWorkloadSVIDChain(id spiffeid.ID, pub crypto.PublicKey, ttl time.Duration, dnsNames []string) ([]*x509.Certificate, error) {
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("identity: %s is not in trust domain %s", id, ca.td)
	}
	if ttl <= 0 {
		return nil, errors.New("identity: SVID TTL must be positive")
	}
	ca.mu.RLock()
	a := ca.current
	ca.mu.RUnlock()
	now := ca.opts.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, fmt.Errorf("identity: issue SVID for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	return append([]*x509.Certificate{leaf}, a.certs()...), nil
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
	raw, err := ReadKeyFile(path)
	if err != nil {
		return nil, err
	}
	key, err := parseKey(raw)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", path, err)
	}
	return key, nil
}

// ReadKeyFile reads a key file, refusing one that group or others can read.
func ReadKeyFile(path string) ([]byte, error) {
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
	return raw, nil
}

func parseKey(raw []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("holds no PKCS#8 private key")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, errors.New("key cannot sign")
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
