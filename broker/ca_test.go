package broker

import (
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	neturl "net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/identity"
)

// withCA rewrites the test broker config in dir with a ca section.
func withCA(t *testing.T, dir, section string) {
	t.Helper()
	path := filepath.Join(dir, "broker.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(raw, []byte(section)...), 0o600); err != nil {
		t.Fatal(err)
	}
}

func servedBundle(t *testing.T, b *testBroker) *spiffebundle.Bundle {
	t.Helper()
	doc, err := b.bundleDocument()
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Parse(b.td, doc)
	if err != nil {
		t.Fatal(err)
	}
	return bundle
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestCARotationRepublishesBundle runs a broker whose self-signed CA lives
// six seconds: its successor's root is published (sequence up) before it
// signs, SVIDs of the old root verify until it is retired, and the
// sequence never goes back, across a restart too.
func TestCARotationRepublishesBundle(t *testing.T) {
	dir := t.TempDir()
	writeTestConfig(t, dir, 1, defaultRules)
	withCA(t, dir, "ca:\n  lifetime: 6s\n")
	b := newTestBrokerFrom(t, dir)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	first := b.ca.Root()
	seq1 := bundleSequence(t, b)
	key, _ := identity.NewKey()
	id := spiffeid.RequireFromString("spiffe://writ.test/w")
	old, err := b.ca.IssueX509SVIDChain(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}

	// Prepared: two roots, the old one still signs.
	waitFor(t, "the successor's root in the bundle", 10*time.Second, func() bool { return len(servedBundle(t, b).X509Authorities()) == 2 })
	seq2 := bundleSequence(t, b)
	if seq2 <= seq1 {
		t.Fatalf("sequence %d after a new root, was %d", seq2, seq1)
	}
	// Activated: the new root signs; the old SVID still verifies.
	waitFor(t, "the successor signing", 10*time.Second, func() bool { return !b.ca.Root().Equal(first) })
	fresh, err := b.ca.IssueX509SVIDChain(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bundle := servedBundle(t, b)
	if !containsCert(bundle.X509Authorities(), b.ca.Root()) {
		t.Fatal("the signing root is not in the served bundle")
	}
	if _, _, err := x509svid.Verify(fresh, bundle); err != nil {
		t.Fatalf("new SVID: %v", err)
	}
	if _, _, err := x509svid.Verify(old, bundle, x509svid.WithTime(old[0].NotAfter.Add(-time.Second))); err != nil {
		t.Fatalf("old SVID before its end: %v", err)
	}
	// Retired: the old root leaves once its SVIDs have ended.
	waitFor(t, "the old root retired", 10*time.Second, func() bool {
		return !containsCert(servedBundle(t, b).X509Authorities(), first)
	})
	seq3 := bundleSequence(t, b)
	if seq3 <= seq2 {
		t.Fatalf("sequence %d after retiring a root, was %d", seq3, seq2)
	}
	b.stop(t)

	b = newTestBrokerFrom(t, dir)
	if got := bundleSequence(t, b); got < seq3 {
		t.Fatalf("sequence %d after a restart, was %d", got, seq3)
	}
}

func newTestBrokerFrom(t *testing.T, dir string) *testBroker {
	t.Helper()
	return brokerFrom(t, dir, filepath.Join(dir, "broker.yaml"), nil)
}

// operatorPKI writes an operator's root and an intermediate for uri (a CA
// for the trust domain when uri is spiffe://writ.test) with its key, and
// returns the ca section naming them.
func operatorPKI(t *testing.T, dir, uri string) string {
	t.Helper()
	rootKey, _ := identity.NewKey()
	rootTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "operator root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true}
	rootDER, err := x509.CreateCertificate(rand.Reader, rootTmpl, rootTmpl, rootKey.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(rootDER)
	key, _ := identity.NewKey()
	u, _ := neturl.Parse(uri)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "writ intermediate"}, URIs: []*neturl.URL{u},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true, MaxPathLenZero: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root, key.Public(), rootKey)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(der)
	for name, certs := range map[string]*x509.Certificate{"inter.crt": inter, "root.crt": root} {
		if err := identity.WriteCerts(filepath.Join(dir, name), certs); err != nil {
			t.Fatal(err)
		}
	}
	if err := identity.WriteKey(filepath.Join(dir, "inter.key"), key); err != nil {
		t.Fatal(err)
	}
	return "ca:\n  cert: inter.crt\n  key: inter.key\n  roots: root.crt\n"
}

// TestOperatorIntermediate: with an operator's intermediate, the bundle is
// the operator's root alone, the bundle endpoint's TLS serves leaf +
// intermediate (a go-spiffe client with the bundle connects), and SVIDs
// carry the intermediate. An intermediate for another trust domain is
// refused with its reason code, and a key readable by others too.
func TestOperatorIntermediate(t *testing.T) {
	dir := t.TempDir()
	writeTestConfig(t, dir, 1, defaultRules)
	withCA(t, dir, operatorPKI(t, dir, "spiffe://writ.test"))
	b := newTestBrokerFrom(t, dir)
	root, err := identity.LoadCerts(filepath.Join(dir, "root.crt"))
	if err != nil {
		t.Fatal(err)
	}
	bundle := servedBundle(t, b)
	if a := bundle.X509Authorities(); len(a) != 1 || !a[0].Equal(root[0]) {
		t.Fatal("the bundle is not the operator's root alone")
	}
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", b.blis.Addr().String(), tlsconfig.TLSClientConfig(bundle, tlsconfig.AuthorizeID(identity.BrokerID(b.td))))
	if err != nil {
		t.Fatalf("TLS to the bundle endpoint with the operator's root: %v", err)
	}
	if n := len(conn.ConnectionState().PeerCertificates); n != 2 {
		t.Fatalf("the broker served %d certificates, want leaf + intermediate", n)
	}
	_ = conn.Close()
	key, _ := identity.NewKey()
	chain, err := b.ca.IssueX509SVIDChain(spiffeid.RequireFromString("spiffe://writ.test/w"), key.Public(), time.Minute)
	if err != nil || len(chain) != 2 {
		t.Fatalf("SVID chain of %d: %v", len(chain), err)
	}
	if _, _, err := x509svid.Verify(chain, bundle); err != nil {
		t.Fatal(err)
	}
	admin, err := identity.LoadCerts(filepath.Join(b.cfg.DataDir, AdminCertFile))
	if err != nil || len(admin) != 2 {
		t.Fatalf("admin SVID file holds %d certificates: %v", len(admin), err)
	}

	for name, c := range map[string]struct {
		uri, reason string
		keyMode     os.FileMode
	}{
		"foreign trust domain": {"spiffe://other.test", identity.ReasonCAWrongTrustDomain, 0o600},
		"readable key":         {"spiffe://writ.test", "", 0o644},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeTestConfig(t, dir, 1, defaultRules)
			withCA(t, dir, operatorPKI(t, dir, c.uri))
			if err := os.Chmod(filepath.Join(dir, "inter.key"), c.keyMode); err != nil {
				t.Fatal(err)
			}
			cfg, err := LoadConfig(filepath.Join(dir, "broker.yaml"), false)
			if err != nil {
				t.Fatal(err)
			}
			_, err = New(cfg, nil)
			if err == nil || identity.CAReason(err) != c.reason || (c.reason == "" && !strings.Contains(err.Error(), "must be 0600")) {
				t.Fatalf("New: %v, want reason %q", err, c.reason)
			}
		})
	}
}

// TestCAConfigRefusals: a ca section that mixes modes or lacks parts.
func TestCAConfigRefusals(t *testing.T) {
	for name, section := range map[string]string{
		"cert without roots":   "ca:\n  cert: a.crt\n  key: a.key\n",
		"cert and upstream":    "ca:\n  cert: a.crt\n  key: a.key\n  roots: r.crt\n  upstream:\n    step_ca: https://127.0.0.1:1\n    root: r.crt\n    provisioner: p\n    provisioner_key: k.jwk\n",
		"upstream over http":   "ca:\n  upstream:\n    step_ca: http://127.0.0.1:1\n    root: r.crt\n    provisioner: p\n    provisioner_key: k.jwk\n",
		"upstream without key": "ca:\n  upstream:\n    step_ca: https://127.0.0.1:1\n    root: r.crt\n    provisioner: p\n",
		"jwk and x5c":          "ca:\n  upstream:\n    step_ca: https://127.0.0.1:1\n    root: r.crt\n    provisioner: p\n    provisioner_key: k.jwk\n    provisioner_cert: c.crt\n    provisioner_cert_key: c.key\n",
		"x5c without key":      "ca:\n  upstream:\n    step_ca: https://127.0.0.1:1\n    root: r.crt\n    provisioner: p\n    provisioner_cert: c.crt\n",
		"rotate_at 1":          "ca:\n  rotate_at: 1\n",
		"static with lifetime": "ca:\n  cert: a.crt\n  key: a.key\n  roots: r.crt\n  lifetime: 1h\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			writeTestConfig(t, dir, 1, defaultRules)
			withCA(t, dir, section)
			if _, err := LoadConfig(filepath.Join(dir, "broker.yaml"), false); err == nil || !strings.Contains(err.Error(), "ca") {
				t.Fatalf("accepted: %v", err)
			}
		})
	}
}
