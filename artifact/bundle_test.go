package artifact

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

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

// TestPlainBundle: the bundle for SPIFFE clients keeps exactly the
// x509-svid and jwt-svid entries and the other members, and the writ keys
// come out as a JWK set of their own.
func TestPlainBundle(t *testing.T) {
	f := newFixture(t)
	combined, err := AddToBundle(testBundle(t, f), f.keys)
	if err != nil {
		t.Fatal(err)
	}
	whole, err := spiffebundle.Parse(spiffeid.RequireTrustDomainFromString("example.org"), combined)
	if err != nil {
		t.Fatal(err)
	}
	// Entries of other uses, or none, leave too: "Writ" is not "writ".
	var doc map[string]any
	if err := json.Unmarshal(combined, &doc); err != nil {
		t.Fatal(err)
	}
	doc["spiffe_refresh_hint"] = 60
	doc["keys"] = append(doc["keys"].([]any),
		map[string]any{"use": "Writ", "kty": "EC"}, map[string]any{"use": "sig", "kty": "EC"}, map[string]any{"kty": "EC"})
	if combined, err = json.Marshal(doc); err != nil {
		t.Fatal(err)
	}

	plain, err := PlainBundle(combined)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Keys     []map[string]any `json:"keys"`
		Sequence uint64           `json:"spiffe_sequence"`
		Hint     int              `json:"spiffe_refresh_hint"`
	}
	if err := json.Unmarshal(plain, &out); err != nil {
		t.Fatal(err)
	}
	if len(out.Keys) != 2 || out.Keys[0]["use"] != "x509-svid" || out.Keys[1]["use"] != "jwt-svid" || out.Sequence != 7 || out.Hint != 60 {
		t.Fatalf("PlainBundle = %s", plain)
	}
	td := spiffeid.RequireTrustDomainFromString("example.org")
	b, err := spiffebundle.Parse(td, plain)
	if err != nil {
		t.Fatalf("spiffebundle.Parse: %v", err)
	}
	whole.SetRefreshHint(60 * time.Second)
	if !b.Equal(whole) {
		t.Errorf("the plain bundle's SPIFFE content differs from the combined bundle's")
	}
	if keys, err := KeysFromBundle(plain); err != nil || len(keys) != 0 {
		t.Errorf("writ keys in the plain bundle: %v, %v", keys, err)
	}

	kd, err := KeysDocument(combined)
	if err != nil {
		t.Fatal(err)
	}
	var set map[string][]map[string]any
	if err := json.Unmarshal(kd, &set); err != nil {
		t.Fatal(err)
	}
	if len(set) != 1 || len(set["keys"]) != 1 || set["keys"][0]["use"] != KeyUse || set["keys"][0]["kid"] != f.kid {
		t.Fatalf("KeysDocument = %s", kd)
	}
	if keys, err := KeysFromBundle(kd); err != nil || len(keys) != 1 || !keys[f.kid].Equal(&f.key.PublicKey) {
		t.Fatalf("KeysFromBundle(KeysDocument) = %v, %v", keys, err)
	}
	if kd, err := KeysDocument(plain); err != nil || string(kd) != `{"keys":[]}` {
		t.Errorf("KeysDocument of a bundle without writ keys = %s, %v", kd, err)
	}
}

// TestPlainBundleRefuses: a document KeysFromBundle refuses for its shape
// is refused too, rather than passed on as a bundle.
func TestPlainBundleRefuses(t *testing.T) {
	for name, doc := range map[string]string{
		"empty":          ``,
		"not an object":  `[]`,
		"no keys":        `{}`,
		"keys null":      `{"keys":null}`,
		"keys not array": `{"keys":"x"}`,
		"entry string":   `{"keys":["x"]}`,
		"use not string": `{"keys":[{"use":1}]}`,
		"kid not string": `{"keys":[{"use":"x509-svid","kid":1}]}`,
		"duplicate keys": `{"keys":[],"keys":[]}`,
		"duplicate use":  `{"keys":[{"use":"writ","use":"x509-svid"}]}`,
	} {
		if out, err := PlainBundle([]byte(doc)); err == nil {
			t.Errorf("%s: PlainBundle = %s, want an error", name, out)
		}
		if out, err := KeysDocument([]byte(doc)); err == nil {
			t.Errorf("%s: KeysDocument = %s, want an error", name, out)
		}
	}
}
