package broker

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
)

// foreignTD is the federated trust domain of the tests.
var foreignTD = spiffeid.RequireTrustDomainFromString("spire.test")

// writeForeignCA creates a CA of td under dir and writes its bundle
// (SPIFFE bundle JSON) to dir/bundle.json and its root (PEM) to
// dir/root.pem.
func writeForeignCA(t testing.TB, dir string, td spiffeid.TrustDomain) *identity.CA {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bundle.json"), doc, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := identity.WriteCerts(filepath.Join(dir, "root.pem"), ca.Root()); err != nil {
		t.Fatal(err)
	}
	return ca
}

// federationEntry is a valid https_spiffe federation list item for
// spire.test, bootstrapped from bundle, with extra lines appended.
func federationEntry(bundle string, extra ...string) string {
	return "  - trust_domain: spire.test\n" +
		"    bundle_endpoint_url: https://127.0.0.1:8443\n" +
		"    bundle_endpoint_profile: https_spiffe\n" +
		"    endpoint_spiffe_id: spiffe://spire.test/spire/server\n" +
		"    bootstrap_bundle: " + bundle + "\n" + strings.Join(extra, "")
}

// loadWithFederation loads the test config with a federation section
// (list items) and rules.
func loadWithFederation(t *testing.T, rules, federation string) (*Config, error) {
	t.Helper()
	dir := t.TempDir()
	path := writeTestConfig(t, dir, 1, rules)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if federation != "" {
		raw = append(raw, []byte("federation:\n"+federation)...)
	}
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return LoadConfig(path, false)
}

// TestFederationConfig: every malformed federation entry is refused with
// an error naming what is wrong; a good one (bundle JSON or PEM) loads.
func TestFederationConfig(t *testing.T) {
	ca := t.TempDir()
	writeForeignCA(t, ca, foreignTD)
	otherCA := t.TempDir()
	writeForeignCA(t, otherCA, spiffeid.RequireTrustDomainFromString("other.test"))
	bundle, pem := filepath.Join(ca, "bundle.json"), filepath.Join(ca, "root.pem")
	empty := filepath.Join(t.TempDir(), "empty.json")
	if err := os.WriteFile(empty, []byte(`{"keys":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	keyPEM := filepath.Join(ca, "ca.key")
	entry := func(lines ...string) string { return "  - " + strings.Join(lines, "\n    ") + "\n" }
	for _, good := range []string{
		federationEntry(bundle),
		federationEntry(pem, "    refresh: 1s\n    max_bundle_age: 1h\n    subscribe: true\n"),
		entry("trust_domain: spire.test", "bundle_endpoint_url: https://spire.test/bundle", "bundle_endpoint_profile: https_web"),
		entry("trust_domain: spire.test", "bundle_endpoint_url: https://spire.test/bundle", "bundle_endpoint_profile: https_web", "web_pki_roots: "+pem),
	} {
		if _, err := loadWithFederation(t, defaultRules, good); err != nil {
			t.Errorf("good entry refused: %v\n%s", err, good)
		}
	}
	for _, tc := range []struct{ name, fed, want string }{
		{"unknown field", federationEntry(bundle, "    endpoint_id: x\n"), "field endpoint_id not found"},
		{"no trust domain", entry("bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web"), "trust_domain is required"},
		{"bad trust domain", entry("trust_domain: Spire.Test!", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web"), "trust_domain"},
		{"trust domain as an ID", entry("trust_domain: spiffe://spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web"), "write it as spire.test"},
		{"own trust domain", entry("trust_domain: writ.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web"), "this broker's own"},
		{"duplicate", federationEntry(bundle) + federationEntry(bundle), "also federation[0]"},
		{"no url", entry("trust_domain: spire.test", "bundle_endpoint_profile: https_web"), "bundle_endpoint_url is required"},
		{"http url", entry("trust_domain: spire.test", "bundle_endpoint_url: http://spire.test/", "bundle_endpoint_profile: https_web"), "want https"},
		{"url with user", entry("trust_domain: spire.test", "bundle_endpoint_url: https://u:p@spire.test/", "bundle_endpoint_profile: https_web"), "want https"},
		{"url without host", entry("trust_domain: spire.test", "bundle_endpoint_url: https:///x", "bundle_endpoint_profile: https_web"), "want https"},
		{"no profile", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a"), "bundle_endpoint_profile is required"},
		{"unknown profile", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https"), "want https_spiffe or https_web"},
		{"spiffe without endpoint id", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_spiffe",
			"bootstrap_bundle: "+bundle), "endpoint_spiffe_id is required"},
		{"spiffe with bad endpoint id", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_spiffe",
			"endpoint_spiffe_id: spire.test/server", "bootstrap_bundle: "+bundle), "is not a SPIFFE ID"},
		{"spiffe without bootstrap", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_spiffe",
			"endpoint_spiffe_id: spiffe://spire.test/server"), "bootstrap_bundle is required"},
		{"spiffe with web roots", federationEntry(bundle, "    web_pki_roots: "+pem+"\n"), "web_pki_roots is for https_web"},
		{"bootstrap missing", federationEntry(filepath.Join(ca, "absent.json")), "no such file"},
		{"bootstrap empty", federationEntry(empty), "no X.509 authority"},
		{"bootstrap not certificates", federationEntry(keyPEM), "want CERTIFICATE"},
		{"bootstrap of another domain", federationEntry(filepath.Join(otherCA, "bundle.json")), "not trust domain spire.test"},
		{"web with endpoint id", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web",
			"endpoint_spiffe_id: spiffe://spire.test/server"), "are for https_spiffe"},
		{"web with bootstrap", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web",
			"bootstrap_bundle: "+bundle), "are for https_spiffe"},
		{"web roots not PEM", entry("trust_domain: spire.test", "bundle_endpoint_url: https://a", "bundle_endpoint_profile: https_web",
			"web_pki_roots: "+bundle), "holds no PEM certificate"},
		{"refresh too short", federationEntry(bundle, "    refresh: 10ms\n"), "refresh must be between"},
		{"refresh too long", federationEntry(bundle, "    refresh: 25h\n"), "refresh must be between"},
		{"max age below refresh", federationEntry(bundle, "    refresh: 1h\n    max_bundle_age: 1m\n"), "max_bundle_age"},
		{"negative max age", federationEntry(bundle, "    max_bundle_age: -1m\n"), "max_bundle_age"},
	} {
		_, err := loadWithFederation(t, defaultRules, tc.fed)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

// TestFederationRuleDomains: a rule may name subjects of the broker's own
// trust domain or of a federated one, never of another; a foreign subject
// never matches a rule written for own prefixes, and an own subject never
// one for foreign prefixes.
func TestFederationRuleDomains(t *testing.T) {
	ca := t.TempDir()
	writeForeignCA(t, ca, foreignTD)
	fed := federationEntry(filepath.Join(ca, "bundle.json"))
	foreignRule := "    - subject: spiffe://spire.test/ns/*\n      kind: mcp\n      when: \"true\"\n"
	if _, err := loadWithFederation(t, foreignRule, ""); err == nil || !strings.Contains(err.Error(), "neither this broker's nor federated") {
		t.Fatalf("rule naming an unfederated domain: %v", err)
	}
	exact := "    - subject: spiffe://other.test/w\n      kind: mcp\n      when: \"true\"\n"
	if _, err := loadWithFederation(t, exact, fed); err == nil || !strings.Contains(err.Error(), "other.test") {
		t.Fatalf("exact subject of an unfederated domain: %v", err)
	}
	ownRule := "    - subject: spiffe://writ.test/ns/*\n      kind: mcp\n      when: \"true\"\n" +
		"    - subject: spiffe://writ.test/*\n      kind: http\n      when: \"true\"\n"
	cfg, err := loadWithFederation(t, foreignRule+ownRule, fed)
	if err != nil {
		t.Fatal(err)
	}
	p, err := cfg.actionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string][]bool{ // rule 0 (spire.test/ns/*), 1 (writ.test/ns/*), 2 (writ.test/*)
		"spiffe://spire.test/ns/a":      {true, false, false},
		"spiffe://writ.test/ns/a":       {false, true, true},
		"spiffe://spire.test/nsx/a":     {false, false, false},
		"spiffe://writ.test.evil/ns/a":  {false, false, false},
		"spiffe://spire.test/ns":        {false, false, false},
		"spiffe://spire.test/writ.test": {false, false, false},
	} {
		for i, r := range p {
			if got := r.matchesSubject(id); got != want[i] {
				t.Errorf("rule %d (%s) matches %s: %v, want %v", i, r.subject, id, got, want[i])
			}
		}
	}
}
