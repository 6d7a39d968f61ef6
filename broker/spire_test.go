package broker

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/broker/store"
)

// TestSPIREConfigCheck: the spire section is refused, with a message that
// names the field, when it could not work: no address, a bad unix
// address, a TCP address without SPIRE's bundle, half a client identity,
// a bad trust domain or server ID, minting across trust domains, or an
// unknown ban_on state.
func TestSPIREConfigCheck(t *testing.T) {
	none := []string{}
	for _, tc := range []struct {
		name string
		cfg  SPIREConfig
		want string // "" accepted; else a substring of the error
	}{
		{"unix socket", SPIREConfig{Address: "unix:///run/spire/api.sock"}, ""},
		{"tcp with bundle", SPIREConfig{Address: "127.0.0.1:8081", Bundle: "/b.pem", TrustDomain: "spire.test"}, ""},
		{"tcp with admin SVID", SPIREConfig{Address: "127.0.0.1:8081", Bundle: "/b.pem", Cert: "/a.crt", Key: "/a.key"}, ""},
		{"ban never", SPIREConfig{Address: "unix:///s", BanOn: &none}, ""},
		{"no address", SPIREConfig{}, "spire.address is required"},
		{"unix relative", SPIREConfig{Address: "unix://host/s"}, "spire.address"},
		{"tcp without bundle", SPIREConfig{Address: "127.0.0.1:8081"}, "spire.bundle is required"},
		{"cert without key", SPIREConfig{Address: "127.0.0.1:8081", Bundle: "/b.pem", Cert: "/a.crt"}, "go together"},
		{"bad trust domain", SPIREConfig{Address: "unix:///s", TrustDomain: "Bad Domain"}, "spire.trust_domain"},
		{"server id of another domain", SPIREConfig{Address: "127.0.0.1:8081", Bundle: "/b.pem", TrustDomain: "spire.test", ServerID: "spiffe://other.test/spire/server"}, "spire.server_id"},
		{"mint across domains", SPIREConfig{Address: "unix:///s", TrustDomain: "spire.test", MintSVIDs: true}, "mint_svids"},
		{"ban on attested", SPIREConfig{Address: "unix:///s", BanOn: &[]string{"attested"}}, "spire.ban_on"},
		{"negative timeout", SPIREConfig{Address: "unix:///s", Timeout: -1}, "spire.timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.check("writ.test")
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("got %v, want an error naming %q", err, tc.want)
			}
		})
	}
}

// TestSPIREBanStates: by default every standing out of good standing
// bans; ban_on narrows it; attested never bans.
func TestSPIREBanStates(t *testing.T) {
	def := (&SPIREConfig{}).banStates()
	for _, s := range []store.NodeState{store.NodeRevoked, store.NodeFailed, store.NodeStale} {
		if !def[s] {
			t.Errorf("default ban_on lacks %s", s)
		}
	}
	if def[store.NodeAttested] {
		t.Error("an attested node would be banned")
	}
	only := (&SPIREConfig{BanOn: &[]string{"revoked"}}).banStates()
	if !only[store.NodeRevoked] || only[store.NodeFailed] || only[store.NodeStale] {
		t.Errorf("ban_on [revoked] gives %v", only)
	}
}

// TestSPIRENames: the agent the writ plugin attests and the node alias of
// a writ node, in SPIRE's trust domain.
func TestSPIRENames(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("spire.test")
	id, err := AgentID(td, "ab12")
	if err != nil || id.String() != "spiffe://spire.test/spire/agent/writ/ab12" {
		t.Fatalf("AgentID = %v, %v", id, err)
	}
	alias, err := AliasID(td, "ab12")
	if err != nil || alias.String() != "spiffe://spire.test/node/ab12" {
		t.Fatalf("AliasID = %v, %v", alias, err)
	}
	if _, err := AgentID(td, "../x"); err == nil {
		t.Fatal("AgentID took a node ID that is not a path segment")
	}
}

// TestCheckNodeCSR: SPIRE mints what a CSR names for the CSR's key, so a
// node's CSR is refused unless it is signed by the AK-certified TPM key
// and names the node alone: a CSR of another key (a stolen SVID request
// replayed with the attacker's key), of another ID, with extra names, or
// none at all.
func TestCheckNodeCSR(t *testing.T) {
	id := spiffeid.RequireFromString("spiffe://writ.test/node/ab12")
	tpmKey := newP256(t)
	other := newP256(t)
	csr := func(key *ecdsa.PrivateKey, tmpl x509.CertificateRequest) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &tmpl, key)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	uris := func(s ...string) []*url.URL {
		var out []*url.URL
		for _, v := range s {
			u, _ := url.Parse(v)
			out = append(out, u)
		}
		return out
	}
	good := csr(tpmKey, x509.CertificateRequest{URIs: uris(id.String())})
	if err := checkNodeCSR(good, id, tpmKey.Public()); err != nil {
		t.Fatalf("the node's own CSR: %v", err)
	}
	tampered := append([]byte(nil), good...)
	tampered[len(tampered)-3] ^= 0xff
	for name, der := range map[string][]byte{
		"absent":         nil,
		"another key":    csr(other, x509.CertificateRequest{URIs: uris(id.String())}),
		"another node":   csr(tpmKey, x509.CertificateRequest{URIs: uris("spiffe://writ.test/node/cd34")}),
		"two URIs":       csr(tpmKey, x509.CertificateRequest{URIs: uris(id.String(), "spiffe://writ.test/admin")}),
		"a DNS name":     csr(tpmKey, x509.CertificateRequest{URIs: uris(id.String()), DNSNames: []string{"example.org"}}),
		"bad signature":  tampered,
		"not a CSR":      []byte("not DER"),
		"another domain": csr(tpmKey, x509.CertificateRequest{URIs: uris("spiffe://spire.test/node/ab12")}),
	} {
		if err := checkNodeCSR(der, id, tpmKey.Public()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func newP256(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzCheckNodeCSR: a node's svid_csr is untrusted bytes; checkNodeCSR
// never panics, and accepts only a CSR of the given key naming the node.
func FuzzCheckNodeCSR(f *testing.F) {
	id := spiffeid.RequireFromString("spiffe://writ.test/node/ab12")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	u, _ := url.Parse(id.String())
	good, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte{})
	f.Add(good[:len(good)/2])
	f.Fuzz(func(t *testing.T, der []byte) {
		if checkNodeCSR(der, id, key.Public()) != nil {
			return
		}
		csr, err := x509.ParseCertificateRequest(der)
		if err != nil || csr.CheckSignature() != nil || !key.PublicKey.Equal(csr.PublicKey) ||
			len(csr.URIs) != 1 || csr.URIs[0].String() != id.String() {
			t.Fatalf("accepted a CSR that is not the node's: %x", der)
		}
	})
}
