package identity

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	neturl "net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// clock is a hand-driven clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) set(t time.Time) { c.mu.Lock(); defer c.mu.Unlock(); c.t = t }

func issue(t *testing.T, ca *CA, path string, ttl time.Duration) []*x509.Certificate {
	t.Helper()
	key, err := NewKey()
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.IssueX509SVIDChain(spiffeid.RequireFromPath(td, path), key.Public(), ttl)
	if err != nil {
		t.Fatal(err)
	}
	return chain
}

func verifies(chain []*x509.Certificate, ca *CA, at time.Time) error {
	_, _, err := x509svid.Verify(chain, ca.Bundle(), x509svid.WithTime(at))
	return err
}

// TestSelfSignedRotation drives a self-signed CA through prepare, activate
// and retire with a hand clock, and checks at each step what the bundle
// holds, who signs, and that SVIDs of the old root verify until they end.
func TestSelfSignedRotation(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := &clock{t: start}
	open := func() *CA {
		t.Helper()
		ca, err := OpenCA(context.Background(), td, CAOptions{Dir: dir, Lifetime: 100 * time.Hour, Now: clk.now})
		if err != nil {
			t.Fatal(err)
		}
		return ca
	}
	ca := open()
	first := ca.Root()
	if len(ca.Roots()) != 1 {
		t.Fatalf("a new CA's bundle holds %d roots", len(ca.Roots()))
	}
	// Before half its life: nothing to do.
	clk.set(start.Add(40 * time.Hour))
	if changed, err := ca.Rotate(context.Background()); err != nil || changed {
		t.Fatalf("rotate before half life: changed %v, err %v", changed, err)
	}
	old := issue(t, ca, "/w/old", 50*time.Hour)

	// Prepare: the successor's root is published, the old key still signs.
	clk.set(start.Add(51 * time.Hour))
	if changed, err := ca.Rotate(context.Background()); err != nil || !changed {
		t.Fatalf("prepare: changed %v, err %v", changed, err)
	}
	if len(ca.Roots()) != 2 || !ca.Root().Equal(first) {
		t.Fatalf("after prepare: %d roots, signer changed %v", len(ca.Roots()), !ca.Root().Equal(first))
	}
	if _, err := os.Stat(filepath.Join(dir, CANextKeyFile)); err != nil {
		t.Fatalf("prepared key not persisted: %v", err)
	}
	// A restart keeps the prepared successor.
	ca = open()
	if len(ca.Roots()) != 2 || !ca.Root().Equal(first) {
		t.Fatalf("after restart: %d roots", len(ca.Roots()))
	}

	// Activate: the successor signs; the old root stays for the old SVID.
	clk.set(start.Add(76 * time.Hour))
	if _, err := ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ca.Root().Equal(first) || len(ca.Roots()) != 2 {
		t.Fatalf("after activate: signer unchanged %v, %d roots", ca.Root().Equal(first), len(ca.Roots()))
	}
	fresh := issue(t, ca, "/w/new", time.Hour)
	if fresh[0].CheckSignatureFrom(ca.Root()) != nil || fresh[0].CheckSignatureFrom(first) == nil {
		t.Fatal("a new SVID was signed by the replaced root")
	}
	for name, chain := range map[string][]*x509.Certificate{"old": old, "new": fresh} {
		if err := verifies(chain, ca, clk.now()); err != nil {
			t.Fatalf("%s SVID does not verify after activation: %v", name, err)
		}
	}
	// A restart keeps the retained root.
	ca = open()
	if len(ca.Roots()) != 2 {
		t.Fatalf("after restart: %d roots, want the retained one too", len(ca.Roots()))
	}

	// Retire: once the old root's last possible SVID ended (its own end).
	clk.set(first.NotAfter.Add(time.Second))
	if changed, err := ca.Rotate(context.Background()); err != nil || !changed {
		t.Fatalf("retire: changed %v, err %v", changed, err)
	}
	if len(ca.Roots()) != 1 || !ca.Roots()[0].Equal(ca.Root()) {
		t.Fatalf("after retire: %d roots", len(ca.Roots()))
	}
	if err := verifies(old, ca, old[0].NotAfter.Add(-time.Minute)); err == nil {
		t.Fatal("an SVID of the retired root still verifies against the bundle")
	}
}

// TestExpiredCAReplacedAtOnce: a broker down past its CA's end replaces it
// when it opens.
func TestExpiredCAReplacedAtOnce(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	ca, err := OpenCA(context.Background(), td, CAOptions{Dir: dir, Lifetime: time.Hour, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	first := ca.Root()
	clk.set(first.NotAfter.Add(time.Hour))
	again, err := OpenCA(context.Background(), td, CAOptions{Dir: dir, Lifetime: time.Hour, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	if again.Root().Equal(first) || len(again.Roots()) != 1 {
		t.Fatalf("expired CA kept: same %v, %d roots", again.Root().Equal(first), len(again.Roots()))
	}
	if err := verifies(issue(t, again, "/w", time.Minute), again, clk.now()); err != nil {
		t.Fatal(err)
	}
}

// TestNameConstraintRefusesForeignSVID: the self-created root permits URIs
// of its trust domain only, and crypto/x509 enforces it. An SVID for
// another trust domain, signed with the root's own key, fails to verify.
func TestNameConstraintRefusesForeignSVID(t *testing.T) {
	dir := t.TempDir()
	ca, err := LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	root := ca.Root()
	if len(root.PermittedURIDomains) != 1 || root.PermittedURIDomains[0] != td.Name() {
		t.Fatalf("root constraints: %v", root.PermittedURIDomains)
	}
	key, _ := NewKey()
	mint := func(uri string) *x509.Certificate {
		u, _ := neturl.Parse(uri)
		tmpl := &x509.Certificate{SerialNumber: randomSerial(), URIs: []*neturl.URL{u},
			NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), ca.current.key)
		if err != nil {
			t.Fatal(err)
		}
		c, _ := x509.ParseCertificate(der)
		return c
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	opts := x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}
	if _, err := mint("spiffe://writ.test/w").Verify(opts); err != nil {
		t.Fatalf("an SVID inside the trust domain fails: %v", err)
	}
	_, err = mint("spiffe://evil.test/w").Verify(opts)
	var inv x509.CertificateInvalidError
	if !errors.As(err, &inv) || inv.Reason != x509.CANotAuthorizedForThisName {
		t.Fatalf("an SVID of evil.test under the writ.test root: %v", err)
	}
}

// pki is an operator's PKI for static and upstream tests: a root (with
// optional constraints) and intermediates signed by it.
type pki struct {
	root    *x509.Certificate
	rootKey crypto.Signer
}

func newPKI(t *testing.T, permitted, excluded []string) *pki {
	t.Helper()
	key, _ := NewKey()
	tmpl := &x509.Certificate{SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
		PermittedURIDomains: permitted, ExcludedURIDomains: excluded}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &pki{root: root, rootKey: key}
}

func (p *pki) intermediate(t *testing.T, pub crypto.PublicKey, uri string, isCA bool) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: "writ intermediate"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(12 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: isCA, MaxPathLenZero: isCA}
	if !isCA {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	if uri != "" {
		u, _ := neturl.Parse(uri)
		tmpl.URIs = []*neturl.URL{u}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, pub, p.rootKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

// TestStaticIntermediate: an operator's intermediate signs SVIDs that
// carry it and verify against a bundle holding only the root; each bad
// configuration is refused with its reason code.
func TestStaticIntermediate(t *testing.T) {
	p := newPKI(t, nil, nil)
	key, _ := NewKey()
	inter := p.intermediate(t, key.Public(), "spiffe://writ.test", true)
	ca, err := OpenCA(context.Background(), td, CAOptions{Static: &StaticCA{Cert: inter, Roots: []*x509.Certificate{p.root}, Key: key}})
	if err != nil {
		t.Fatal(err)
	}
	chain := issue(t, ca, "/w", time.Hour)
	if len(chain) != 2 || !chain[1].Equal(inter) {
		t.Fatalf("SVID chain has %d certificates, want leaf + intermediate", len(chain))
	}
	if roots := ca.Bundle().X509Authorities(); len(roots) != 1 || !roots[0].Equal(p.root) {
		t.Fatal("the bundle does not hold exactly the root")
	}
	if id, _, err := x509svid.Verify(chain, ca.Bundle()); err != nil || id.Path() != "/w" {
		t.Fatalf("x509svid.Verify: %v %v", id, err)
	}
	if _, _, err := x509svid.Verify(chain[:1], ca.Bundle()); err == nil {
		t.Fatal("a leaf without its intermediate verified")
	}
	if changed, err := ca.Rotate(context.Background()); err != nil || changed {
		t.Fatalf("a static CA rotated: %v %v", changed, err)
	}

	otherKey, _ := NewKey()
	foreign := newPKI(t, nil, nil)
	constrained := newPKI(t, []string{"other.test"}, nil)
	excluding := newPKI(t, nil, []string{".test"})
	constrainedKey, _ := NewKey()
	for _, c := range []struct {
		name   string
		s      StaticCA
		reason string
	}{
		{"leaf certificate", StaticCA{Cert: p.intermediate(t, key.Public(), "", false), Roots: []*x509.Certificate{p.root}, Key: key}, ReasonCANotCA},
		{"other trust domain", StaticCA{Cert: p.intermediate(t, key.Public(), "spiffe://other.test", true), Roots: []*x509.Certificate{p.root}, Key: key}, ReasonCAWrongTrustDomain},
		{"path in URI", StaticCA{Cert: p.intermediate(t, key.Public(), "spiffe://writ.test/ca", true), Roots: []*x509.Certificate{p.root}, Key: key}, ReasonCAWrongTrustDomain},
		{"wrong key", StaticCA{Cert: inter, Roots: []*x509.Certificate{p.root}, Key: otherKey}, ReasonCAKeyMismatch},
		{"foreign root", StaticCA{Cert: inter, Roots: []*x509.Certificate{foreign.root}, Key: key}, ReasonCAChainInvalid},
		{"no roots", StaticCA{Cert: inter, Key: key}, ReasonCAChainInvalid},
		{"root permits another domain", StaticCA{Cert: constrained.intermediate(t, constrainedKey.Public(), "", true), Roots: []*x509.Certificate{constrained.root}, Key: constrainedKey}, ReasonCANameConstraints},
		{"root permits another domain, URI SAN", StaticCA{Cert: constrained.intermediate(t, constrainedKey.Public(), "spiffe://writ.test", true), Roots: []*x509.Certificate{constrained.root}, Key: constrainedKey}, ReasonCANameConstraints},
		{"root excludes the domain", StaticCA{Cert: excluding.intermediate(t, constrainedKey.Public(), "", true), Roots: []*x509.Certificate{excluding.root}, Key: constrainedKey}, ReasonCANameConstraints},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := c.s
			_, err := OpenCA(context.Background(), td, CAOptions{Static: &s})
			if got := CAReason(err); got != c.reason {
				t.Fatalf("reason %q (%v), want %q", got, err, c.reason)
			}
		})
	}
}

// fakeUpstream is a hand-written upstream: an operator PKI that signs
// whatever CSR it gets with the template it is given (a unit fake; the
// real step-ca runs in test/).
type fakeUpstream struct {
	p     *pki
	uri   string
	calls int
	fail  error
}

func (u *fakeUpstream) SignCA(_ context.Context, csrDER []byte, lifetime time.Duration) ([]*x509.Certificate, error) {
	u.calls++
	if u.fail != nil {
		return nil, u.fail
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: randomSerial(), Subject: csr.Subject,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(lifetime),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true}
	if u.uri != "" {
		v, _ := neturl.Parse(u.uri)
		tmpl.URIs = []*neturl.URL{v}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, u.p.root, csr.PublicKey, u.p.rootKey)
	if err != nil {
		return nil, err
	}
	c, _ := x509.ParseCertificate(der)
	return []*x509.Certificate{c, u.p.root}, nil
}

// TestUpstreamIntermediate: an upstream's intermediate is checked like a
// static one, persisted, and replaced before it ends; the bundle holds the
// configured root throughout.
func TestUpstreamIntermediate(t *testing.T) {
	p := newPKI(t, nil, nil)
	up := &fakeUpstream{p: p, uri: "spiffe://writ.test"}
	dir := t.TempDir()
	clk := &clock{t: time.Now()}
	opts := CAOptions{Dir: dir, Upstream: up, UpstreamRoots: []*x509.Certificate{p.root}, Lifetime: time.Hour, Now: clk.now}
	ca, err := OpenCA(context.Background(), td, opts)
	if err != nil {
		t.Fatal(err)
	}
	first := ca.Root()
	chain := issue(t, ca, "/w", time.Hour)
	if len(chain) != 2 {
		t.Fatalf("chain of %d, want leaf + intermediate (the root is dropped)", len(chain))
	}
	if err := verifies(chain, ca, clk.now()); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenCA(context.Background(), td, opts); err != nil || up.calls != 1 {
		t.Fatalf("reopen asked the upstream again (%d calls) or failed: %v", up.calls, err)
	}
	clk.set(first.NotBefore.Add(31 * time.Minute))
	if changed, err := ca.Rotate(context.Background()); err != nil || changed || up.calls != 2 {
		t.Fatalf("prepare: bundle changed %v (same root: it must not), calls %d, err %v", changed, up.calls, err)
	}
	clk.set(first.NotBefore.Add(46 * time.Minute))
	if _, err := ca.Rotate(context.Background()); err != nil || ca.Root().Equal(first) {
		t.Fatalf("activate: %v", err)
	}
	if err := verifies(chain, ca, clk.now()); err != nil {
		t.Fatalf("the old intermediate's SVID no longer verifies: %v", err)
	}

	// An upstream that certifies another trust domain, or fails, is refused
	// and nothing is written.
	for name, u := range map[string]*fakeUpstream{
		"foreign trust domain": {p: p, uri: "spiffe://other.test"},
		"foreign root":         {p: newPKI(t, nil, nil), uri: "spiffe://writ.test"},
		"error":                {p: p, fail: errors.New("unauthorized")},
	} {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			_, err := OpenCA(context.Background(), td, CAOptions{Dir: d, Upstream: u, UpstreamRoots: []*x509.Certificate{p.root}})
			if err == nil {
				t.Fatal("accepted")
			}
			if _, err := os.Stat(filepath.Join(d, CAKeyFile)); err == nil {
				t.Fatal("a refused CA was written")
			}
		})
	}
}

// TestUpstreamFailureKeepsSigning: a successor the upstream does not sign
// is retried; meanwhile the current intermediate signs and nothing about
// the bundle or the files changes.
func TestUpstreamFailureKeepsSigning(t *testing.T) {
	p := newPKI(t, nil, nil)
	up := &fakeUpstream{p: p, uri: "spiffe://writ.test"}
	dir := t.TempDir()
	clk := &clock{t: time.Now()}
	ca, err := OpenCA(context.Background(), td, CAOptions{Dir: dir, Upstream: up, UpstreamRoots: []*x509.Certificate{p.root}, Lifetime: time.Hour, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	first := ca.Root()
	up.fail = errors.New("step-ca down")
	clk.set(first.NotBefore.Add(50 * time.Minute)) // past prepare and activate
	if _, err := ca.Rotate(context.Background()); err == nil {
		t.Fatal("a failed upstream went unreported")
	}
	if !ca.Root().Equal(first) {
		t.Fatal("the signer changed although no successor was made")
	}
	if _, err := os.Stat(filepath.Join(dir, CANextKeyFile)); err == nil {
		t.Fatal("a successor key was kept although the upstream refused")
	}
	if err := verifies(issue(t, ca, "/w", time.Minute), ca, clk.now()); err != nil {
		t.Fatalf("the current intermediate stopped signing: %v", err)
	}
	up.fail = nil
	if _, err := ca.Rotate(context.Background()); err != nil || ca.Root().Equal(first) {
		t.Fatalf("retry: %v (replaced %v)", err, !ca.Root().Equal(first))
	}
}

// TestActivationCutShort: a crash after the successor's certificate moved
// but before its key did is finished when the CA opens again.
func TestActivationCutShort(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	opts := CAOptions{Dir: dir, Lifetime: 100 * time.Hour, Now: clk.now}
	ca, err := OpenCA(context.Background(), td, opts)
	if err != nil {
		t.Fatal(err)
	}
	clk.set(clk.now().Add(60 * time.Hour))
	if _, err := ca.Rotate(context.Background()); err != nil || ca.next == nil {
		t.Fatalf("prepare: %v", err)
	}
	next := ca.next.cert
	if err := os.Rename(filepath.Join(dir, CANextCertFile), filepath.Join(dir, CACertFile)); err != nil {
		t.Fatal(err)
	}
	again, err := OpenCA(context.Background(), td, opts)
	if err != nil {
		t.Fatalf("open after a cut-short activation: %v", err)
	}
	if !again.Root().Equal(next) {
		t.Fatal("the successor is not the signer")
	}
	if _, err := os.Stat(filepath.Join(dir, CANextKeyFile)); err == nil {
		t.Fatal("the successor's key was left behind")
	}
}
