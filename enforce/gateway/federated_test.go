package gateway

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/identity"
)

// TestLoadFederated: TD=FILE specs load; a malformed spec, the own trust
// domain, a domain twice and a file of another domain are refused; the
// caller bundles verify a federated member only against its own domain's
// bundle.
func TestLoadFederated(t *testing.T) {
	own := spiffeid.RequireTrustDomainFromString("writ.test")
	fed := spiffeid.RequireTrustDomainFromString("spire.test")
	dir := t.TempDir()
	for _, sub := range []string{"fed", "own"} {
		if err := os.Mkdir(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ca, err := identity.LoadOrCreateCA(filepath.Join(dir, "fed"), fed)
	if err != nil {
		t.Fatal(err)
	}
	ownCA, err := identity.LoadOrCreateCA(filepath.Join(dir, "own"), own)
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "spire.pem")
	if err := os.WriteFile(file, identity.EncodeCerts(ca.Root()), 0o644); err != nil {
		t.Fatal(err)
	}
	bundles, err := LoadFederated(own, []string{"spire.test=" + file})
	if err != nil || len(bundles) != 1 || bundles[0].TrustDomain() != fed {
		t.Fatalf("good spec: %v %v", bundles, err)
	}
	for spec, want := range map[string]string{
		"spire.test":                 "TRUST_DOMAIN=FILE",
		"spire.test=":                "TRUST_DOMAIN=FILE",
		"Spire!=" + file:             "not a trust domain",
		"writ.test=" + file:          "own trust domain",
		"other.test=" + file:         "not trust domain other.test",
		"spire.test=" + dir + "/nil": "no such file",
	} {
		if _, err := LoadFederated(own, []string{spec}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", spec, err, want)
		}
	}
	if _, err := LoadFederated(own, []string{"spire.test=" + file, "spire.test=" + file}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("twice: %v", err)
	}

	set := CallerBundles(ownCA.Bundle(), bundles)
	issue := func(ca *identity.CA, id string) error {
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ca.IssueX509SVID(spiffeid.RequireFromString(id), key.Public(), time.Hour)
		if err != nil {
			return err
		}
		_, _, err = x509svid.Verify([]*x509.Certificate{cert}, set)
		return err
	}
	if err := issue(ca, "spiffe://spire.test/w"); err != nil {
		t.Errorf("federated member: %v", err)
	}
	if err := issue(ownCA, "spiffe://writ.test/w"); err != nil {
		t.Errorf("own member: %v", err)
	}
	if err := AuthorizeMembers(own, fed)(spiffeid.RequireFromString("spiffe://other.test/w"), nil); err == nil {
		t.Error("a member of another domain authorized")
	}

	// On a Workload API: a domain the files lack comes from it, the own
	// domain never does.
	third := spiffeid.RequireTrustDomainFromString("third.test")
	thirdCA, err := identity.LoadOrCreateCA(t.TempDir(), third)
	if err != nil {
		t.Fatal(err)
	}
	rogueOwn, err := identity.LoadOrCreateCA(t.TempDir(), own)
	if err != nil {
		t.Fatal(err)
	}
	wl := x509bundle.NewSet(x509bundle.FromX509Authorities(third, []*x509.Certificate{thirdCA.Root()}),
		x509bundle.FromX509Authorities(own, []*x509.Certificate{rogueOwn.Root()}))
	src := WithWorkloadAPI(CallerBundles(ownCA.Bundle(), bundles), own, wl)
	if b, err := src.GetX509BundleForTrustDomain(third); err != nil || !b.HasX509Authority(thirdCA.Root()) {
		t.Errorf("a domain from the Workload API: %v", err)
	}
	if b, err := src.GetX509BundleForTrustDomain(own); err != nil || b.HasX509Authority(rogueOwn.Root()) {
		t.Errorf("the own domain came from the Workload API: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("none.test")); err == nil {
		t.Error("a bundle for a domain nobody serves")
	}
}
