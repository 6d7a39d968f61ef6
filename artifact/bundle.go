package artifact

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"fmt"
	"slices"

	"github.com/go-jose/go-jose/v4"
)

// KeyUse is the JWK "use" of a writ verification key in a trust bundle.
// SPIFFE bundle parsers skip uses they do not know, so the bundle stays a
// valid SPIFFE bundle.
const KeyUse = "writ"

// KeySet holds the writ verification keys: kid → ECDSA P-256 public key.
type KeySet map[string]*ecdsa.PublicKey

// AddToBundle adds the keys to a SPIFFE trust bundle document (a JWKS) as
// JWKs with "use": "writ" and "alg": "ES256", replacing any writ entry
// with the same kid. Every other member and entry is kept as it was
// (members may be reordered). The new entries follow the others, by kid.
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
		if kid == "" || pub == nil || pub.Curve != elliptic.P256() {
			return nil, fmt.Errorf("artifact: bundle: writ key %q is not an ECDSA P-256 key with a kid", kid)
		}
		jwk := jose.JSONWebKey{Key: pub, KeyID: kid, Use: KeyUse, Algorithm: string(jose.ES256)}
		b, err := jwk.MarshalJSON()
		if err != nil {
			return nil, fmt.Errorf("artifact: bundle: writ key %q: %w", kid, err)
		}
		kept = append(kept, b)
	}
	if kept == nil {
		kept = []json.RawMessage{}
	}
	if doc["keys"], err = json.Marshal(kept); err != nil {
		return nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	out, err := json.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	return out, nil
}

// KeysFromBundle extracts the writ keys ("use": "writ") of a trust bundle
// document, ignoring entries of every other use. It refuses a document
// that is not a JSON object with a "keys" array, and a writ entry that is
// not an ECDSA P-256 public key with a kid, or repeats a kid.
func KeysFromBundle(bundleJSON []byte) (KeySet, error) {
	doc, err := object(bundleJSON)
	if err != nil {
		return nil, fmt.Errorf("artifact: bundle: %w", err)
	}
	raw, ok := doc["keys"]
	var entries []json.RawMessage
	if !ok || raw[0] != '[' || json.Unmarshal(raw, &entries) != nil {
		return nil, fmt.Errorf("artifact: bundle: no keys array")
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
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(e); err != nil {
			return nil, fmt.Errorf("artifact: bundle: writ key %d: %w", i, err)
		}
		pub, ok := jwk.Key.(*ecdsa.PublicKey)
		switch {
		case !ok || pub.Curve != elliptic.P256():
			return nil, fmt.Errorf("artifact: bundle: writ key %d is not an ECDSA P-256 public key", i)
		case kid == "":
			return nil, fmt.Errorf("artifact: bundle: writ key %d has no kid", i)
		case keys[kid] != nil:
			return nil, fmt.Errorf("artifact: bundle: writ kid %q occurs twice", kid)
		}
		keys[kid] = pub
	}
	return keys, nil
}

// useAndKID reads the "use" and "kid" members of a JWK, matched exactly.
func useAndKID(entry json.RawMessage) (use, kid string, err error) {
	m, err := object(entry)
	if err != nil {
		return "", "", err
	}
	d := decoder{m: m}
	use, kid = d.str("use"), d.str("kid")
	return use, kid, d.err
}
