package artifact

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestSignVerifyRoundTrip(t *testing.T) {
	f := newFixture(t)
	for _, once := range []bool{false, true} {
		c := f.claims()
		c.Once, c.Parent = once, "parent-jti"
		opts := f.opts()
		opts.Consume = func(string, time.Time) error { return nil }
		got, err := Verify(f.sign(t, c), opts)
		if err != nil {
			t.Fatalf("once=%v: %v", once, err)
		}
		if !reflect.DeepEqual(got, utcClaims(c)) {
			t.Errorf("once=%v: verified claims\n%+v\nwant\n%+v", once, got, utcClaims(c))
		}
	}
}

// utcClaims is c as a parse returns it: times in UTC, whole seconds.
func utcClaims(c *Claims) *Claims {
	u := *c
	u.IssuedAt, u.NotBefore, u.Expiry = second(c.IssuedAt), second(c.NotBefore), second(c.Expiry)
	return &u
}

func TestSignHeaderAndPayload(t *testing.T) {
	f := newFixture(t)
	token := f.sign(t, f.claims())
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	var h map[string]any
	mustUnmarshalB64(t, parts[0], &h)
	want := map[string]any{"alg": "ES256", "typ": "writ+jwt", "kid": f.kid}
	if !reflect.DeepEqual(h, want) {
		t.Errorf("header %v, want %v", h, want)
	}
	var p map[string]json.RawMessage
	mustUnmarshalB64(t, parts[1], &p)
	if got := string(p["aud"]); got != `"`+testAudience+`"` {
		t.Errorf("aud encoded as %s, want a JSON string", got)
	}
	if got := string(p["iat"]); got != fmt.Sprint(f.now.Unix()-10) {
		t.Errorf("iat encoded as %s", got)
	}
	if _, ok := p["once"]; ok {
		t.Errorf("once present in a multi-use writ")
	}
	if !ecdsaSignatureValid(&f.key.PublicKey, token) {
		t.Errorf("signature does not verify with crypto/ecdsa")
	}
}

func mustUnmarshalB64(t *testing.T, s string, v any) {
	t.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatal(err)
	}
}

// opaqueSigner hides the concrete key type, as a TPM-backed signer does.
type opaqueSigner struct{ s crypto.Signer }

func (o opaqueSigner) Public() crypto.PublicKey { return o.s.Public() }
func (o opaqueSigner) Sign(r io.Reader, d []byte, opts crypto.SignerOpts) ([]byte, error) {
	return o.s.Sign(r, d, opts)
}

func TestSignOpaqueSigner(t *testing.T) {
	f := newFixture(t)
	token, err := Sign(opaqueSigner{f.key}, f.kid, f.claims())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(token, f.opts()); err != nil {
		t.Fatal(err)
	}
}

func TestSignRefuses(t *testing.T) {
	f := newFixture(t)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	tests := []struct {
		name   string
		key    crypto.Signer
		kid    string
		edit   func(*Claims)
		reason Reason
	}{
		{"lifetime over max", f.key, f.kid, func(c *Claims) { c.Expiry = c.NotBefore.Add(MaxLifetime + time.Second) }, ReasonLifetimeTooLong},
		{"exp equals nbf", f.key, f.kid, func(c *Claims) { c.Expiry = c.NotBefore }, ReasonWritMalformed},
		{"exp before nbf", f.key, f.kid, func(c *Claims) { c.Expiry = c.NotBefore.Add(-time.Second) }, ReasonWritMalformed},
		{"exp within the same second", f.key, f.kid, func(c *Claims) { c.Expiry = c.NotBefore.Add(500 * time.Millisecond) }, ReasonWritMalformed},
		{"no jti", f.key, f.kid, func(c *Claims) { c.ID = "" }, ReasonWritMalformed},
		{"no aud", f.key, f.kid, func(c *Claims) { c.Audience = "" }, ReasonWritMalformed},
		{"no iat", f.key, f.kid, func(c *Claims) { c.IssuedAt = time.Time{} }, ReasonWritMalformed},
		{"no cnf", f.key, f.kid, func(c *Claims) { c.Cnf = Confirmation{} }, ReasonWritMalformed},
		{"unsorted sel", f.key, f.kid, func(c *Claims) { c.Att.Sel = []int{1, 0} }, ReasonWritMalformed},
		{"empty sel", f.key, f.kid, func(c *Claims) { c.Att.Sel = nil }, ReasonWritMalformed},
		{"P-384 key", p384, f.kid, func(*Claims) {}, ReasonInternalError},
		{"RSA key", rsaKey, f.kid, func(*Claims) {}, ReasonInternalError},
		{"empty kid", f.key, "", func(*Claims) {}, ReasonInternalError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.claims()
			tt.edit(c)
			token, err := Sign(tt.key, tt.kid, c)
			if err == nil || ReasonOf(err) != tt.reason {
				t.Fatalf("Sign = %q, %v; want reason %s", token, err, tt.reason)
			}
		})
	}
	// At exactly MaxLifetime the writ is signed.
	c := f.claims()
	c.Expiry = c.NotBefore.Add(MaxLifetime)
	if _, err := Sign(f.key, f.kid, c); err != nil {
		t.Errorf("lifetime of exactly MaxLifetime refused: %v", err)
	}
}

func TestVerifyReasons(t *testing.T) {
	f := newFixture(t)
	other := mustKey(t)
	otherSVID := selfSignedSVID(t, mustKey(t), f.svidID)
	twoURIs := selfSignedSVID(t, mustKey(t), f.svidID)
	u, _ := url.Parse("spiffe://example.org/second")
	twoURIs.URIs = append(twoURIs.URIs, u)
	pub, _ := hexPKIX(&f.key.PublicKey)

	tests := []struct {
		name   string
		token  func(c *Claims) string // nil: f.sign
		edit   func(c *Claims)
		opts   func(o *VerifyOptions)
		reason Reason
	}{
		{name: "valid", reason: ""},
		{name: "garbage", token: func(*Claims) string { return "garbage" }, reason: ReasonWritMalformed},
		{name: "empty", token: func(*Claims) string { return "" }, reason: ReasonWritMalformed},
		{name: "bad payload json", token: func(*Claims) string { return signRaw(t, f.key, esHeader(f.kid), []byte(`{"iss":`)) }, reason: ReasonWritMalformed},
		{name: "payload not an object", token: func(*Claims) string { return signRaw(t, f.key, esHeader(f.kid), []byte(`[1]`)) }, reason: ReasonWritMalformed},
		{name: "missing claim", token: func(c *Claims) string {
			m := claimsMap(t, c)
			delete(m, "att")
			return signRaw(t, f.key, esHeader(f.kid), m)
		}, reason: ReasonWritMalformed},
		{name: "crit header", token: func(c *Claims) string {
			h := esHeader(f.kid)
			h["crit"] = []string{"b64"}
			h["b64"] = false
			return signRaw(t, f.key, h, claimsMap(t, c))
		}, reason: ReasonWritMalformed},
		{name: "JSON serialization", token: func(c *Claims) string {
			p := strings.Split(f.sign(t, c), ".")
			return fmt.Sprintf(`{"protected":%q,"payload":%q,"signature":%q}`, p[0], p[1], p[2])
		}, reason: ReasonWritMalformed},
		{name: "typ JWT", token: func(c *Claims) string {
			h := esHeader(f.kid)
			h["typ"] = "JWT"
			return signRaw(t, f.key, h, claimsMap(t, c))
		}, reason: ReasonTypInvalid},
		{name: "no typ", token: func(c *Claims) string {
			h := esHeader(f.kid)
			delete(h, "typ")
			return signRaw(t, f.key, h, claimsMap(t, c))
		}, reason: ReasonTypInvalid},
		{name: "alg none", token: func(c *Claims) string {
			return b64JSON(t, map[string]any{"alg": "none", "typ": Type, "kid": f.kid}) + "." + b64JSON(t, claimsMap(t, c)) + "."
		}, reason: ReasonAlgNotAllowed},
		{name: "alg HS256 with the public key as secret", token: func(c *Claims) string {
			return hmacToken(t, map[string]any{"alg": "HS256", "typ": Type, "kid": f.kid}, claimsMap(t, c), pub)
		}, reason: ReasonAlgNotAllowed},
		{name: "alg ES384", token: func(c *Claims) string {
			h := esHeader(f.kid)
			h["alg"] = "ES384"
			return signRaw(t, f.key, h, claimsMap(t, c))
		}, reason: ReasonAlgNotAllowed},
		{name: "no kid", token: func(c *Claims) string {
			h := esHeader(f.kid)
			delete(h, "kid")
			return signRaw(t, f.key, h, claimsMap(t, c))
		}, reason: ReasonKeyUnknown},
		{name: "unknown kid", token: func(c *Claims) string { tok, _ := Sign(f.key, "unknown", c); return tok }, reason: ReasonKeyUnknown},
		{name: "empty key set", opts: func(o *VerifyOptions) { o.Keys = nil }, reason: ReasonKeyUnknown},
		{name: "other key", token: func(c *Claims) string { tok, _ := Sign(other, f.kid, c); return tok }, reason: ReasonSignatureInvalid},
		{name: "tampered payload", token: func(c *Claims) string {
			p := strings.Split(f.sign(t, c), ".")
			m := claimsMap(t, c)
			m["sub"] = "spiffe://example.org/evil"
			return p[0] + "." + b64JSON(t, m) + "." + p[2]
		}, reason: ReasonSignatureInvalid},
		{name: "short signature", token: func(c *Claims) string {
			p := strings.Split(f.sign(t, c), ".")
			sig, _ := base64.RawURLEncoding.DecodeString(p[2])
			return p[0] + "." + p[1] + "." + base64.RawURLEncoding.EncodeToString(sig[:63])
		}, reason: ReasonSignatureInvalid},
		{name: "expired", opts: func(o *VerifyOptions) { o.Now = o.Now.Add(55 * time.Second) }, reason: ReasonWritExpired},
		{name: "expired with no skew left", opts: func(o *VerifyOptions) { o.Now = o.Now.Add(51 * time.Second); o.Skew = time.Second }, reason: ReasonWritExpired},
		{name: "last second of skew", opts: func(o *VerifyOptions) { o.Now = o.Now.Add(54 * time.Second) }, reason: ""},
		{name: "not yet valid", opts: func(o *VerifyOptions) { o.Now = o.Now.Add(-16 * time.Second) }, reason: ReasonWritNotYetValid},
		{name: "first second of skew", opts: func(o *VerifyOptions) { o.Now = o.Now.Add(-15 * time.Second) }, reason: ""},
		{name: "iat in the future", edit: func(c *Claims) { c.IssuedAt = c.IssuedAt.Add(20 * time.Second) }, reason: ReasonWritNotYetValid},
		{name: "lifetime too long", token: func(c *Claims) string {
			m := claimsMap(t, c)
			m["exp"] = c.NotBefore.Add(MaxLifetime + time.Second).Unix()
			return signRaw(t, f.key, esHeader(f.kid), m)
		}, reason: ReasonLifetimeTooLong},
		{name: "audience", opts: func(o *VerifyOptions) { o.Audience = "spiffe://example.org/node/other" }, reason: ReasonAudienceMismatch},
		{name: "subject", edit: func(c *Claims) { c.Subject = "spiffe://example.org/workload/other" }, reason: ReasonSubjectMismatch},
		{name: "SVID with two URIs", opts: func(o *VerifyOptions) { o.SVID = twoURIs }, reason: ReasonSubjectMismatch},
		{name: "other SVID, same ID", opts: func(o *VerifyOptions) { o.SVID = otherSVID }, reason: ReasonCnfMismatch},
		{name: "action digest", opts: func(o *VerifyOptions) { o.Action = "sha256:" + strings.Repeat("0", 64) }, reason: ReasonActionMismatch},
		{name: "action kind", edit: func(c *Claims) { c.Action.Kind = "http" }, reason: ReasonActionMismatch},
		{name: "pcrs", opts: func(o *VerifyOptions) { o.PCRs = "sha256:" + strings.Repeat("1", 64) }, reason: ReasonAttestationMismatch},
		{name: "once without consumer", edit: func(c *Claims) { c.Once = true }, reason: ReasonWritReplayed},
		{name: "once consumed before", edit: func(c *Claims) { c.Once = true },
			opts: func(o *VerifyOptions) { o.Consume = func(string, time.Time) error { return errors.New("used") } }, reason: ReasonWritReplayed},
		{name: "missing audience option", opts: func(o *VerifyOptions) { o.Audience = "" }, reason: ReasonInternalError},
		{name: "missing SVID option", opts: func(o *VerifyOptions) { o.SVID = nil }, reason: ReasonInternalError},
		{name: "missing action option", opts: func(o *VerifyOptions) { o.Action = "" }, reason: ReasonInternalError},
		{name: "missing pcrs option", opts: func(o *VerifyOptions) { o.PCRs = "" }, reason: ReasonInternalError},
		// The first failing check wins.
		{name: "expired and wrong audience", opts: func(o *VerifyOptions) { o.Now = o.Now.Add(time.Hour); o.Audience = "x" }, reason: ReasonWritExpired},
		{name: "wrong typ and alg", token: func(c *Claims) string {
			return b64JSON(t, map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64JSON(t, claimsMap(t, c)) + "."
		}, reason: ReasonTypInvalid},
		{name: "bad signature and expired", token: func(c *Claims) string { tok, _ := Sign(other, f.kid, c); return tok },
			opts: func(o *VerifyOptions) { o.Now = o.Now.Add(time.Hour) }, reason: ReasonSignatureInvalid},
		{name: "wrong action and pcrs", opts: func(o *VerifyOptions) { o.Action = "sha256:00"; o.PCRs = "sha256:00" }, reason: ReasonActionMismatch},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := f.claims()
			if tt.edit != nil {
				tt.edit(c)
			}
			var token string
			if tt.token != nil {
				token = tt.token(c)
			} else {
				token = f.sign(t, c)
			}
			opts := f.opts()
			if tt.opts != nil {
				tt.opts(&opts)
			}
			got, err := Verify(token, opts)
			if r := ReasonOf(err); r != tt.reason {
				t.Fatalf("Verify: %v (reason %q), want reason %q", err, r, tt.reason)
			}
			if (got == nil) != (err != nil) {
				t.Fatalf("Verify returned claims %v with error %v", got, err)
			}
		})
	}
}

// hexPKIX returns the PKIX DER of pub (the "public key bytes" an HS256
// key-confusion attack would use as the HMAC secret).
func hexPKIX(pub *ecdsa.PublicKey) ([]byte, string) {
	der, _ := x509.MarshalPKIXPublicKey(pub)
	return der, hex.EncodeToString(der)
}

func TestConsume(t *testing.T) {
	f := newFixture(t)
	used := map[string]time.Time{}
	var calls int
	consume := func(jti string, exp time.Time) error {
		calls++
		if _, ok := used[jti]; ok {
			return errors.New("jti already used")
		}
		used[jti] = exp
		return nil
	}
	opts := f.opts()
	opts.Consume = consume

	// A multi-use writ never consumes.
	multi := f.sign(t, f.claims())
	for range 2 {
		if _, err := Verify(multi, opts); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 0 {
		t.Fatalf("Consume called %d times for a multi-use writ", calls)
	}

	c := f.claims()
	c.Once = true
	once := f.sign(t, c)
	// A check that fails before step 9 does not consume.
	bad := opts
	bad.PCRs = "sha256:" + strings.Repeat("2", 64)
	if _, err := Verify(once, bad); ReasonOf(err) != ReasonAttestationMismatch {
		t.Fatalf("Verify = %v", err)
	}
	if calls != 0 {
		t.Fatalf("Consume called after an earlier failure")
	}
	// First use passes with the writ's jti and exp; the second is a replay.
	if _, err := Verify(once, opts); err != nil {
		t.Fatal(err)
	}
	if exp, ok := used[c.ID]; !ok || !exp.Equal(second(c.Expiry)) {
		t.Fatalf("Consume got %v, want jti %s exp %s", used, c.ID, c.Expiry)
	}
	if _, err := Verify(once, opts); ReasonOf(err) != ReasonWritReplayed {
		t.Fatalf("replay: Verify = %v, want %s", err, ReasonWritReplayed)
	}
	if calls != 2 {
		t.Fatalf("Consume called %d times, want 2", calls)
	}
}

func TestParseUnverified(t *testing.T) {
	f := newFixture(t)
	c := f.claims()
	// Signed by an unknown key, with a wrong typ: it still decodes.
	h := esHeader("nobody")
	h["typ"] = "JWT"
	got, err := ParseUnverified(signRaw(t, mustKey(t), h, claimsMap(t, c)))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, utcClaims(c)) {
		t.Errorf("got %+v, want %+v", got, utcClaims(c))
	}
	// Escaped strings decode to the same claims.
	escaped := bytes.ReplaceAll(mustEncode(t, c), []byte("/"), []byte(`\/`))
	if got, err := ParseUnverified(signRaw(t, f.key, esHeader(f.kid), escaped)); err != nil || !reflect.DeepEqual(got, utcClaims(c)) {
		t.Errorf("escaped claims: %+v, %v", got, err)
	}
	for _, bad := range []string{"", "a.b", "a.b.c.d", "e30.e30.", "!!.e30."} {
		if _, err := ParseUnverified(bad); ReasonOf(err) != ReasonWritMalformed {
			t.Errorf("ParseUnverified(%q) = %v, want %s", bad, err, ReasonWritMalformed)
		}
	}
}

func TestVerifySignature(t *testing.T) {
	f := newFixture(t)
	c := f.claims()
	c.Expiry = c.NotBefore.Add(time.Second) // long expired at f.now: not checked
	got, err := VerifySignature(f.sign(t, c), f.keys)
	if err != nil || got.ID != c.ID {
		t.Fatalf("VerifySignature = %v, %v", got, err)
	}
	if _, err := VerifySignature(f.sign(t, c), KeySet{}); ReasonOf(err) != ReasonKeyUnknown {
		t.Fatalf("VerifySignature with no keys = %v", err)
	}
}

func TestClaimDecoding(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		edit func(m map[string]any)
		raw  string // replaces the payload when set
		ok   bool
	}{
		{name: "aud one-element array", edit: func(m map[string]any) { m["aud"] = []string{testAudience} }, ok: true},
		{name: "aud two-element array", edit: func(m map[string]any) { m["aud"] = []string{testAudience, "x"} }},
		{name: "aud empty array", edit: func(m map[string]any) { m["aud"] = []string{} }},
		{name: "aud number", edit: func(m map[string]any) { m["aud"] = 1 }},
		{name: "fractional exp", edit: func(m map[string]any) { m["exp"] = 1767225660.5 }},
		{name: "string exp", edit: func(m map[string]any) { m["exp"] = "1767225660" }},
		{name: "null sub", edit: func(m map[string]any) { m["sub"] = nil }},
		{name: "once as string", edit: func(m map[string]any) { m["once"] = "true" }},
		{name: "once false", edit: func(m map[string]any) { m["once"] = false }, ok: true},
		{name: "unknown claim ignored", edit: func(m map[string]any) { m["x-extra"] = map[string]any{"a": 1} }, ok: true},
		{name: "float sel", edit: func(m map[string]any) { m["att"].(map[string]any)["sel"] = []float64{0.5} }},
		{name: "PCR 24", edit: func(m map[string]any) { m["att"].(map[string]any)["sel"] = []int{24} }},
		{name: "cnf not object", edit: func(m map[string]any) { m["cnf"] = "x" }},
		{name: "duplicate claim", raw: `{"iss":"a","iss":"b"}`},
		{name: "duplicate escaped claim", raw: `{"iss":"a","i\u0073s":"b"}`},
		{name: "duplicate nested member", raw: strings.Replace(string(mustEncode(t, f.claims())), `"kind":"exec"`, `"kind":"exec","kind":"http"`, 1)},
		{name: "indented", raw: indent(t, mustEncode(t, f.claims())), ok: true},
		{name: "null", raw: `null`},
		{name: "trailing data", raw: `{"iss":"a"} {}`},
		{name: "invalid UTF-8", raw: "{\"iss\":\"\xff\"}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var payload any
			if tt.raw != "" {
				payload = []byte(tt.raw)
			} else {
				m := claimsMap(t, f.claims())
				tt.edit(m)
				payload = m
			}
			_, err := ParseUnverified(signRaw(t, f.key, esHeader(f.kid), payload))
			if tt.ok != (err == nil) || (err != nil && ReasonOf(err) != ReasonWritMalformed) {
				t.Fatalf("ParseUnverified = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func indent(t *testing.T, b []byte) string {
	var out bytes.Buffer
	if err := json.Indent(&out, b, " ", "\t"); err != nil {
		t.Fatal(err)
	}
	return " " + out.String() + "\n"
}

func TestReasonOf(t *testing.T) {
	e := &Error{Reason: ReasonCnfMismatch, Detail: "d"}
	tests := []struct {
		err  error
		want Reason
	}{
		{nil, ""},
		{e, ReasonCnfMismatch},
		{fmt.Errorf("wrapped: %w", e), ReasonCnfMismatch},
		{errors.New("other"), ReasonInternalError},
		{&Error{}, ReasonInternalError},
	}
	for _, tt := range tests {
		if got := ReasonOf(tt.err); got != tt.want {
			t.Errorf("ReasonOf(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	if got := e.Error(); got != "artifact: cnf_mismatch: d" {
		t.Errorf("Error() = %q", got)
	}
}

func TestPCRDigest(t *testing.T) {
	v := testPCRValues()
	h := sha256.New()
	h.Write(v[0])
	h.Write(v[7])
	want := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if got, err := PCRDigest(v, []int{0, 7}); err != nil || got != want {
		t.Fatalf("PCRDigest = %s, %v; want %s", got, err, want)
	}
	short := map[int][]byte{0: v[0], 7: v[7][:20]}
	for _, tt := range []struct {
		values map[int][]byte
		sel    []int
	}{
		{v, nil}, {v, []int{7, 0}}, {v, []int{0, 0}}, {v, []int{-1}}, {v, []int{24}},
		{short, []int{0, 7}}, {short, []int{0, 1}},
	} {
		if got, err := PCRDigest(tt.values, tt.sel); err == nil {
			t.Errorf("PCRDigest(sel %v) = %s, want an error", tt.sel, got)
		}
	}
}

func TestThumbprintAndKeyID(t *testing.T) {
	f := newFixture(t)
	sum := sha256.Sum256(f.svid.Raw)
	if got, want := Thumbprint(f.svid), base64.RawURLEncoding.EncodeToString(sum[:]); got != want {
		t.Errorf("Thumbprint = %s, want %s", got, want)
	}
	der, _ := x509.MarshalPKIXPublicKey(&f.key.PublicKey)
	kidSum := sha256.Sum256(der)
	if got, want := KeyID(&f.key.PublicKey), base64.RawURLEncoding.EncodeToString(kidSum[:16]); got != want {
		t.Errorf("KeyID = %s, want %s", got, want)
	}
	if KeyID(&f.key.PublicKey) == KeyID(&mustKey(t).PublicKey) {
		t.Errorf("two keys share a kid")
	}
}
