package artifact

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/go-jose/go-jose/v4"
)

// KeyUse is the JWK "use" of a writ verification key in a trust bundle.
// go-spiffe skips uses it does not know but SPIRE refuses the whole
// bundle, so a bundle for SPIFFE clients leaves them out (PlainBundle) and
// the keys are published apart (KeysDocument).
const KeyUse = "writ"

// The JWK uses of the SPIFFE trust bundle format.
const (
	useX509SVID = "x509-svid"
	useJWTSVID  = "jwt-svid"
)

// KeySet holds the writ verification keys: kid → ECDSA P-256 public key.
type KeySet map[string]*ecdsa.PublicKey

// AddToBundle adds the keys to a SPIFFE trust bundle document (a JWKS) as
// JWKs with "use": "writ" and "alg": "ES256", replacing any writ entry
// with the same kid; each kid must be its key's KeyID. Every other member
// and entry is kept as it was (members may be reordered). The new entries
// follow the others, by kid.
func AddToBundle(bundleJSON []byte, keys KeySet) ([]byte, error) {
	doc, err := object(bundleJSON)
	if err != nil {
		return nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	var entries []json.RawMessage
	if raw, ok := doc["keys"]; ok {
		if err := json.Unmarshal(raw, &entries); err != nil || raw[0] != '[' {
			return nil, fmt.Errorf("artifact: bundle: keys is not an array")
		}
	}
	kept := entries[:0]
	for i, e := range entries {
		use, kid, err := useAndKID(e)
		if err != nil {
			return nil, fmt.Errorf("artifact: bundle: key %d: %w", i, err)
		}
		if _, replaced := keys[kid]; use == KeyUse && replaced {
			continue
		}
		kept = append(kept, e)
	}
	kids := make([]string, 0, len(keys))
	for kid := range keys {
		kids = append(kids, kid)
	}
	slices.Sort(kids)
	for _, kid := range kids {
		pub := keys[kid]
		if kid == "" || pub == nil || pub.Curve != elliptic.P256() || kid != KeyID(pub) {
			return nil, fmt.Errorf("artifact: bundle: writ key %q is not an ECDSA P-256 key with its id (KeyID) as kid", kid)
		}
		jwk := jose.JSONWebKey{Key: pub, KeyID: kid, Use: KeyUse, Algorithm: string(jose.ES256)}
		b, err := jwk.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("artifact: bundle: writ key %q: %w", kid, err)
		}
		kept = append(kept, b)
	}
	return withKeys(doc, kept)
}

// KeysFromBundle extracts the writ keys ("use": "writ") of a trust bundle
// document, ignoring entries of every other use. It refuses a document
// that is not a JSON object with a "keys" array, and a writ entry that is
// not an ECDSA P-256 public key by the rules of writKey, whose kid is not
// its KeyID, or that repeats a kid (docs/writ-format.md section 7).
func KeysFromBundle(bundleJSON []byte) (KeySet, error) {
	_, entries, err := bundleEntries(bundleJSON)
	if err != nil {
		return nil, err
	}
	keys := KeySet{}
	for i, e := range entries {
		use, kid, err := useAndKID(e)
		if err != nil {
			return nil, fmt.Errorf("artifact: bundle: key %d: %w", i, err)
		}
		if use != KeyUse {
			continue
		}
		pub, err := writKey(e)
		switch {
		case err != nil:
			return nil, fmt.Errorf("artifact: bundle: writ key %d: %w", i, err)
		case kid != KeyID(pub):
			return nil, fmt.Errorf("artifact: bundle: writ key %d: kid %q is not the key's id %q", i, kid, KeyID(pub))
		case keys[kid] != nil:
			return nil, fmt.Errorf("artifact: bundle: writ kid %q occurs twice", kid)
		}
		keys[kid] = pub
	}
	return keys, nil
}

// PlainBundle returns a trust bundle document with only the SPIFFE
// entries ("use" x509-svid or jwt-svid): the writ keys and every other
// entry are left out, so strict SPIFFE parsers (SPIRE's refuses a use it
// does not know) accept it. Every other member (spiffe_sequence,
// spiffe_refresh_hint) is kept as it was. It refuses what KeysFromBundle
// refuses before reading the writ keys: a document that is not a JSON
// object with a "keys" array of objects whose use and kid, when present,
// are strings.
func PlainBundle(bundleJSON []byte) ([]byte, error) {
	doc, entries, err := bundleEntries(bundleJSON)
	if err != nil {
		return nil, err
	}
	kept := []json.RawMessage{}
	for i, e := range entries {
		use, _, err := useAndKID(e)
		if err != nil {
			return nil, fmt.Errorf("artifact: bundle: key %d: %w", i, err)
		}
		if use == useX509SVID || use == useJWTSVID {
			kept = append(kept, e)
		}
	}
	return withKeys(doc, kept)
}

// KeysDocument returns the writ keys of a trust bundle document as a JWK
// set of their own, {"keys": [...]}, each entry as AddToBundle writes it,
// in kid order: what is published apart from the plain bundle. It
// refuses what KeysFromBundle refuses.
func KeysDocument(bundleJSON []byte) ([]byte, error) {
	keys, err := KeysFromBundle(bundleJSON)
	if err != nil {
		return nil, err
	}
	return AddToBundle([]byte(`{"keys":[]}`), keys)
}

// bundleEntries parses a trust bundle document: a JSON object with a
// "keys" array.
func bundleEntries(bundleJSON []byte) (map[string]json.RawMessage, []json.RawMessage, error) {
	doc, err := object(bundleJSON)
	if err != nil {
		return nil, nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	raw, ok := doc["keys"]
	var entries []json.RawMessage
	if !ok || raw[0] != '[' || json.Unmarshal(raw, &entries) != nil {
		return nil, nil, fmt.Errorf("artifact: bundle: no keys array")
	}
	return doc, entries, nil
}

// writKey reads a writ JWK (docs/writ-format.md section 7): kty EC, crv
// P-256, x and y each canonical unpadded base64url of exactly 32 bytes,
// a point on the curve, no d, alg absent or ES256, key_ops absent or
// exactly ["verify"].
func writKey(entry json.RawMessage) (*ecdsa.PublicKey, error) {
	m, err := parseObject(string(entry), newScratch())
	if err != nil {
		return nil, err
	}
	d := decoder{m: m, sc: newScratch()}
	kty, crv, x, y, alg := d.str("kty"), d.str("crv"), d.str("x"), d.str("y"), d.str("alg")
	if d.err != nil {
		return nil, d.err
	}
	_, hasAlg := m.get("alg")
	ops, hasOps := m.get("key_ops")
	_, hasD := m.get("d")
	switch {
	case kty != "EC" || crv != "P-256":
		return nil, fmt.Errorf("kty %q crv %q, not an EC P-256 key", kty, crv)
	case hasD:
		return nil, fmt.Errorf("a private key (d)")
	case hasAlg && alg != string(jose.ES256):
		return nil, fmt.Errorf("alg %q, not ES256", alg)
	case hasOps && !bytes.Equal(compactJSON([]byte(ops)), []byte(`["verify"]`)):
		return nil, fmt.Errorf("key_ops %s, not [\"verify\"]", ops)
	}
	xb, errX := decodeBase64URL(x)
	yb, errY := decodeBase64URL(y)
	if errX != nil || errY != nil || len(xb) != 32 || len(yb) != 32 {
		return nil, fmt.Errorf("x and y are not 32 bytes each in canonical base64url")
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, xb...), yb...))
	if err != nil {
		return nil, fmt.Errorf("not a point on P-256: %w", err)
	}
	return pub, nil
}

// compactJSON returns valid JSON text without insignificant white space.
func compactJSON(raw []byte) []byte {
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return nil
	}
	return b.Bytes()
}

// useAndKID reads the "use" and "kid" members of a JWK, matched exactly.
func useAndKID(entry json.RawMessage) (use, kid string, err error) {
	m, err := parseObject(string(entry), newScratch())
	if err != nil {
		return "", "", err
	}
	d := decoder{m: m, sc: newScratch()}
	use, kid = d.str("use"), d.str("kid")
	return use, kid, d.err
}

// withKeys is the bundle document doc with kept as its "keys" (an empty
// array for none), every other member as it was.
func withKeys(doc map[string]json.RawMessage, kept []json.RawMessage) ([]byte, error) {
	if kept == nil {
		kept = []json.RawMessage{}
	}
	keys, err := json.Marshal(kept)
	if err != nil {
		return nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	doc["keys"] = keys
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	return out, nil
}
