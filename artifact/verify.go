package artifact

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"math/big"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// VerifyOptions are what a relying party knows when it checks a writ.
type VerifyOptions struct {
	Keys     KeySet            // the writ keys of the trust bundle
	Audience string            // this relying party; required
	SVID     *x509.Certificate // the presented SVID leaf (the caller has verified its chain); required
	Action   string            // expected action digest "sha256:…"; required
	Kind     string            // expected action kind (KindExec, KindHTTP, KindMCP); zero: KindExec
	PCRs     string            // PCR digest read now from the local TPM over Claims.Att.Sel; required
	Now      time.Time         // zero: time.Now()
	Skew     time.Duration     // zero: DefaultSkew; at most MaxSkew
	// Consume marks a single-use writ's jti used; it returns an error if
	// it was used before. Called last, only for Once writs. Nil: every
	// Once writ is refused (fail closed).
	Consume func(jti string, exp time.Time) error
}

// Verify parses and checks a writ, in this order, stopping at the first
// failure, and returns its claims only when every check passes:
//
//  1. parse (at most MaxTokenSize bytes, three parts of canonical base64url,
//     header and claims JSON objects with no duplicate name at any depth,
//     claims of their types, docs/writ-format.md sections 1-3):
//     writ_malformed; typ == writ+jwt: typ_invalid; alg == ES256:
//     alg_not_allowed; kid present: key_unknown
//  2. kid in Keys: key_unknown; a 64-byte signature verifies (low or high
//     s): signature_invalid
//  3. nbf - skew <= now: writ_not_yet_valid; now < exp + skew: writ_expired;
//     iat <= now + skew: writ_not_yet_valid; exp - nbf <= MaxLifetime:
//     lifetime_too_long
//  4. aud == opts.Audience: audience_mismatch
//  5. sub == the SPIFFE ID of opts.SVID's single URI SAN: subject_mismatch
//  6. cnf x5t#S256 == Thumbprint(opts.SVID): cnf_mismatch
//  7. act.kind == opts.Kind (exec by default) and act.digest == opts.Action: action_mismatch
//  8. att.pcrs == opts.PCRs: attestation_mismatch
//  9. a Once writ: opts.Consume(jti, exp) succeeds: writ_replayed
//
// Options missing a required field, or allowing more than MaxSkew, are
// refused as internal_error before the writ is looked at.
func Verify(token string, opts VerifyOptions) (*Claims, error) {
	switch {
	case opts.Audience == "":
		return nil, fail(ReasonInternalError, "VerifyOptions.Audience is required")
	case opts.SVID == nil:
		return nil, fail(ReasonInternalError, "VerifyOptions.SVID is required")
	case opts.Action == "":
		return nil, fail(ReasonInternalError, "VerifyOptions.Action is required")
	case opts.PCRs == "":
		return nil, fail(ReasonInternalError, "VerifyOptions.PCRs is required")
	case opts.Skew < 0 || opts.Skew > MaxSkew:
		return nil, fail(ReasonInternalError, "VerifyOptions.Skew %s is outside 0..%s", opts.Skew, MaxSkew)
	}
	c, err := VerifySignature(token, opts.Keys)
	if err != nil {
		return nil, err
	}

	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	skew := opts.Skew
	if skew == 0 {
		skew = DefaultSkew
	}
	switch {
	case c.NotBefore.After(now.Add(skew)):
		return nil, fail(ReasonWritNotYetValid, "valid from %s, now %s", c.NotBefore.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case !now.Add(-skew).Before(c.Expiry):
		return nil, fail(ReasonWritExpired, "expired at %s, now %s", c.Expiry.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case c.IssuedAt.After(now.Add(skew)):
		return nil, fail(ReasonWritNotYetValid, "issued at %s, in the future (now %s)", c.IssuedAt.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case c.Expiry.Sub(c.NotBefore) > MaxLifetime:
		return nil, fail(ReasonLifetimeTooLong, "lifetime %s exceeds %s", c.Expiry.Sub(c.NotBefore), MaxLifetime)
	}

	if c.Audience != opts.Audience {
		return nil, fail(ReasonAudienceMismatch, "writ for %q, not %q", c.Audience, opts.Audience)
	}
	if len(opts.SVID.URIs) != 1 {
		return nil, fail(ReasonSubjectMismatch, "the SVID has %d URI SANs, not 1", len(opts.SVID.URIs))
	}
	id, err := spiffeid.FromURI(opts.SVID.URIs[0])
	if err != nil {
		return nil, fail(ReasonSubjectMismatch, "the SVID's URI SAN: %v", err)
	}
	if c.Subject != id.String() {
		return nil, fail(ReasonSubjectMismatch, "writ for %q, presented SVID is %q", c.Subject, id)
	}
	if c.Cnf.X5TS256 != Thumbprint(opts.SVID) {
		return nil, fail(ReasonCnfMismatch, "writ bound to another certificate than the presented SVID")
	}
	kind := opts.Kind
	if kind == "" {
		kind = KindExec
	}
	if c.Action.Kind != kind {
		return nil, fail(ReasonActionMismatch, "action kind %q, expected %q", c.Action.Kind, kind)
	}
	if c.Action.Digest != opts.Action {
		return nil, fail(ReasonActionMismatch, "writ for action %s, not %s", c.Action.Digest, opts.Action)
	}
	if c.Att.PCRs != opts.PCRs {
		return nil, fail(ReasonAttestationMismatch, "writ for PCR state %s over %v, node is at %s", c.Att.PCRs, c.Att.Sel, opts.PCRs)
	}
	if c.Once {
		if opts.Consume == nil {
			return nil, fail(ReasonWritReplayed, "single-use writ %s and no way to consume it", c.ID)
		}
		if err := opts.Consume(c.ID, c.Expiry); err != nil {
			return nil, fail(ReasonWritReplayed, "single-use writ %s: %v", c.ID, err)
		}
	}
	return c, nil
}

// VerifySignature runs only steps 1 and 2 of Verify: the writ parses and
// one of keys signed it. It checks no time, audience, binding or single
// use: it is for the issuer's own bookkeeping (consuming a single-use writ
// it signed), never for deciding whether an action may run.
func VerifySignature(token string, keys KeySet) (*Claims, error) {
	h, c, err := parse(token)
	if err != nil {
		return nil, err
	}
	switch {
	case h.typ != Type:
		return nil, fail(ReasonTypInvalid, "typ %q, expected %q", h.typ, Type)
	case h.alg != string(jose.ES256):
		return nil, fail(ReasonAlgNotAllowed, "alg %q, only ES256 is allowed", h.alg)
	case h.kid == "":
		return nil, fail(ReasonKeyUnknown, "no kid")
	}
	pub, ok := keys[h.kid]
	if !ok || pub == nil {
		return nil, fail(ReasonKeyUnknown, "kid %q is not a writ key of the bundle", h.kid)
	}
	// ES256 (RFC 7518 section 3.4): r and s, 32 bytes each, over the
	// sha256 of the base64url text "header.claims". Both low and high s
	// are accepted, as by every JOSE library: a writ is consumed by its
	// jti, never by its signature's bytes.
	if len(h.sig) != 64 {
		return nil, fail(ReasonSignatureInvalid, "signature of %d bytes, not 64", len(h.sig))
	}
	sum := sha256.Sum256([]byte(token[:strings.LastIndexByte(token, '.')]))
	r, s := new(big.Int).SetBytes(h.sig[:32]), new(big.Int).SetBytes(h.sig[32:])
	if !ecdsa.Verify(pub, sum[:], r, s) {
		return nil, fail(ReasonSignatureInvalid, "the signature does not verify with key %q", h.kid)
	}
	return c, nil
}

// ParseUnverified decodes the claims of a writ WITHOUT VERIFYING ANYTHING:
// not the signature, not the type, algorithm or key, not the time, not the
// binding. Anyone can forge what it returns. Use it only to display or
// debug a writ, or to learn which PCRs to read before calling Verify, which
// checks the same claims again under the signature. It refuses (as
// writ_malformed) only what does not parse or lacks a required claim.
func ParseUnverified(token string) (*Claims, error) {
	_, c, err := parse(token)
	return c, err
}

// header is the part of a writ's JWS header that is checked.
type header struct {
	typ, alg, kid string
	sig           []byte // the decoded signature part
}

// parse splits and decodes a compact JWS writ: exactly three base64url
// parts, a header object with string typ, alg and kid and no crit or b64,
// and well-formed claims. Every failure is writ_malformed.
func parse(token string) (header, *Claims, error) {
	var h header
	if len(token) > MaxTokenSize {
		return h, nil, fail(ReasonWritMalformed, "a writ of %d bytes, more than %d", len(token), MaxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return h, nil, fail(ReasonWritMalformed, "a writ is a compact JWS of three parts, not %d", len(parts))
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := decodeBase64URL(p)
		if err != nil {
			return h, nil, fail(ReasonWritMalformed, "part %d: %v", i+1, err)
		}
		raw[i] = b
	}
	h.sig = raw[2]
	m, err := object(raw[0])
	if err != nil {
		return h, nil, fail(ReasonWritMalformed, "header: %v", err)
	}
	for _, k := range []string{"crit", "b64"} {
		if _, ok := m[k]; ok {
			return h, nil, fail(ReasonWritMalformed, "header %s is not allowed", k)
		}
	}
	d := decoder{m: m}
	h.typ, h.alg, h.kid = d.str("typ"), d.str("alg"), d.str("kid")
	if d.err != nil {
		return h, nil, fail(ReasonWritMalformed, "header: %v", d.err)
	}
	c, err := decodeClaims(raw[1])
	if err != nil {
		return h, nil, fail(ReasonWritMalformed, "%v", err)
	}
	if err := c.check(); err != nil {
		return h, nil, err
	}
	return h, c, nil
}

// decodeBase64URL decodes canonical unpadded base64url (RFC 4648 section
// 5): only the 64 alphabet characters (no padding, white space or line
// breaks), a length that is not 1 modulo 4, and zero spare bits in the
// last character. The empty string is the empty byte string.
func decodeBase64URL(p string) ([]byte, error) {
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return nil, fmt.Errorf("byte %d (%q) is not base64url", i, c)
		}
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(p)
	if err != nil {
		return nil, fmt.Errorf("not canonical base64url: %w", err)
	}
	return b, nil
}
