package artifact

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"
)

// fixture is one broker key, one SVID and one action: everything a writ
// is signed with and checked against.
type fixture struct {
	key    *ecdsa.PrivateKey
	kid    string
	keys   KeySet
	svid   *x509.Certificate
	svidID string
	now    time.Time
	action *Action
	digest string
	sel    []int
	pcrs   string
}

const (
	testIssuer   = "spiffe://example.org/broker"
	testSubject  = "spiffe://example.org/workload/vectors"
	testAudience = "spiffe://example.org/node/vectors"
)

func newFixture(tb testing.TB) *fixture {
	tb.Helper()
	key := mustKey(tb)
	f := &fixture{
		key:    key,
		kid:    KeyID(&key.PublicKey),
		svidID: testSubject,
		now:    time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC),
		action: &Action{Kind: KindExec, Argv: []string{"true", "--flag"}, Path: "/usr/bin/true",
			SHA256: strings.Repeat("ab", 32), Cwd: "/", Env: map[string]string{}},
		sel: []int{0, 1, 2, 3, 4, 5, 6, 7},
	}
	f.keys = KeySet{f.kid: &key.PublicKey}
	f.svid = selfSignedSVID(tb, mustKey(tb), f.svidID)
	var err error
	if f.digest, err = f.action.Digest(); err != nil {
		tb.Fatal(err)
	}
	if f.pcrs, err = PCRDigest(testPCRValues(), f.sel); err != nil {
		tb.Fatal(err)
	}
	return f
}

// testPCRValues are fixed sha256-bank values for PCRs 0–23.
func testPCRValues() map[int][]byte {
	v := map[int][]byte{}
	for i := 0; i <= maxPCR; i++ {
		sum := sha256.Sum256([]byte(fmt.Sprintf("writ test PCR %d", i)))
		v[i] = sum[:]
	}
	return v
}

func mustKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return key
}

// selfSignedSVID makes an X.509-SVID leaf for id, self-signed by key.
func selfSignedSVID(tb testing.TB, key *ecdsa.PrivateKey, id string) *x509.Certificate {
	tb.Helper()
	return selfSignedCert(tb, key, []string{id})
}

// selfSignedCert makes a leaf like an X.509-SVID with any URI SANs.
func selfSignedCert(tb testing.TB, key *ecdsa.PrivateKey, uris []string) *x509.Certificate {
	tb.Helper()
	var us []*url.URL
	for _, id := range uris {
		u, err := url.Parse(id)
		if err != nil {
			tb.Fatal(err)
		}
		us = append(us, u)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{Organization: []string{"writ test vectors (TEST ONLY)"}},
		NotBefore:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:     time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         us,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return cert
}

// claims returns valid claims for the fixture, issued at now - 10 s.
func (f *fixture) claims() *Claims {
	t0 := f.now.Add(-10 * time.Second)
	return &Claims{
		Issuer: testIssuer, Subject: f.svidID, Audience: testAudience,
		IssuedAt: t0, NotBefore: t0, Expiry: t0.Add(DefaultLifetime),
		ID:     "0b7e3d2c-vectors",
		Action: ActionClaim{Kind: KindExec, Digest: f.digest, Display: f.action.Display()},
		Att: Attestation{Node: testAudience, Result: "result-1", PCRs: f.pcrs,
			Sel: f.sel, Policy: "default@1"},
		Cnf: Confirmation{X5TS256: Thumbprint(f.svid)},
	}
}

func (f *fixture) opts() VerifyOptions {
	return VerifyOptions{Keys: f.keys, Audience: testAudience, SVID: f.svid,
		Action: f.digest, PCRs: f.pcrs, Now: f.now}
}

func (f *fixture) sign(tb testing.TB, c *Claims) string {
	tb.Helper()
	token, err := Sign(f.key, f.kid, c)
	if err != nil {
		tb.Fatal(err)
	}
	return token
}

// signRaw builds a compact ES256 JWS by hand from any header and payload
// (JSON-encoded unless already []byte), bypassing every check of Sign.
func signRaw(tb testing.TB, key *ecdsa.PrivateKey, header, payload any) string {
	tb.Helper()
	input := b64JSON(tb, header) + "." + b64JSON(tb, payload)
	sum := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func b64JSON(tb testing.TB, v any) string {
	tb.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			tb.Fatal(err)
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// claimsMap returns the JSON claims of c as a map, to edit by hand.
func claimsMap(tb testing.TB, c *Claims) map[string]any {
	tb.Helper()
	b, err := encodeClaims(c)
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatal(err)
	}
	return m
}

// esHeader is the header Sign writes, for hand-built tokens.
func esHeader(kid string) map[string]any {
	return map[string]any{"alg": "ES256", "typ": Type, "kid": kid}
}

// hmacToken builds a compact JWS MACed with HMAC-SHA256 under secret:
// the key-confusion attack on verifiers that accept HS256.
func hmacToken(tb testing.TB, header, payload any, secret []byte) string {
	tb.Helper()
	input := b64JSON(tb, header) + "." + b64JSON(tb, payload)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(input))
	return input + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

// ecdsaSignatureValid checks a compact ES256 JWS with crypto/ecdsa alone,
// independently of the package under test.
func ecdsaSignatureValid(pub *ecdsa.PublicKey, token string) bool {
	i := strings.LastIndexByte(token, '.')
	if i < 0 {
		return false
	}
	sig, err := base64.RawURLEncoding.DecodeString(token[i+1:])
	if err != nil || len(sig) != 64 {
		return false
	}
	sum := sha256.Sum256([]byte(token[:i]))
	return ecdsa.Verify(pub, sum[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:]))
}
