package artifact

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func testBundle(t *testing.T, f *fixture) []byte {
	t.Helper()
	b := spiffebundle.New(spiffeid.RequireTrustDomainFromString("example.org"))
	b.AddX509Authority(f.svid)
	if err := b.AddJWTAuthority("jwt-1", &mustKey(t).PublicKey); err != nil {
		t.Fatal(err)
	}
	b.SetSequenceNumber(7)
	raw, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestBundleRoundTrip(t *testing.T) {
	f := newFixture(t)
	second := mustKey(t)
	secondKID := KeyID(&second.PublicKey)
	keys := KeySet{f.kid: &f.key.PublicKey, secondKID: &second.PublicKey}
	raw, err := AddToBundle(testBundle(t, f), keys)
	if err != nil {
		t.Fatal(err)
	}
	got, err := KeysFromBundle(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[f.kid].Equal(&f.key.PublicKey) || !got[secondKID].Equal(&second.PublicKey) {
		t.Fatalf("KeysFromBundle = %v", got)
	}

	// go-spiffe still reads the bundle, with its authorities intact.
	b, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), raw)
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v", err)
	}
	if len(b.X509Authorities()) != 1 || len(b.JWTAuthorities()) != 1 {
		t.Errorf("bundle has %d X.509 and %d JWT authorities, want 1 and 1", len(b.X509Authorities()), len(b.JWTAuthorities()))
	}
	if seq, ok := b.SequenceNumber(); !ok || seq != 7 {
		t.Errorf("sequence number %d %v, want 7", seq, ok)
	}

	// Adding again replaces the same kids instead of repeating them, and
	// keeps writ keys of other kids.
	raw2, err := AddToBundle(raw, KeySet{secondKID: &second.PublicKey})
	if err != nil {
		t.Fatal(err)
	}
	got, err = KeysFromBundle(raw2)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || !got[secondKID].Equal(&second.PublicKey) || !got[f.kid].Equal(&f.key.PublicKey) {
		t.Fatalf("after replacing: %v", got)
	}
	var doc struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(raw2, &doc); err != nil {
		t.Fatal(err)
	}
	if len(doc.Keys) != 4 {
		t.Errorf("bundle has %d keys, want 4 (x509-svid, jwt-svid, 2 writ)", len(doc.Keys))
	}
	for _, k := range doc.Keys {
		if k["use"] == KeyUse && (k["alg"] != "ES256" || k["kty"] != "EC" || k["crv"] != "P-256" || k["d"] != nil) {
			t.Errorf("writ JWK %v", k)
		}
	}
}

func TestAddToBundleRefuses(t *testing.T) {
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	good := &mustKey(t).PublicKey
	tests := []struct {
		name   string
		bundle string
		keys   KeySet
	}{
		{"not JSON", `{`, KeySet{"k": good}},
		{"keys not array", `{"keys":{}}`, KeySet{"k": good}},
		{"entry not object", `{"keys":[1]}`, KeySet{"k": good}},
		{"P-384 key", `{"keys":[]}`, KeySet{"k": p384.Public().(*ecdsa.PublicKey)}},
		{"nil key", `{"keys":[]}`, KeySet{"k": nil}},
		{"empty kid", `{"keys":[]}`, KeySet{"": good}},
		{"kid not the key's id", `{"keys":[]}`, KeySet{"k": good}},
	}
	for _, tt := range tests {
		if out, err := AddToBundle([]byte(tt.bundle), tt.keys); err == nil {
			t.Errorf("%s: AddToBundle = %s, want an error", tt.name, out)
		}
	}
	// A document without keys gets a keys array.
	out, err := AddToBundle([]byte(`{"spiffe_refresh_hint":60}`), KeySet{KeyID(good): good})
	if err != nil {
		t.Fatal(err)
	}
	if keys, err := KeysFromBundle(out); err != nil || len(keys) != 1 || !strings.Contains(string(out), `"spiffe_refresh_hint":60`) {
		t.Errorf("AddToBundle = %s; KeysFromBundle = %v, %v", out, keys, err)
	}
}

func TestKeysFromBundleRefuses(t *testing.T) {
	priv := mustKey(t)
	kid := KeyID(&priv.PublicKey)
	privJWK, _ := jose.JSONWebKey{Key: priv, KeyID: kid, Use: KeyUse}.MarshalJSON()
	pubJWK, _ := jose.JSONWebKey{Key: &priv.PublicKey, KeyID: kid, Use: KeyUse}.MarshalJSON()
	otherKID, _ := jose.JSONWebKey{Key: &priv.PublicKey, KeyID: "k", Use: KeyUse}.MarshalJSON()
	noKID, _ := jose.JSONWebKey{Key: &priv.PublicKey, Use: KeyUse}.MarshalJSON()
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p384JWK, _ := jose.JSONWebKey{Key: &p384.PublicKey, KeyID: "k", Use: KeyUse}.MarshalJSON()
	rsaJWK := `{"use":"writ","kid":"k","kty":"RSA","n":"AQAB","e":"AQAB"}`
	octJWK := `{"use":"writ","kid":"k","kty":"oct","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}`
	tests := map[string]string{
		"empty":           ``,
		"not an object":   `[]`,
		"no keys":         `{}`,
		"keys null":       `{"keys":null}`,
		"keys not array":  `{"keys":"x"}`,
		"entry string":    `{"keys":["x"]}`,
		"use not string":  `{"keys":[{"use":1}]}`,
		"private key":     `{"keys":[` + string(privJWK) + `]}`,
		"no kid":          `{"keys":[` + string(noKID) + `]}`,
		"P-384":           `{"keys":[` + string(p384JWK) + `]}`,
		"RSA":             `{"keys":[` + rsaJWK + `]}`,
		"symmetric":       `{"keys":[` + octJWK + `]}`,
		"duplicate kid":   `{"keys":[` + string(pubJWK) + `,` + string(pubJWK) + `]}`,
		"kid not the id":  `{"keys":[` + string(otherKID) + `]}`,
		"duplicate keys":  `{"keys":[],"keys":[]}`,
		"off-curve point": `{"keys":[{"use":"writ","kid":"k","kty":"EC","crv":"P-256","x":"` + strings.Repeat("A", 43) + `","y":"` + strings.Repeat("A", 43) + `"}]}`,
	}
	for name, doc := range tests {
		if keys, err := KeysFromBundle([]byte(doc)); err == nil {
			t.Errorf("%s: KeysFromBundle = %v, want an error", name, keys)
		}
	}
	// Other uses are ignored, even when go-jose could not use them.
	keys, err := KeysFromBundle([]byte(`{"keys":[{"use":"x509-svid","kty":"weird"},` + string(pubJWK) + `]}`))
	if err != nil || len(keys) != 1 || !keys[kid].Equal(&priv.PublicKey) {
		t.Fatalf("KeysFromBundle = %v, %v", keys, err)
	}
	if keys, err := KeysFromBundle([]byte(`{"keys":[]}`)); err != nil || len(keys) != 0 {
		t.Fatalf("empty bundle: %v, %v", keys, err)
	}
}
