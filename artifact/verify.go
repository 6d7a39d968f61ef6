package artifact

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"fmt"
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
// refused as internal_error before the writ is looked at. Steps 1 and 2
// of a writ that passed them before, with the same token text and the
// same key, are answered from a bounded cache (verified.go); steps 3 to 9
// run on every call.
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
	if !boundTo(c.Cnf.X5TS256, opts.SVID) {
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
	if c, ok := verified.get(token, keys, false); ok {
		return c, nil
	}
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
	var buf [72]byte
	sig, ok := signatureASN1(&buf, h.sig)
	if !ok || !ecdsa.VerifyASN1(pub, sum[:], sig) {
		return nil, fail(ReasonSignatureInvalid, "the signature does not verify with key %q", h.kid)
	}
	verified.add(token, h.kid, pub, c)
	return c, nil
}

// boundTo reports whether x5t is Thumbprint(leaf), without allocating.
func boundTo(x5t string, leaf *x509.Certificate) bool {
	var buf [43]byte // base64.RawURLEncoding.EncodedLen(sha256.Size)
	sum := sha256.Sum256(leaf.Raw)
	base64.RawURLEncoding.Encode(buf[:], sum[:])
	return x5t == string(buf[:])
}

// ParseUnverified decodes the claims of a writ WITHOUT VERIFYING ANYTHING:
// not the signature, not the type, algorithm or key, not the time, not the
// binding. Anyone can forge what it returns. Use it only to display or
// debug a writ, or to learn which PCRs to read before calling Verify, which
// checks the same claims again under the signature. It refuses (as
// writ_malformed) only what does not parse or lacks a required claim.
func ParseUnverified(token string) (*Claims, error) {
	if c, ok := verified.get(token, nil, true); ok {
		return c, nil // parsed before, the same text: the same claims
	}
	_, c, err := parse(token)
	return c, err
}

// header is the part of a writ's JWS header that is checked.
type header struct {
	typ, alg, kid string
	sig           []byte // the decoded signature part
}

// signatureASN1 encodes an ES256 signature (r || s, 32 bytes each) as the
// ASN.1 ECDSA-Sig-Value that crypto/ecdsa verifies, in buf: two minimal
// positive INTEGERs in a SEQUENCE. It reports false when r or s is zero,
// which no valid signature holds.
func signatureASN1(buf *[72]byte, sig []byte) ([]byte, bool) {
	b := buf[:2]
	for _, n := range [2][]byte{sig[:32], sig[32:]} {
		for len(n) > 0 && n[0] == 0 {
			n = n[1:]
		}
		if len(n) == 0 {
			return nil, false
		}
		if n[0]&0x80 != 0 {
			b = append(b, 0x02, byte(len(n)+1), 0)
		} else {
			b = append(b, 0x02, byte(len(n)))
		}
		b = append(b, n...)
	}
	b[0], b[1] = 0x30, byte(len(b)-2) // at most 70: the short form
	return b, true
}

// parse splits and decodes a compact JWS writ: exactly three base64url
// parts, a header object with string typ, alg and kid and no crit or b64,
// and well-formed claims. Every failure is writ_malformed. The claims'
// strings share one copy of the decoded text.
func parse(token string) (header, *Claims, error) {
	var h header
	if len(token) > MaxTokenSize {
		return h, nil, fail(ReasonWritMalformed, "a writ of %d bytes, more than %d", len(token), MaxTokenSize)
	}
	if n := strings.Count(token, "."); n != 2 {
		return h, nil, fail(ReasonWritMalformed, "a writ is a compact JWS of three parts, not %d", n+1)
	}
	i := strings.IndexByte(token, '.')
	j := i + 1 + strings.IndexByte(token[i+1:], '.')
	buf := make([]byte, base64.RawURLEncoding.DecodedLen(len(token)))
	var end [3]int // of each part in buf
	start := 0
	for k, p := range [3]string{token[:i], token[i+1 : j], token[j+1:]} {
		n, err := decodeBase64URLTo(buf[start:], p)
		if err != nil {
			return h, nil, fail(ReasonWritMalformed, "part %d: %v", k+1, err)
		}
		start += n
		end[k] = start
	}
	h.sig = buf[end[1]:end[2]]
	text := string(buf[:end[1]])
	sc := newScratch()
	m, err := parseObject(text[:end[0]], sc)
	if err != nil {
		return h, nil, fail(ReasonWritMalformed, "header: %v", err)
	}
	for _, k := range [...]string{"crit", "b64"} {
		if _, ok := m.get(k); ok {
			return h, nil, fail(ReasonWritMalformed, "header %s is not allowed", k)
		}
	}
	d := decoder{m: m, sc: sc}
	h.typ, h.alg, h.kid = d.str("typ"), d.str("alg"), d.str("kid")
	if d.err != nil {
		return h, nil, fail(ReasonWritMalformed, "header: %v", d.err)
	}
	c, err := decodeClaims(text[end[0]:], sc)
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
	b := make([]byte, base64.RawURLEncoding.DecodedLen(len(p)))
	n, err := decodeBase64URLTo(b, p)
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}

// decodeBase64URLTo is decodeBase64URL into dst, which must have room for
// base64.RawURLEncoding.DecodedLen(len(p)) bytes; it returns how many it
// wrote.
func decodeBase64URLTo(dst []byte, p string) (int, error) {
	for i := 0; i < len(p); i++ {
		switch c := p[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return 0, fmt.Errorf("byte %d (%q) is not base64url", i, c)
		}
	}
	n, err := base64.RawURLEncoding.Strict().Decode(dst, []byte(p))
	if err != nil {
		return 0, fmt.Errorf("not canonical base64url: %w", err)
	}
	return n, nil
}
