package stepca

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/identity"
)

var td = spiffeid.RequireTrustDomainFromString("writ.test")

func testConfig(t *testing.T) Config {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "root"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	pkey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	return Config{URL: "https://127.0.0.1:9000", Root: root, Provisioner: "writ", TrustDomain: td,
		Key: &jose.JSONWebKey{Key: pkey, KeyID: "kid-1", Algorithm: string(jose.ES256)}}
}

// TestToken: the one-time token is what step-ca's JWK provisioner checks
// (jwk.go authorizeToken, AuthorizeSign): signed by the provisioner key
// with its kid, iss = provisioner, aud = the sign URL, sub and sans = the
// trust domain's ID, a short life, a fresh jti each time.
func TestToken(t *testing.T) {
	cfg := testConfig(t)
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for range 2 {
		raw, err := c.token()
		if err != nil {
			t.Fatal(err)
		}
		tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
		if err != nil {
			t.Fatal(err)
		}
		if tok.Headers[0].KeyID != "kid-1" {
			t.Fatalf("kid %q", tok.Headers[0].KeyID)
		}
		var claims jwt.Claims
		var extra struct {
			SANs []string `json:"sans"`
		}
		if err := tok.Claims(cfg.Key.Public().Key, &claims, &extra); err != nil {
			t.Fatalf("token does not verify with the provisioner key: %v", err)
		}
		if err := claims.ValidateWithLeeway(jwt.Expected{Issuer: "writ", Subject: "spiffe://writ.test",
			AnyAudience: jwt.Audience{"https://127.0.0.1:9000/1.0/sign"}, Time: time.Now()}, 0); err != nil {
			t.Fatal(err)
		}
		if len(extra.SANs) != 1 || extra.SANs[0] != "spiffe://writ.test" {
			t.Fatalf("sans %v", extra.SANs)
		}
		if life := claims.Expiry.Time().Sub(claims.IssuedAt.Time()); life > 5*time.Minute {
			t.Fatalf("token lives %v; step-ca allows 5m", life)
		}
		if claims.ID == "" || seen[claims.ID] {
			t.Fatalf("jti %q empty or reused", claims.ID)
		}
		seen[claims.ID] = true
	}
}

func TestNewRefuses(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"plain http":  func(c *Config) { c.URL = "http://127.0.0.1:9000" },
		"no root":     func(c *Config) { c.Root = nil },
		"no name":     func(c *Config) { c.Provisioner = "" },
		"public key":  func(c *Config) { pub := c.Key.Public(); c.Key = &pub },
		"no kid":      func(c *Config) { c.Key.KeyID = "" },
		"no key":      func(c *Config) { c.Key = nil },
		"no host url": func(c *Config) { c.URL = "https://" },
	} {
		t.Run(name, func(t *testing.T) {
			cfg := testConfig(t)
			mutate(&cfg)
			if _, err := New(cfg); err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func TestParseResponseMalformed(t *testing.T) {
	for name, body := range map[string]string{
		"not json":        "<html>",
		"empty":           "{}",
		"not pem":         `{"certChain": ["garbage"]}`,
		"wrong pem type":  `{"certChain": ["-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]}`,
		"bad certificate": `{"certChain": ["-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"]}`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseResponse([]byte(body))
			if identity.CAReason(err) != ReasonMalformed {
				t.Fatalf("%v, want %s", err, ReasonMalformed)
			}
		})
	}
}

// TestX5CToken: an X5C token carries the chain in its x5c header, verifies
// with the leaf's key, and names the provisioner in the audience's
// fragment; a key that is not the leaf's is refused.
func TestX5CToken(t *testing.T) {
	cfg := testConfig(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	cfg.Key, cfg.X5C, cfg.X5CKey = nil, []*x509.Certificate{leaf}, key
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := c.token()
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseSigned(raw, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	if chains, err := tok.Headers[0].Certificates(x509.VerifyOptions{Roots: pool}); err != nil || !chains[0][0].Equal(leaf) {
		t.Fatalf("x5c header: %v", err)
	}
	var claims jwt.Claims
	if err := tok.Claims(key.Public(), &claims); err != nil {
		t.Fatalf("the token does not verify with the leaf's key: %v", err)
	}
	if len(claims.Audience) != 1 || claims.Audience[0] != "https://127.0.0.1:9000/1.0/sign#x5c/writ" {
		t.Fatalf("aud %v", claims.Audience)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	cfg.X5CKey = other
	if _, err := New(cfg); err == nil {
		t.Fatal("an X5C key that is not the certificate's was accepted")
	}
}
