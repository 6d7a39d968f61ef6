package artifact

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/cryptosigner"
)

// Type is the JWS "typ" header of a writ.
const Type = "writ+jwt"

// Lifetime rules: a writ is valid from nbf to exp, at most MaxLifetime;
// issuers use DefaultLifetime unless asked otherwise; verifiers allow
// DefaultSkew of clock difference at either end, and never more than
// MaxSkew (a broker keeps a used writ's jti until exp + MaxSkew).
const (
	MaxLifetime     = 5 * time.Minute
	DefaultLifetime = 60 * time.Second
	DefaultSkew     = 5 * time.Second
	MaxSkew         = 30 * time.Second
)

// Sign signs claims as a compact JWS with typ writ+jwt, alg ES256 and the
// given kid. key must be an ECDSA P-256 crypto.Signer; it may live in a TPM,
// since only its Sign method is used. Times are truncated to whole seconds.
// Sign refuses claims that lack a required claim (writ_malformed), whose
// exp is not after nbf (writ_malformed) or whose lifetime exceeds
// MaxLifetime (lifetime_too_long).
func Sign(key crypto.Signer, kid string, c *Claims) (string, error) {
	if key == nil || c == nil {
		return "", fmt.Errorf("artifact: sign: nil key or claims")
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return "", fmt.Errorf("artifact: sign: the writ key is not an ECDSA P-256 key")
	}
	if kid == "" {
		return "", fmt.Errorf("artifact: sign: empty kid")
	}
	w := *c
	w.IssuedAt, w.NotBefore, w.Expiry = second(c.IssuedAt), second(c.NotBefore), second(c.Expiry)
	if err := w.check(); err != nil {
		return "", err
	}
	if life := w.Expiry.Sub(w.NotBefore); life > MaxLifetime {
		return "", fail(ReasonLifetimeTooLong, "lifetime %s exceeds %s", life, MaxLifetime)
	}
	payload, err := encodeClaims(&w)
	if err != nil {
		return "", fmt.Errorf("artifact: sign: %w", err)
	}
	return sign(key, kid, Type, payload)
}

// SignPayload signs any payload with a writ key as a compact JWS (ES256,
// kid, the given typ): for broker messages other than writs, such as node
// events. A verifier must check typ, so a signed message is never taken
// for a writ; Verify refuses anything whose typ is not writ+jwt.
func SignPayload(key crypto.Signer, kid, typ string, payload []byte) (string, error) {
	if typ == Type {
		return "", fmt.Errorf("artifact: sign: use Sign for writs")
	}
	if pub, ok := key.Public().(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() || kid == "" {
		return "", fmt.Errorf("artifact: sign: want an ECDSA P-256 key and a kid")
	}
	return sign(key, kid, typ, payload)
}

func sign(key crypto.Signer, kid, typ string, payload []byte) (string, error) {
	opts := (&jose.SignerOptions{}).WithType(jose.ContentType(typ)).WithHeader(jose.HeaderKey("kid"), kid)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.ES256, Key: cryptosigner.Opaque(key)}, opts)
	if err != nil {
		return "", fmt.Errorf("artifact: sign: %w", err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		return "", fmt.Errorf("artifact: sign: %w", err)
	}
	token, err := jws.CompactSerialize()
	if err != nil {
		return "", fmt.Errorf("artifact: sign: %w", err)
	}
	return token, nil
}

// second truncates t to whole seconds, as a NumericDate holds it.
func second(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return time.Unix(t.Unix(), 0).UTC()
}

// KeyID returns a stable kid for a writ public key: the unpadded base64url
// of the first 16 bytes of the sha256 of its PKIX DER. It returns "" for a
// key that has no PKIX encoding.
func KeyID(pub *ecdsa.PublicKey) string {
	if pub == nil {
		return ""
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return ""
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:16])
}

// VerifyPayload verifies a message made by SignPayload: a compact JWS with
// exactly the given typ (never writ+jwt), alg ES256 and a kid among keys. It
// returns the payload.
func VerifyPayload(token string, keys KeySet, typ string) ([]byte, error) {
	if typ == Type {
		return nil, fail(ReasonTypInvalid, "use Verify for writs")
	}
	jws, err := jose.ParseSignedCompact(token, []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		return nil, fail(ReasonWritMalformed, "%v", err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fail(ReasonWritMalformed, "want exactly one signature")
	}
	h := jws.Signatures[0].Protected
	if got, _ := h.ExtraHeaders[jose.HeaderType].(string); got != typ {
		return nil, fail(ReasonTypInvalid, "typ %q, expected %q", got, typ)
	}
	pub, ok := keys[h.KeyID]
	if h.KeyID == "" || !ok || pub == nil {
		return nil, fail(ReasonKeyUnknown, "kid %q is not a writ key of the bundle", h.KeyID)
	}
	payload, err := jws.Verify(pub)
	if err != nil {
		return nil, fail(ReasonSignatureInvalid, "%v", err)
	}
	return payload, nil
}
