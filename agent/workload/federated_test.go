package workload

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
)

// TestFederatedBundles (docs/adr/0033): the federated bundles the broker
// answers with reach an unmodified go-spiffe client as federated bundles
// of its X.509-SVID and in FetchX509Bundles, beside the own domain's; an
// entry that is not a bundle of its domain, or names the own domain, is
// left out.
func TestFederatedBundles(t *testing.T) {
	fedTD := spiffeid.RequireTrustDomainFromString("spire.test")
	ca, err := identity.LoadOrCreateCA(t.TempDir(), fedTD)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.LoadOrCreateCA(filepath.Join(t.TempDir()), spiffeid.RequireTrustDomainFromString("other.test"))
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	otherDoc, err := other.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	f := newFakeBroker(t)
	f.federated = map[string][]byte{"spire.test": doc, "evil.test": otherDoc, "writ.test": otherDoc, "bad name!": doc}
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	c := client(t, startServer(t, f, time.Hour))
	x509ctx, err := c.FetchX509Context(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	fb, err := x509ctx.Bundles.GetX509BundleForTrustDomain(fedTD)
	if err != nil || !fb.HasX509Authority(ca.Root()) {
		t.Fatalf("federated bundle of spire.test: %v", err)
	}
	own, err := x509ctx.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil || !own.HasX509Authority(f.ca) || own.HasX509Authority(other.Root()) {
		t.Fatalf("own bundle: %v (another domain's CA must not be in it)", err)
	}
	if x509ctx.Bundles.Len() != 2 {
		t.Fatalf("%d bundles, want the own and spire.test's", x509ctx.Bundles.Len())
	}
	bundles, err := c.FetchX509Bundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := bundles.GetX509BundleForTrustDomain(fedTD); err != nil || !b.HasX509Authority(ca.Root()) {
		t.Fatalf("FetchX509Bundles, spire.test: %v", err)
	}
	if bundles.Len() != 2 {
		t.Fatalf("FetchX509Bundles: %d bundles, want 2", bundles.Len())
	}
}
