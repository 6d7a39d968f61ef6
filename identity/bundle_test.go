package identity

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzParseBundle: no input makes ParseBundle panic, and whatever it
// accepts holds an X.509 authority and none of another trust domain.
func FuzzParseBundle(f *testing.F) {
	td := spiffeid.RequireTrustDomainFromString("spire.test")
	ca, err := LoadOrCreateCA(f.TempDir(), td)
	if err != nil {
		f.Fatal(err)
	}
	doc, err := ca.Bundle().Marshal()
	if err != nil {
		f.Fatal(err)
	}
	other, err := LoadOrCreateCA(f.TempDir(), spiffeid.RequireTrustDomainFromString("other.test"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(doc)
	f.Add(EncodeCerts(ca.Root()))
	f.Add(EncodeCerts(other.Root()))
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid","kty":"EC","x5c":[]}]}`))
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := ParseBundle(td, raw)
		if err != nil {
			return
		}
		if len(b.X509Authorities()) == 0 {
			t.Fatal("accepted a bundle without X.509 authorities")
		}
		if err := CheckBundleFor(td, b); err != nil {
			t.Fatalf("accepted a bundle CheckBundleFor refuses: %v", err)
		}
	})
}

// TestParseBundle: the test CA's bundle JSON and PEM root parse; another
// domain's root, an empty bundle and a private key do not.
func TestParseBundle(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("spire.test")
	ca, err := LoadOrCreateCA(t.TempDir(), td)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string][]byte{"json": doc, "pem": EncodeCerts(ca.Root())} {
		b, err := ParseBundle(td, raw)
		if err != nil || !b.HasX509Authority(ca.Root()) {
			t.Errorf("%s: %v", name, err)
		}
	}
	other, err := LoadOrCreateCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("other.test"))
	if err != nil {
		t.Fatal(err)
	}
	for name, raw := range map[string][]byte{"other domain": EncodeCerts(other.Root()), "empty": []byte(`{"keys":[]}`),
		"nothing": nil, "key": []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")} {
		if _, err := ParseBundle(td, raw); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
}
