package artifact

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// ruleVectors are the writ vectors for each rule docs/writ-format.md
// states that a reader could otherwise guess wrong: canonical base64url,
// byte-order marks, duplicate names at every level, sizes and depth,
// integer syntax and range, the types and empty values of optional
// claims and header members, exact-text comparisons, the presented SVID's
// URI SANs, high-S signatures, and the order of the checks.
func ruleVectors(t *testing.T, f *fixture, other *ecdsa.PrivateKey, vec func(string, string, string, ...func(*verifyVector)) writVector) []writVector {
	malformed, valid := string(ReasonWritMalformed), "valid"
	claimsJSON := func() []byte { return mustEncode(t, f.claims()) }
	headerJSON := func() []byte { b, _ := json.Marshal(esHeader(f.kid)); return b }
	// replace signs the claims with one text replaced by another, byte for byte.
	replace := func(old, new string) string {
		c := claimsJSON()
		if !bytes.Contains(c, []byte(old)) {
			t.Fatalf("claims %s hold no %s", c, old)
		}
		return signRaw(t, f.key, esHeader(f.kid), bytes.Replace(c, []byte(old), []byte(new), 1))
	}
	edit := func(e func(map[string]any)) string {
		m := claimsMap(t, f.claims())
		e(m)
		return signRaw(t, f.key, esHeader(f.kid), m)
	}
	header := func(h string) string { return signRaw(t, f.key, []byte(h), claimsJSON()) }
	raw := func(s string) json.RawMessage { return json.RawMessage(s) }
	nested := func(depth int) any { // depth levels of arrays
		var v any = "x"
		for range depth {
			v = []any{v}
		}
		return v
	}
	valid0 := f.sign(t, f.claims())
	parts := strings.Split(valid0, ".")
	lowS, highS := withS(t, valid0, false), withS(t, valid0, true)
	thumb := Thumbprint(f.svid)
	once := func(e func(*Claims)) string {
		c := f.claims()
		c.Once = true
		if e != nil {
			e(c)
		}
		return f.sign(t, c)
	}
	return []writVector{
		// 1. Canonical base64url.
		vec("malformed: padding on the signature", valid0+"==", malformed),
		vec("malformed: non-zero spare bits in the signature", parts[0]+"."+parts[1]+"."+spareBits(parts[2]), malformed),
		vec("malformed: line break inside the claims part", parts[0]+"."+parts[1][:40]+"\n"+parts[1][40:]+"."+parts[2], malformed),
		vec("malformed: standard base64 alphabet", stdAlphabet(t, replace(`"iss":`, `"ext":"??????","iss":`)), malformed),
		vec("malformed: empty header part", "."+parts[1]+"."+parts[2], malformed),
		vec("malformed: empty claims part", parts[0]+".."+parts[2], malformed),
		vec("signature invalid: empty signature part", parts[0]+"."+parts[1]+".", string(ReasonSignatureInvalid)),
		vec("signature invalid: 65-byte signature", parts[0]+"."+parts[1]+"."+base64.RawURLEncoding.EncodeToString(append(mustB64(t, parts[2]), 0)), string(ReasonSignatureInvalid)),
		// Byte-order marks.
		vec("malformed: byte-order mark before the claims", signRaw(t, f.key, esHeader(f.kid), append([]byte("\xef\xbb\xbf"), claimsJSON()...)), malformed),
		vec("malformed: byte-order mark before the header", header("\xef\xbb\xbf"+string(headerJSON())), malformed),
		vec("valid: white space around and inside the JSON", signRaw(t, f.key, []byte(" \n"+string(headerJSON())+"\t"), append(append([]byte("\r\n "), bytes.ReplaceAll(claimsJSON(), []byte(`,"`), []byte(`, "`))...), ' ')), valid),
		// Duplicate member names at every level.
		vec("malformed: duplicate kid in the header", header(`{"alg":"ES256","kid":"`+f.kid+`","typ":"writ+jwt","kid":"`+f.kid+`"}`), malformed),
		vec("malformed: duplicate act.digest", replace(`"digest":`, `"digest":"sha256:00","digest":`), malformed),
		vec("malformed: duplicate names in an unknown claim's object", replace(`"iss":`, `"ext":{"a":1,"a":2},"iss":`), malformed),
		vec("malformed: duplicate names in an object inside an array", replace(`"iss":`, `"ext":[{"a":1,"a":1}],"iss":`), malformed),
		vec("malformed: duplicate sub, one name escaped", replace(`"sub":`, `"s\u0075b":"spiffe://example.org/evil","sub":`), malformed),
		vec("valid: same name in two different objects", replace(`"iss":`, `"ext":{"a":1,"b":{"a":2}},"iss":`), valid),
		// Sizes and depth.
		vec("valid: JSON nested 16 deep", edit(func(m map[string]any) { m["ext"] = nested(maxDepth - 1) }), valid),
		vec("malformed: JSON nested 17 deep", edit(func(m map[string]any) { m["ext"] = nested(maxDepth) }), malformed),
		vec("valid: a token of exactly 8192 bytes", sizedToken(t, f, MaxTokenSize), valid),
		vec("malformed: a token of 8193 bytes or more", sizedToken(t, f, MaxTokenSize+1), malformed),
		vec("malformed: escaped lone surrogate in an unknown claim", replace(`"iss":`, `"ext":"\ud800",`+`"iss":`), malformed),
		vec("valid: escaped surrogate pair", replace(`"iss":`, `"ext":"\ud83d\ude00","iss":`), valid),
		// Integers: syntax and range, every integer field.
		vec("malformed: iat with a fraction", edit(func(m map[string]any) { m["iat"] = raw("1767225600.0") }), malformed),
		vec("malformed: nbf with an exponent", edit(func(m map[string]any) { m["nbf"] = raw("1.7672256e9") }), malformed),
		vec("malformed: exp as a string", edit(func(m map[string]any) { m["exp"] = "1767225660" }), malformed),
		vec("malformed: negative nbf", edit(func(m map[string]any) { m["nbf"] = -1 }), malformed),
		vec("malformed: iat of -0", edit(func(m map[string]any) { m["iat"] = raw("-0") }), malformed),
		vec("malformed: exp of 2^53", edit(func(m map[string]any) { m["exp"] = raw("9007199254740992") }), malformed),
		vec("malformed: exp beyond int64", edit(func(m map[string]any) { m["exp"] = raw("92233720368547758080") }), malformed),
		vec("lifetime too long: exp of 2^53 - 1 is in range", edit(func(m map[string]any) { m["exp"] = raw("9007199254740991") }), string(ReasonLifetimeTooLong)),
		vec("malformed: sel element with a fraction", edit(func(m map[string]any) { setSel(m, "[0,1,2,3,4,5,6,7.0]") }), malformed),
		vec("malformed: sel element with an exponent", edit(func(m map[string]any) { setSel(m, "[0,1,2,3,4,5,6,7e0]") }), malformed),
		vec("malformed: sel element null", edit(func(m map[string]any) { setSel(m, "[null,1,2,3,4,5,6,7]") }), malformed),
		vec("malformed: sel element -0", edit(func(m map[string]any) { setSel(m, "[-0,1,2,3,4,5,6,7]") }), malformed),
		vec("malformed: sel element 24", edit(func(m map[string]any) { setSel(m, "[0,1,2,3,4,5,6,24]") }), malformed),
		vec("malformed: sel element beyond int64", edit(func(m map[string]any) { setSel(m, "[0,1,2,3,4,5,6,18446744073709551623]") }), malformed),
		vec("malformed: sel empty", edit(func(m map[string]any) { setSel(m, "[]") }), malformed),
		vec("malformed: sel not ascending", edit(func(m map[string]any) { setSel(m, "[1,0,2,3,4,5,6,7]") }), malformed),
		// Optional claims and header members: types and empty values.
		vec("malformed: par empty", edit(func(m map[string]any) { m["par"] = "" }), malformed),
		vec("malformed: par null", edit(func(m map[string]any) { m["par"] = nil }), malformed),
		vec("malformed: par a number", edit(func(m map[string]any) { m["par"] = 7 }), malformed),
		vec("valid: par present", edit(func(m map[string]any) { m["par"] = "parent-jti" }), valid),
		vec("malformed: once as a string", edit(func(m map[string]any) { m["once"] = "true" }), malformed),
		vec("malformed: once null", edit(func(m map[string]any) { m["once"] = nil }), malformed),
		vec("valid: once false is multi-use", edit(func(m map[string]any) { m["once"] = false }), valid),
		vec("malformed: act.display empty", edit(func(m map[string]any) { act(m)["display"] = "" }), malformed),
		vec("malformed: act.display null", edit(func(m map[string]any) { act(m)["display"] = nil }), malformed),
		vec("valid: act.display absent", edit(func(m map[string]any) { delete(act(m), "display") }), valid),
		vec("valid: act.display of 160 bytes", edit(func(m map[string]any) { act(m)["display"] = strings.Repeat("é", 80) }), valid),
		vec("malformed: act.display of 161 bytes", edit(func(m map[string]any) { act(m)["display"] = "x" + strings.Repeat("é", 80) }), malformed),
		vec("malformed: iss null", edit(func(m map[string]any) { m["iss"] = nil }), malformed),
		vec("malformed: jti empty", edit(func(m map[string]any) { m["jti"] = "" }), malformed),
		vec("malformed: aud an empty array", edit(func(m map[string]any) { m["aud"] = []string{} }), malformed),
		vec("malformed: aud an array of one empty string", edit(func(m map[string]any) { m["aud"] = []string{""} }), malformed),
		vec("key unknown: kid empty", header(`{"alg":"ES256","kid":"","typ":"writ+jwt"}`), string(ReasonKeyUnknown)),
		vec("malformed: kid null", header(`{"alg":"ES256","kid":null,"typ":"writ+jwt"}`), malformed),
		vec("malformed: kid a number", header(`{"alg":"ES256","kid":7,"typ":"writ+jwt"}`), malformed),
		vec("typ invalid: typ absent", header(`{"alg":"ES256","kid":"`+f.kid+`"}`), string(ReasonTypInvalid)),
		vec("typ invalid: typ upper case", header(`{"alg":"ES256","kid":"`+f.kid+`","typ":"WRIT+JWT"}`), string(ReasonTypInvalid)),
		vec("malformed: typ null", header(`{"alg":"ES256","kid":"`+f.kid+`","typ":null}`), malformed),
		vec("valid: typ with an escaped character", header(`{"alg":"ES256","kid":"`+f.kid+`","typ":"writ\u002bjwt"}`), valid),
		vec("alg not allowed: alg absent", header(`{"kid":"`+f.kid+`","typ":"writ+jwt"}`), string(ReasonAlgNotAllowed)),
		vec("malformed: crit present", header(`{"alg":"ES256","crit":["exp"],"kid":"`+f.kid+`","typ":"writ+jwt"}`), malformed),
		vec("valid: unknown header members ignored", header(`{"alg":"ES256","jku":"https://evil.example/keys","kid":"`+f.kid+`","typ":"writ+jwt","x5u":"x"}`), valid),
		// Informational claims: never compared.
		vec("valid: iss, att.node, att.result, att.policy are informational", edit(func(m map[string]any) {
			m["iss"] = "spiffe://elsewhere.example/anything"
			att := m["att"].(map[string]any)
			att["node"], att["result"], att["policy"] = "n", "r", "p"
		}), valid),
		// Exact-text comparisons.
		vec("action mismatch: act.digest in upper-case hex", edit(func(m map[string]any) {
			act(m)["digest"] = "sha256:" + strings.ToUpper(strings.TrimPrefix(f.digest, "sha256:"))
		}), string(ReasonActionMismatch)),
		vec("action mismatch: act.digest with an upper-case prefix", edit(func(m map[string]any) { act(m)["digest"] = "SHA256:" + strings.TrimPrefix(f.digest, "sha256:") }), string(ReasonActionMismatch)),
		vec("attestation mismatch: att.pcrs in upper-case hex", edit(func(m map[string]any) {
			m["att"].(map[string]any)["pcrs"] = "sha256:" + strings.ToUpper(strings.TrimPrefix(f.pcrs, "sha256:"))
		}), string(ReasonAttestationMismatch)),
		vec("cnf mismatch: x5t#S256 padded", edit(func(m map[string]any) { m["cnf"].(map[string]any)["x5t#S256"] = thumb + "=" }), string(ReasonCnfMismatch)),
		vec("cnf mismatch: x5t#S256 in hex", edit(func(m map[string]any) {
			sum := sha256.Sum256(f.svid.Raw)
			m["cnf"].(map[string]any)["x5t#S256"] = strings.ToLower(new(big.Int).SetBytes(sum[:]).Text(16))
		}), string(ReasonCnfMismatch)),
		// The presented SVID.
		vec("subject mismatch: SVID with no URI SAN", valid0, string(ReasonSubjectMismatch), func(v *verifyVector) { v.SVID = svidNoURIFile }),
		vec("subject mismatch: SVID with two URI SANs", valid0, string(ReasonSubjectMismatch), func(v *verifyVector) { v.SVID = svidTwoURIsFile }),
		vec("subject mismatch: SVID URI SAN not a SPIFFE ID (upper-case trust domain)", edit(func(m map[string]any) {
			m["sub"] = "spiffe://EXAMPLE.org/workload/vectors"
		}), string(ReasonSubjectMismatch), func(v *verifyVector) { v.SVID = svidInvalidIDFile }),
		// Signatures: both low and high s verify; r = 0 and s = n do not.
		vec("valid: low-S signature", lowS, valid),
		vec("valid: high-S signature (n - s)", highS, valid),
		vec("signature invalid: r = 0", setRS(t, valid0, big.NewInt(0), nil), string(ReasonSignatureInvalid)),
		vec("signature invalid: s = n", setRS(t, valid0, nil, elliptic.P256().Params().N), string(ReasonSignatureInvalid)),
		// Lifetime edge.
		vec("valid: exp - nbf of exactly 300 s", edit(func(m map[string]any) { m["exp"] = f.now.Add(-10*time.Second + MaxLifetime).Unix() }), valid),
		// Check order.
		vec("order: bad signature and wrong audience is signature_invalid", signRaw(t, other, esHeader(f.kid), claimsMap(t, f.claims())), string(ReasonSignatureInvalid),
			func(v *verifyVector) { v.Audience = "spiffe://example.org/node/other" }),
		vec("order: expired and wrong action is writ_expired", valid0, string(ReasonWritExpired), func(v *verifyVector) {
			v.Now = f.now.Add(55 * time.Second).Format(time.RFC3339)
			v.Action = vectorDigest(t, 2)
		}),
		vec("order: single-use with wrong audience is not consumed", once(nil), string(ReasonAudienceMismatch), func(v *verifyVector) {
			v.Consume = "fresh"
			v.Audience = "spiffe://example.org/node/other"
		}),
		vec("order: single-use with another PCR state is not consumed", once(nil), string(ReasonAttestationMismatch), func(v *verifyVector) {
			v.Consume = "fresh"
			v.PCRs = "sha256:" + strings.Repeat("00", 32)
		}),
	}
}

// stdAlphabet rewrites a token's claims part in the standard base64
// alphabet (+ and / for - and _), which it must hold.
func stdAlphabet(t *testing.T, token string) string {
	p := strings.Split(token, ".")
	if !strings.ContainsAny(p[1], "-_") {
		t.Fatalf("claims part %s has no - or _", p[1])
	}
	return p[0] + "." + strings.NewReplacer("-", "+", "_", "/").Replace(p[1]) + "." + p[2]
}

func act(m map[string]any) map[string]any { return m["act"].(map[string]any) }

func setSel(m map[string]any, sel string) { m["att"].(map[string]any)["sel"] = json.RawMessage(sel) }

func mustB64(t *testing.T, s string) []byte {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// spareBits sets the unused low bits of the last character of an
// unpadded base64url text of 64 bytes (86 characters: 4 spare bits).
// Lenient decoders decode the same bytes.
func spareBits(p string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, p[len(p)-1])
	return p[:len(p)-1] + string(alphabet[last|0x0f])
}

// setRS replaces r or s (when not nil) of a token's signature.
func setRS(t *testing.T, token string, r, s *big.Int) string {
	i := strings.LastIndexByte(token, '.')
	sig := mustB64(t, token[i+1:])
	if r != nil {
		r.FillBytes(sig[:32])
	}
	if s != nil {
		s.FillBytes(sig[32:])
	}
	return token[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

// withS returns the token with s replaced by whichever of s and n - s is
// low (at most n/2) or high.
func withS(t *testing.T, token string, high bool) string {
	sig := mustB64(t, token[strings.LastIndexByte(token, '.')+1:])
	n := elliptic.P256().Params().N
	s := new(big.Int).SetBytes(sig[32:])
	half := new(big.Int).Rsh(n, 1)
	if (s.Cmp(half) > 0) != high {
		s.Sub(n, s)
	}
	return setRS(t, token, nil, s)
}

// sizedToken signs a valid writ padded with an unknown claim to exactly
// size bytes (or the first size after it that base64url can reach).
func sizedToken(t *testing.T, f *fixture, size int) string {
	for pad := 0; ; pad++ {
		m := claimsMap(t, f.claims())
		m["pad"] = strings.Repeat("p", pad)
		token := signRaw(t, f.key, esHeader(f.kid), m)
		if len(token) >= size {
			return token
		}
	}
}

// bundleVectors are trust bundle documents with the writ kids a verifier
// takes from each, or "refused" (docs/writ-format.md section 7).
func bundleVectors(t *testing.T, f *fixture, other *ecdsa.PrivateKey) []bundleVector {
	jwk := func(e func(map[string]any)) string {
		b, err := jose.JSONWebKey{Key: &f.key.PublicKey, KeyID: f.kid, Use: KeyUse, Algorithm: "ES256"}.MarshalJSON()
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if e != nil {
			e(m)
		}
		out, _ := json.Marshal(m)
		return string(out)
	}
	doc := func(entries ...string) string { return `{"keys":[` + strings.Join(entries, ",") + `]}` }
	otherKID := KeyID(&other.PublicKey)
	otherJWK, _ := jose.JSONWebKey{Key: &other.PublicKey, KeyID: otherKID, Use: KeyUse, Algorithm: "ES256"}.MarshalJSON()
	x := jwkCoordinate(t, jwk(nil), "x")
	keys := func(name, document string, kids ...string) bundleVector {
		if kids == nil {
			kids = []string{}
		}
		return bundleVector{Name: name, Document: document, Expect: "keys", KIDs: &kids}
	}
	refused := func(name, document string) bundleVector {
		return bundleVector{Name: name, Document: document, Expect: "refused"}
	}
	both := []string{f.kid, otherKID}
	if both[0] > both[1] {
		both[0], both[1] = both[1], both[0]
	}
	return []bundleVector{
		keys("one writ key", doc(jwk(nil)), f.kid),
		keys("two writ keys (rotation)", doc(jwk(nil), string(otherJWK)), both...),
		keys("no keys", doc()),
		keys("alg absent", doc(jwk(func(m map[string]any) { delete(m, "alg") })), f.kid),
		keys("key_ops [verify]", doc(jwk(func(m map[string]any) { m["key_ops"] = []string{"verify"} })), f.kid),
		keys("use Writ is another use: skipped", doc(jwk(func(m map[string]any) { m["use"] = "Writ" })), []string{}...),
		keys("use sig is another use: skipped, even unparseable", doc(`{"use":"sig","kty":"weird"}`, jwk(nil)), f.kid),
		keys("use absent: skipped", doc(jwk(func(m map[string]any) { delete(m, "use") })), []string{}...),
		refused("not an object", `[]`),
		refused("no keys member", `{}`),
		refused("keys twice", `{"keys":[],"keys":[]}`),
		refused("kid not the key's derived id", doc(jwk(func(m map[string]any) { m["kid"] = "writ-key-1" }))),
		refused("kid absent", doc(jwk(func(m map[string]any) { delete(m, "kid") }))),
		refused("kid twice", doc(jwk(nil), jwk(nil))),
		refused("alg ES384", doc(jwk(func(m map[string]any) { m["alg"] = "ES384" }))),
		refused("alg null", doc(jwk(func(m map[string]any) { m["alg"] = nil }))),
		refused("key_ops [sign]", doc(jwk(func(m map[string]any) { m["key_ops"] = []string{"sign"} }))),
		refused("key_ops [verify, sign]", doc(jwk(func(m map[string]any) { m["key_ops"] = []string{"verify", "sign"} }))),
		refused("x of 31 bytes (leading zero byte dropped)", doc(jwk(func(m map[string]any) { m["x"] = base64.RawURLEncoding.EncodeToString(x[1:]) }))),
		refused("x of 33 bytes (leading zero byte added)", doc(jwk(func(m map[string]any) { m["x"] = base64.RawURLEncoding.EncodeToString(append([]byte{0}, x...)) }))),
		refused("x padded", doc(jwk(func(m map[string]any) { m["x"] = m["x"].(string) + "=" }))),
		refused("x with non-zero spare bits", doc(jwk(func(m map[string]any) { m["x"] = spareBitsAny(m["x"].(string)) }))),
		refused("d present", doc(jwk(func(m map[string]any) {
			d, err := f.key.Bytes()
			if err != nil {
				t.Fatal(err)
			}
			m["d"] = base64.RawURLEncoding.EncodeToString(d)
		}))),
		refused("crv P-384", doc(jwk(func(m map[string]any) { m["crv"] = "P-384" }))),
		refused("kty ec (lower case)", doc(jwk(func(m map[string]any) { m["kty"] = "ec" }))),
		refused("point not on the curve", doc(jwk(func(m map[string]any) { m["y"] = m["x"] }))),
	}
}

// jwkCoordinate decodes coordinate name of a JWK.
func jwkCoordinate(t *testing.T, jwk, name string) []byte {
	var m map[string]any
	if err := json.Unmarshal([]byte(jwk), &m); err != nil {
		t.Fatal(err)
	}
	return mustB64(t, m[name].(string))
}

// spareBitsAny sets the spare bits of an unpadded base64url text of 32
// bytes (43 characters: 2 spare bits).
func spareBitsAny(p string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, p[len(p)-1])
	return p[:len(p)-1] + string(alphabet[last|0x03])
}
