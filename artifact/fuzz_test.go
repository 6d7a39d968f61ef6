package artifact

import (
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

// FuzzVerify checks that no token string panics Verify, and that nothing
// verifies unless the test key really signed it.
func FuzzVerify(f *testing.F) {
	fx := vectorFixture(f)
	for _, v := range readVectors(f).Writs {
		f.Add(v.Token)
	}
	f.Add("")
	f.Add("..")
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		opts := fx.opts()
		opts.Consume = func(string, time.Time) error { return nil }
		c, err := Verify(token, opts)
		if err != nil {
			if c != nil {
				t.Fatalf("claims returned with error %v", err)
			}
			if r := ReasonOf(err); r == ReasonInternalError || r == "" {
				t.Fatalf("untyped refusal: %v", err)
			}
			return
		}
		if !ecdsaSignatureValid(&fx.key.PublicKey, token) {
			t.Fatalf("Verify accepted a token the test key did not sign: %q", token)
		}
		// Only canonical text is accepted: it decodes and re-encodes to itself.
		if len(token) > MaxTokenSize || strings.Trim(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.") != "" {
			t.Fatalf("Verify accepted a token of %d bytes or outside the base64url alphabet: %q", len(token), token)
		}
		for _, p := range strings.Split(token, ".") {
			b, err := base64.RawURLEncoding.DecodeString(p)
			if err != nil || base64.RawURLEncoding.EncodeToString(b) != p {
				t.Fatalf("Verify accepted a part that is not canonical base64url: %q", p)
			}
		}
		if c.Audience != testAudience || c.Action.Digest != fx.digest || c.Att.PCRs != fx.pcrs {
			t.Fatalf("Verify accepted claims that do not match: %+v", c)
		}
	})
}

// FuzzParseUnverified checks that decoding never panics and that what it
// accepts survives Sign and a second parse unchanged.
func FuzzParseUnverified(f *testing.F) {
	fx := vectorFixture(f)
	for _, v := range readVectors(f).Writs {
		f.Add(v.Token)
	}
	f.Add("e30.e30.")
	f.Fuzz(func(t *testing.T, token string) {
		c, err := ParseUnverified(token)
		if err != nil {
			if c != nil || ReasonOf(err) != ReasonWritMalformed {
				t.Fatalf("ParseUnverified = %v, %v", c, err)
			}
			return
		}
		if err := c.check(); err != nil {
			t.Fatalf("accepted claims that fail check: %v", err)
		}
		if c.Expiry.Sub(c.NotBefore) > MaxLifetime {
			return // Sign refuses these, rightly
		}
		again, err := Sign(fx.key, fx.kid, c)
		if err != nil {
			t.Fatalf("Sign of parsed claims: %v", err)
		}
		c2, err := ParseUnverified(again)
		if err != nil {
			t.Fatalf("re-parse: %v", err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("claims changed through Sign:\n%+v\n%+v", c, c2)
		}
	})
}

// FuzzKeysFromBundle checks that bundle parsing never panics and that the
// keys it finds survive AddToBundle.
func FuzzKeysFromBundle(f *testing.F) {
	raw, err := os.ReadFile(filepath.Join("testdata", bundleFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"keys":[]}`))
	f.Add([]byte(`{"keys":[{"use":"writ","kty":"EC","crv":"P-256","kid":"k","x":"","y":""}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		keys, err := KeysFromBundle(doc)
		if err != nil {
			return
		}
		for kid, pub := range keys {
			if kid == "" || pub == nil || kid != KeyID(pub) {
				t.Fatalf("bad key %q %v", kid, pub)
			}
		}
		out, err := AddToBundle(doc, keys)
		if err != nil {
			t.Fatalf("AddToBundle of its own keys: %v", err)
		}
		again, err := KeysFromBundle(out)
		if err != nil {
			t.Fatalf("KeysFromBundle after AddToBundle: %v", err)
		}
		if len(again) != len(keys) {
			t.Fatalf("%d keys became %d", len(keys), len(again))
		}
		for kid, pub := range keys {
			if !pub.Equal(again[kid]) {
				t.Fatalf("key %q changed", kid)
			}
		}
	})
}

// FuzzPlainBundle checks that the plain bundle never panics, holds only
// x509-svid and jwt-svid entries and no writ key, is what it makes of
// itself, and is refused only where KeysFromBundle refuses the shape; and
// that KeysDocument holds exactly the bundle's writ keys.
func FuzzPlainBundle(f *testing.F) {
	raw, err := os.ReadFile(filepath.Join("testdata", bundleFile))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add([]byte(`{"keys":[],"spiffe_sequence":1}`))
	f.Add([]byte(`{"keys":[{"use":"x509-svid"},{"use":"writ"},{"use":"Writ"},{}]}`))
	f.Fuzz(func(t *testing.T, doc []byte) {
		plain, err := PlainBundle(doc)
		keys, kerr := KeysFromBundle(doc)
		if err != nil {
			if kerr == nil {
				t.Fatalf("PlainBundle refused what KeysFromBundle accepts: %v", err)
			}
			return
		}
		var out struct{ Keys []struct{ Use string } }
		if err := json.Unmarshal(plain, &out); err != nil {
			t.Fatalf("PlainBundle = %q: %v", plain, err)
		}
		for _, k := range out.Keys {
			if k.Use != "x509-svid" && k.Use != "jwt-svid" {
				t.Fatalf("use %q in the plain bundle", k.Use)
			}
		}
		if again, err := PlainBundle(plain); err != nil || string(again) != string(plain) {
			t.Fatalf("PlainBundle of itself = %q, %v; want %q", again, err, plain)
		}
		if pk, err := KeysFromBundle(plain); err != nil || len(pk) != 0 {
			t.Fatalf("KeysFromBundle(plain) = %v, %v", pk, err)
		}
		kd, err := KeysDocument(doc)
		if (err == nil) != (kerr == nil) {
			t.Fatalf("KeysDocument: %v; KeysFromBundle: %v", err, kerr)
		}
		if err != nil {
			return
		}
		got, err := KeysFromBundle(kd)
		if err != nil || len(got) != len(keys) {
			t.Fatalf("KeysFromBundle(KeysDocument) = %v, %v; want %v", got, err, keys)
		}
		for kid, pub := range keys {
			if !pub.Equal(got[kid]) {
				t.Fatalf("key %q changed", kid)
			}
		}
	})
}
