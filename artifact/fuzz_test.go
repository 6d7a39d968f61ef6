package artifact

import (
	"encoding/base64"
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
