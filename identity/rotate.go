package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	neturl "net/url"
	"os"
	"path/filepath"
	"time"
)

// Rotation (docs/adr/0035). An authority goes through three steps, each
// persisted in the CA's directory before it takes effect:
//
//   - prepare, once RotateAt of the current authority's lifetime has
//     passed: a successor is made (self-signed, or signed by the
//     upstream), checked, written to ca.next.*, and its roots join the
//     bundle, so that relying parties learn them before anything they
//     sign is presented;
//   - activate, halfway between preparing and the current authority's
//     end: the successor signs from now on; the replaced authority's
//     roots, when the successor does not share them, are retained until
//     its certificate's end, which no SVID it signed outlives (issuance
//     cuts an SVID short at its CA's end);
//   - retire: a retained root leaves the bundle once that time has passed.
//
// An authority found expired (a broker that was down) is replaced at
// once: prepare and activate in one step.

// retainedFile is ca.retained.json: the roots kept after their authority
// was replaced.
type retainedFile struct {
	Roots []retainedJSON `json:"roots"`
}

type retainedJSON struct {
	Cert  []byte    `json:"cert"` // DER
	Until time.Time `json:"until"`
}

// Rotate moves the CA along its lifecycle at the CA's clock: it retires,
// prepares and activates as due. It reports whether the bundle's roots
// changed, so the caller republishes it. A static CA is never rotated.
func (ca *CA) Rotate(ctx context.Context) (bool, error) {
	if ca.opts.Static != nil {
		return false, nil
	}
	ca.rotateMu.Lock()
	defer ca.rotateMu.Unlock()
	now := ca.opts.Now()
	before := ca.Roots()
	ca.mu.Lock()
	replaced := ca.replaced
	ca.replaced = nil
	ca.mu.Unlock()
	ca.release(replaced)

	if err := ca.retire(now); err != nil {
		return false, err
	}
	ca.mu.RLock()
	cur, next := ca.current, ca.next
	ca.mu.RUnlock()
	if next == nil && !now.Before(ca.prepareAt(cur)) {
		if err := ca.prepare(ctx, now); err != nil {
			return rootsChanged(before, ca.Roots()), err
		}
	}
	ca.mu.RLock()
	next = ca.next
	ca.mu.RUnlock()
	if next != nil && !now.Before(ca.activateAt(cur)) {
		if err := ca.activate(now); err != nil {
			return rootsChanged(before, ca.Roots()), err
		}
	}
	return rootsChanged(before, ca.Roots()), nil
}

// NextRotation returns when Rotate next has something to do (prepare,
// activate or retire), for a caller that schedules it.
func (ca *CA) NextRotation() time.Time {
	ca.mu.RLock()
	defer ca.mu.RUnlock()
	if ca.opts.Static != nil {
		return time.Time{}
	}
	at := ca.prepareAt(ca.current)
	if ca.next != nil {
		at = ca.activateAt(ca.current)
	}
	for _, r := range ca.retained {
		if r.until.Before(at) {
			at = r.until
		}
	}
	return at
}

func (ca *CA) prepareAt(a *authority) time.Time {
	life := a.cert.NotAfter.Sub(a.cert.NotBefore)
	return a.cert.NotBefore.Add(time.Duration(float64(life) * ca.opts.RotateAt))
}

func (ca *CA) activateAt(a *authority) time.Time {
	life := a.cert.NotAfter.Sub(a.cert.NotBefore)
	frac := ca.opts.RotateAt + (1-ca.opts.RotateAt)/2
	at := a.cert.NotBefore.Add(time.Duration(float64(life) * frac))
	// An expired authority is replaced at once.
	if a.cert.NotAfter.Before(at) {
		return a.cert.NotAfter
	}
	return at
}

func rootsChanged(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return true
	}
	for i := range a {
		if !a[i].Equal(b[i]) {
			return true
		}
	}
	return false
}

// retire drops the retained roots whose last SVID has expired.
func (ca *CA) retire(now time.Time) error {
	ca.mu.RLock()
	var keep []retainedRoot
	for _, r := range ca.retained {
		if now.Before(r.until) {
			keep = append(keep, r)
		}
	}
	n := len(ca.retained)
	ca.mu.RUnlock()
	if len(keep) == n {
		return nil
	}
	if err := ca.writeRetained(keep); err != nil {
		return err
	}
	ca.mu.Lock()
	ca.retained = keep
	ca.mu.Unlock()
	return nil
}

// prepare makes the successor and writes it to ca.next.*; from then on
// Bundle holds its roots.
func (ca *CA) prepare(ctx context.Context, now time.Time) error {
	a, stored, err := ca.mint(ctx, now)
	if err != nil {
		return err
	}
	if err := ca.writeAuthority(CANextKeyFile, CANextCertFile, a, stored); err != nil {
		return err
	}
	ca.mu.Lock()
	ca.next = a
	ca.mu.Unlock()
	return nil
}

// activate makes the prepared successor the signing authority. The
// replaced authority's roots that the successor does not share are
// retained first, then the files move: the certificate, then the key (a
// crash between the two is finished by load).
func (ca *CA) activate(now time.Time) error {
	ca.mu.RLock()
	cur, next := ca.current, ca.next
	retained := append([]retainedRoot(nil), ca.retained...)
	ca.mu.RUnlock()
	for _, r := range cur.roots {
		if !containsCert(next.roots, r) && !retainedHas(retained, r) && now.Before(cur.cert.NotAfter) {
			retained = append(retained, retainedRoot{cert: r, until: cur.cert.NotAfter})
		}
	}
	if err := ca.writeRetained(retained); err != nil {
		return err
	}
	if err := os.Rename(ca.path(CANextCertFile), ca.path(CACertFile)); err != nil {
		return fmt.Errorf("identity: activate CA: %w", err)
	}
	if err := os.Rename(ca.path(CANextKeyFile), ca.path(CAKeyFile)); err != nil {
		return fmt.Errorf("identity: activate CA: %w", err)
	}
	ca.mu.Lock()
	ca.current, ca.next, ca.retained, ca.replaced = next, nil, retained, cur.key
	ca.mu.Unlock()
	return nil
}

// release gives a key back to a KeyReleaser key store.
func (ca *CA) release(key crypto.Signer) {
	if r, ok := ca.opts.Keys.(KeyReleaser); ok && key != nil {
		r.Release(key)
	}
}

// mint makes a new authority: a key from the key store, certified by
// itself or by the upstream, and checked.
func (ca *CA) mint(ctx context.Context, now time.Time) (*authority, []byte, error) {
	key, stored, err := ca.opts.Keys.Generate()
	if err != nil {
		return nil, nil, fmt.Errorf("identity: CA key: %w", err)
	}
	a := &authority{key: key}
	a, err = ca.certify(ctx, a, now)
	if err != nil {
		ca.release(key)
		return nil, nil, err
	}
	return a, stored, nil
}

// certify has a's key certified, by itself or the upstream, and checks
// the result.
func (ca *CA) certify(ctx context.Context, a *authority, now time.Time) (*authority, error) {
	key := a.key
	var err error
	if ca.opts.Upstream == nil {
		if a.cert, err = selfSignedRoot(ca.td, key, now, ca.opts.Lifetime); err != nil {
			return nil, err
		}
		a.roots = []*x509.Certificate{a.cert}
	} else {
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
			// No common name: step-ca refuses one that is not the token's
			// subject or a SAN; the upstream's template names the subject.
			Subject: pkix.Name{Organization: []string{"writ"}},
			URIs:    []*neturl.URL{ca.td.ID().URL()},
		}, key)
		if err != nil {
			return nil, fmt.Errorf("identity: CA request: %w", err)
		}
		certs, err := ca.opts.Upstream.SignCA(ctx, csr, ca.opts.Lifetime)
		if err != nil {
			return nil, fmt.Errorf("identity: upstream: %w", err)
		}
		if len(certs) == 0 {
			return nil, caErr(ReasonCAChainInvalid, "the upstream returned no certificate")
		}
		a.cert, a.roots = certs[0], ca.opts.UpstreamRoots
		for _, c := range certs[1:] {
			if !containsCert(a.roots, c) { // an upstream may append its root: the bundle has it already
				a.chain = append(a.chain, c)
			}
		}
	}
	if err := CheckAuthority(ca.td, a.cert, a.chain, a.roots, a.key, now); err != nil {
		return nil, err
	}
	return a, nil
}

// load reads the CA's files: the current authority (made when there is
// none), a prepared successor, the retained roots. Each authority is
// checked but for its validity period: an expired one is replaced by the
// Rotate that follows.
func (ca *CA) load(ctx context.Context) error {
	if err := os.MkdirAll(ca.opts.Dir, 0o700); err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	ca.finishActivation()
	cur, err := ca.readAuthority(CAKeyFile, CACertFile)
	if errors.Is(err, fs.ErrNotExist) {
		a, stored, err := ca.mint(ctx, ca.opts.Now())
		if err != nil {
			return err
		}
		if err := ca.writeAuthority(CAKeyFile, CACertFile, a, stored); err != nil {
			return err
		}
		cur = a
	} else if err != nil {
		return err
	}
	ca.current = cur
	next, err := ca.readAuthority(CANextKeyFile, CANextCertFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("identity: prepared CA: %w", err)
	default:
		ca.next = next
	}
	return ca.readRetained()
}

// finishActivation completes an activation cut short between moving the
// certificate and moving the key.
func (ca *CA) finishActivation() {
	if _, err := os.Stat(ca.path(CANextCertFile)); err == nil {
		return // not begun: ca.next.* is a prepared successor
	}
	if _, err := os.Stat(ca.path(CANextKeyFile)); err != nil {
		return
	}
	// ca.crt is the successor's already when its key is ca.next.key.
	certs, err := LoadCerts(ca.path(CACertFile))
	if err != nil {
		return
	}
	raw, err := ReadKeyFile(ca.path(CANextKeyFile))
	if err != nil {
		return
	}
	if key, err := ca.opts.Keys.Load(raw); err == nil && publicKeysEqual(certs[0].PublicKey, key.Public()) {
		_ = os.Rename(ca.path(CANextKeyFile), ca.path(CAKeyFile))
	}
}

func (ca *CA) readAuthority(keyFile, certFile string) (*authority, error) {
	keyPath, certPath := ca.path(keyFile), ca.path(certFile)
	if _, err := os.Stat(keyPath); err != nil {
		return nil, err // fs.ErrNotExist: none
	}
	raw, err := ReadKeyFile(keyPath)
	if err != nil {
		return nil, err
	}
	key, err := ca.opts.Keys.Load(raw)
	if err != nil {
		return nil, fmt.Errorf("identity: %s: %w", keyPath, err)
	}
	a, err := ca.checkLoaded(key, keyPath, certPath)
	if err != nil {
		ca.release(key)
		return nil, err
	}
	return a, nil
}

func (ca *CA) checkLoaded(key crypto.Signer, keyPath, certPath string) (*authority, error) {
	certs, err := LoadCerts(certPath)
	if err != nil {
		return nil, err
	}
	a := &authority{cert: certs[0], chain: certs[1:], key: key, roots: ca.opts.UpstreamRoots}
	if ca.opts.Upstream == nil {
		a.roots = []*x509.Certificate{a.cert}
		if len(a.chain) > 0 || !isSelfSigned(a.cert) {
			return nil, fmt.Errorf("identity: %s is not a self-signed root; this broker is configured without an upstream", certPath)
		}
	}
	// Checked at a time the whole chain was valid, not now: an expired
	// authority is replaced by the Rotate that follows, not refused.
	at := a.cert.NotBefore
	for _, c := range a.chain {
		if c.NotBefore.After(at) {
			at = c.NotBefore
		}
	}
	if err := CheckAuthority(ca.td, a.cert, a.chain, a.roots, a.key, at); err != nil {
		if CAReason(err) == ReasonCAKeyMismatch {
			return nil, fmt.Errorf("identity: %s does not hold the key of %s: %w", keyPath, certPath, err)
		}
		return nil, fmt.Errorf("identity: CA in %s: %w", certPath, err)
	}
	return a, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func (ca *CA) writeAuthority(keyFile, certFile string, a *authority, stored []byte) error {
	if err := WriteFile(ca.path(keyFile), stored, 0o600); err != nil {
		return err
	}
	return WriteCerts(ca.path(certFile), append([]*x509.Certificate{a.cert}, a.chain...)...)
}

func (ca *CA) readRetained() error {
	raw, err := os.ReadFile(ca.path(CARetainedFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	var f retainedFile
	if err := json.Unmarshal(raw, &f); err != nil {
		return fmt.Errorf("identity: %s: %w", CARetainedFile, err)
	}
	for _, r := range f.Roots {
		c, err := x509.ParseCertificate(r.Cert)
		if err != nil {
			return fmt.Errorf("identity: %s: %w", CARetainedFile, err)
		}
		ca.retained = append(ca.retained, retainedRoot{cert: c, until: r.Until})
	}
	return nil
}

func (ca *CA) writeRetained(roots []retainedRoot) error {
	f := retainedFile{Roots: []retainedJSON{}}
	for _, r := range roots {
		f.Roots = append(f.Roots, retainedJSON{Cert: r.cert.Raw, Until: r.until.UTC()})
	}
	raw, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("identity: %w", err)
	}
	return WriteFile(ca.path(CARetainedFile), raw, 0o644)
}

func (ca *CA) path(name string) string { return filepath.Join(ca.opts.Dir, name) }

func containsCert(certs []*x509.Certificate, c *x509.Certificate) bool {
	for _, have := range certs {
		if have.Equal(c) {
			return true
		}
	}
	return false
}

func retainedHas(rs []retainedRoot, c *x509.Certificate) bool {
	for _, r := range rs {
		if r.cert.Equal(c) {
			return true
		}
	}
	return false
}
