package artifact

// The writ JSON and token parser as it was before the hand-written
// scanner (json.go, verify.go), kept only as the reference that
// FuzzParseReference and TestParseReference compare the scanner with:
// both must accept and refuse exactly the same texts.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// refDecodeClaims decodes a writ payload strictly: a JSON object in UTF-8,
// member names matched exactly, no name twice, each claim of its type.
// Claims it does not know are ignored.
func refDecodeClaims(payload []byte) (*Claims, error) {
	m, err := refObject(payload)
	if err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	d := refDecoder{m: m}
	c := &Claims{
		Issuer:    d.str("iss"),
		Subject:   d.str("sub"),
		Audience:  d.audience(),
		IssuedAt:  d.date("iat"),
		NotBefore: d.date("nbf"),
		Expiry:    d.date("exp"),
		ID:        d.str("jti"),
		Parent:    d.optStr("par"),
		Once:      d.boolean("once"),
	}
	act, att, cnf := d.refObject("act"), d.refObject("att"), d.refObject("cnf")
	c.Action = ActionClaim{Kind: act.str("kind"), Digest: act.str("digest"), Display: act.optStr("display")}
	c.Att = Attestation{Node: att.str("node"), Result: att.str("result"), PCRs: att.str("pcrs"),
		Sel: att.ints("sel"), Policy: att.str("policy")}
	c.Cnf = Confirmation{X5TS256: cnf.str("x5t#S256")}
	for _, sub := range []*refDecoder{&d, act, att, cnf} {
		if sub.err != nil {
			return nil, sub.err
		}
	}
	return c, nil
}

// refDecoder reads typed members of one JSON refObject, keeping the first error.
// An absent member reads as its zero value; Claims.check catches the
// required ones.
type refDecoder struct {
	name string
	m    map[string]json.RawMessage
	err  error
}

func (d *refDecoder) get(key string, first byte, what string) json.RawMessage {
	raw, ok := d.m[key]
	if !ok || d.err != nil {
		return nil
	}
	if raw[0] != first {
		d.err = fmt.Errorf("%q is not %s", d.name+key, what)
		return nil
	}
	return raw
}

func (d *refDecoder) str(key string) string {
	raw := d.get(key, '"', "a string")
	if raw == nil {
		return ""
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		// Valid JSON (refObject checked it) with no escape: the bytes
		// between the quotes are the string.
		return string(raw[1 : len(raw)-1])
	}
	var s string
	d.unmarshal(key, raw, &s)
	return s
}

// optStr reads an optional string member: absent, or a non-empty string.
func (d *refDecoder) optStr(key string) string {
	s := d.str(key)
	if _, ok := d.m[key]; ok && s == "" && d.err == nil {
		d.err = fmt.Errorf("%q is present but empty", d.name+key)
	}
	return s
}

func (d *refDecoder) boolean(key string) bool {
	raw, ok := d.m[key]
	switch {
	case !ok || d.err != nil:
	case string(raw) == "true":
		return true
	case string(raw) != "false":
		d.err = fmt.Errorf("%q is not a boolean", d.name+key)
	}
	return false
}

// date reads a NumericDate: an refInteger number of seconds since the epoch.
func (d *refDecoder) date(key string) time.Time {
	raw, ok := d.m[key]
	if !ok || d.err != nil {
		return time.Time{}
	}
	n, ok := refInteger(raw)
	if !ok {
		d.err = fmt.Errorf("%q is not an refInteger NumericDate in 0..%d", d.name+key, maxInteger)
		return time.Time{}
	}
	return time.Unix(n, 0).UTC()
}

// refInteger reads a JSON number written as a non-negative refInteger, in
// writ syntax: 0 or a digit 1-9 followed by digits (no sign, fraction,
// exponent or leading zero), at most maxInteger.
func refInteger(raw []byte) (int64, bool) {
	if len(raw) == 0 || len(raw) > 16 || (raw[0] == '0' && len(raw) > 1) {
		return 0, false
	}
	var n int64
	for _, c := range raw {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, n <= maxInteger
}

func (d *refDecoder) ints(key string) []int {
	raw := d.get(key, '[', "an array")
	if raw == nil {
		return nil
	}
	var elems []json.RawMessage
	d.unmarshal(key, raw, &elems)
	v := make([]int, 0, len(elems))
	for _, e := range elems {
		n, ok := refInteger(e)
		if !ok {
			d.err = fmt.Errorf("%q holds %s, not an refInteger in 0..%d", d.name+key, e, maxInteger)
			return nil
		}
		v = append(v, int(n))
	}
	return v
}

// audience reads aud: a string, or an array of exactly one string.
func (d *refDecoder) audience() string {
	raw, ok := d.m["aud"]
	if !ok || d.err != nil {
		return ""
	}
	if raw[0] == '"' {
		return d.str("aud")
	}
	var v []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &v) != nil || len(v) != 1 || v[0][0] != '"' {
		d.err = errors.New(`"aud" is neither a string nor an array of one string`)
		return ""
	}
	var s string
	d.unmarshal("aud", v[0], &s)
	return s
}

// object reads a member that is itself an refObject, as a refDecoder; an absent
// one reads as an empty refObject.
func (d *refDecoder) refObject(key string) *refDecoder {
	sub := &refDecoder{name: d.name + key + ".", m: map[string]json.RawMessage{}}
	if raw := d.get(key, '{', "an refObject"); raw != nil {
		m, err := refObject(raw)
		if err != nil {
			d.err = fmt.Errorf("%q: %w", d.name+key, err)
		} else {
			sub.m = m
		}
	}
	return sub
}

func (d *refDecoder) unmarshal(key string, raw json.RawMessage, v any) {
	if err := json.Unmarshal(raw, v); err != nil {
		d.err = fmt.Errorf("%q: %w", d.name+key, err)
	}
}

// refObject splits a JSON refObject into its members, refusing anything else,
// invalid UTF-8 (a byte-order mark included), and any refObject, at any
// depth, in which a member name occurs twice after unescaping (parsers
// disagree about which one counts), JSON nested deeper than maxDepth, and
// a string holding an escaped lone surrogate (parsers decode it
// differently).
func refObject(data []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("not UTF-8")
	}
	if bytes.HasPrefix(data, []byte("\xef\xbb\xbf")) {
		return nil, errors.New("a byte-order mark")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON refObject")
	}
	if err := refScan(data); err != nil {
		return nil, err
	}
	return m, nil
}

// refScan walks valid JSON text and refuses a member name repeated within
// one refObject, nesting deeper than maxDepth, and escaped lone surrogates.
func refScan(data []byte) error {
	type frame struct {
		refObject bool
		names     map[string]bool
		key       bool // the next string in this refObject is a member name
	}
	var stack []frame
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			if len(stack) == maxDepth {
				return fmt.Errorf("JSON nested deeper than %d", maxDepth)
			}
			stack = append(stack, frame{refObject: c == '{', key: c == '{'})
		case '}', ']':
			stack = stack[:len(stack)-1]
		case ',':
			if top := &stack[len(stack)-1]; top.refObject {
				top.key = true
			}
		case '"':
			end, escaped := refStringEnd(data, i)
			text := data[i : end+1]
			if escaped {
				if err := refCheckEscapes(text); err != nil {
					return err
				}
			}
			if len(stack) > 0 && stack[len(stack)-1].key {
				top := &stack[len(stack)-1]
				top.key = false
				name := string(text[1 : len(text)-1])
				if escaped {
					if err := json.Unmarshal(text, &name); err != nil {
						return err
					}
				}
				if top.names == nil {
					top.names = map[string]bool{}
				}
				if top.names[name] {
					return fmt.Errorf("member name %q occurs twice", name)
				}
				top.names[name] = true
			}
			i = end
		}
	}
	return nil
}

// refStringEnd returns the index of the quote closing the JSON string that
// opens at data[start], and whether the string holds an escape.
func refStringEnd(data []byte, start int) (end int, escaped bool) {
	for i := start + 1; i < len(data); i++ {
		switch data[i] {
		case '\\':
			escaped = true
			i++
		case '"':
			return i, escaped
		}
	}
	return len(data) - 1, escaped
}

// refCheckEscapes refuses a \u escape of a UTF-16 surrogate that is not a
// high surrogate immediately followed by an escaped low one.
func refCheckEscapes(text []byte) error {
	surrogate := func(i int) (rune, bool) {
		if i+6 > len(text) || text[i] != '\\' || text[i+1] != 'u' {
			return 0, false
		}
		r, err := strconv.ParseUint(string(text[i+2:i+6]), 16, 16)
		return rune(r), err == nil && r >= 0xd800 && r <= 0xdfff
	}
	for i := 0; i < len(text); i++ {
		if text[i] != '\\' {
			continue
		}
		r, ok := surrogate(i)
		switch {
		case !ok:
			i++ // skip the escaped character
		case r >= 0xdc00:
			return errors.New("a lone low surrogate escape")
		default:
			if low, ok := surrogate(i + 6); !ok || low < 0xdc00 {
				return errors.New("a lone high surrogate escape")
			}
			i += 11
		}
	}
	return nil
}

// refHeader is the part of a writ's JWS refHeader that is checked.
type refHeader struct {
	typ, alg, kid string
	sig           []byte // the decoded signature part
}

// refParse splits and decodes a compact JWS writ: exactly three base64url
// parts, a refHeader refObject with string typ, alg and kid and no crit or b64,
// and well-formed claims. Every failure is writ_malformed.
func refParse(token string) (refHeader, *Claims, error) {
	var h refHeader
	if len(token) > MaxTokenSize {
		return h, nil, fail(ReasonWritMalformed, "a writ of %d bytes, more than %d", len(token), MaxTokenSize)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return h, nil, fail(ReasonWritMalformed, "a writ is a compact JWS of three parts, not %d", len(parts))
	}
	var raw [3][]byte
	for i, p := range parts {
		b, err := refDecodeBase64URL(p)
		if err != nil {
			return h, nil, fail(ReasonWritMalformed, "part %d: %v", i+1, err)
		}
		raw[i] = b
	}
	h.sig = raw[2]
	m, err := refObject(raw[0])
	if err != nil {
		return h, nil, fail(ReasonWritMalformed, "refHeader: %v", err)
	}
	for _, k := range []string{"crit", "b64"} {
		if _, ok := m[k]; ok {
			return h, nil, fail(ReasonWritMalformed, "refHeader %s is not allowed", k)
		}
	}
	d := refDecoder{m: m}
	h.typ, h.alg, h.kid = d.str("typ"), d.str("alg"), d.str("kid")
	if d.err != nil {
		return h, nil, fail(ReasonWritMalformed, "refHeader: %v", d.err)
	}
	c, err := refDecodeClaims(raw[1])
	if err != nil {
		return h, nil, fail(ReasonWritMalformed, "%v", err)
	}
	if err := c.check(); err != nil {
		return h, nil, err
	}
	return h, c, nil
}

// refDecodeBase64URL decodes canonical unpadded base64url (RFC 4648 section
// 5): only the 64 alphabet characters (no padding, white space or line
// breaks), a length that is not 1 modulo 4, and zero spare bits in the
// last character. The empty string is the empty byte string.
func refDecodeBase64URL(p string) ([]byte, error) {
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

// sameParse reports how parse and refParse differ on token, or "".
func sameParse(token string) string {
	h, c, err := parse(token)
	rh, rc, rerr := refParse(token)
	switch {
	case (err == nil) != (rerr == nil):
		return fmt.Sprintf("parse: %v, reference: %v", err, rerr)
	case err != nil && ReasonOf(err) != ReasonOf(rerr):
		return fmt.Sprintf("parse: %v, reference: %v", err, rerr)
	case err != nil:
		return ""
	case h.typ != rh.typ || h.alg != rh.alg || h.kid != rh.kid || !bytes.Equal(h.sig, rh.sig):
		return fmt.Sprintf("header %+v, reference %+v", h, rh)
	case !reflect.DeepEqual(c, rc):
		return fmt.Sprintf("claims %+v, reference %+v", c, rc)
	}
	return ""
}

// sameObject reports how object and refObject differ on text, or "".
func sameObject(text []byte) string {
	m, err := object(text)
	rm, rerr := refObject(text)
	switch {
	case (err == nil) != (rerr == nil):
		return fmt.Sprintf("object: %v, reference: %v", err, rerr)
	case err == nil && !reflect.DeepEqual(m, rm):
		return fmt.Sprintf("object: %q, reference: %q", m, rm)
	}
	return ""
}

// referenceTexts are JSON texts around the edges of the grammar and the
// writ rules.
var referenceTexts = []string{
	`{}`, ` {} `, "\t{\n}\r", `{"a":1}`, `{"a" : 1 , "b" : [ 1 , 2 ] }`, `{"a":-0.5e+3}`, `{"a":-0}`,
	`{"a":01}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1E-}`, `{"a":-}`, `{"a":+1}`, `{"a":1.5E7}`,
	`{"a":true,"b":false,"c":null}`, `{"a":tru}`, `{"a":truex}`, `{"a":nul}`, `{"a":True}`,
	`{"a":"\/\b\f\n\r\t\"\\"}`, `{"a":"\x"}`, `{"a":"\u00"}`, `{"a":"\u00G0"}`, `{"a":"` + "\x01" + `"}`,
	`{"a":"` + "\x7f" + `"}`, `{"a":"é"}`, "{\"a\":\"\xff\"}", `{"a":"\ud83d\ude00"}`, `{"a":"\uD83D\uDE00"}`,
	`{"a":"\ud800\u0041"}`, `{"a":"\ud800\\u0041"}`, `{"a":"\udbff\udfff"}`, `{"a":"\ud800"`, `{"a"`, `{"a":`,
	`{"a":1,}`, `{,"a":1}`, `{"a":1 "b":2}`, `{"a" 1}`, `{a:1}`, `{'a':1}`, `{"a":[1,]}`, `{"a":[,1]}`,
	`{"a":[]}`, `{"a":{}}`, `{"":1}`, `{"":1,"":2}`, `{"a\u0000":1,"a":2}`, `{"\u00e9":1,"é":2}`,
	`{"a":1}x`, `{"a":1} {}`, "\xef\xbb\xbf{}", `[]`, `null`, `"a"`, `1`, ``, ` `, `{`, `}`,
	`{"a":[{"b":1,"c":{"b":1}}],"b":{"a":1}}`,
}

// TestParseReference compares the scanner with the reference parser on
// every writ vector, on the texts above, and on those texts as writ
// claims and headers.
func TestParseReference(t *testing.T) {
	for _, v := range readVectors(t).Writs {
		if d := sameParse(v.Token); d != "" {
			t.Errorf("vector %s: %s", v.Name, d)
		}
	}
	for _, v := range readVectors(t).Bundles {
		if d := sameObject([]byte(v.Document)); d != "" {
			t.Errorf("bundle vector %s: %s", v.Name, d)
		}
	}
	b64 := base64.RawURLEncoding.EncodeToString
	header := b64([]byte(`{"alg":"ES256","kid":"k","typ":"writ+jwt"}`))
	sig := b64(make([]byte, 64))
	for _, text := range referenceTexts {
		if d := sameObject([]byte(text)); d != "" {
			t.Errorf("%q: %s", text, d)
		}
		for _, token := range []string{header + "." + b64([]byte(text)) + "." + sig, b64([]byte(text)) + ".e30." + sig} {
			if d := sameParse(token); d != "" {
				t.Errorf("%q: %s", text, d)
			}
		}
	}
	deep := func(n int) string { return `{"a":` + strings.Repeat("[", n) + strings.Repeat("]", n) + `}` }
	many := func(n int, dup bool) string {
		var b strings.Builder
		b.WriteString("{")
		for i := range n {
			fmt.Fprintf(&b, `"m%d":%d,`, i, i)
		}
		if dup {
			b.WriteString(`"m7":0,`)
		}
		b.WriteString(`"z":[{"a":1}]}`)
		return b.String()
	}
	for _, text := range []string{deep(maxDepth - 1), deep(maxDepth), many(15, false), many(15, true), many(40, false), many(40, true)} {
		if d := sameObject([]byte(text)); d != "" {
			t.Errorf("%q: %s", text, d)
		}
	}
}

// FuzzParseReference checks that the scanner accepts and refuses exactly
// what the reference parser does, with the same result, as a JSON object
// and as writ claims.
func FuzzParseReference(f *testing.F) {
	for _, v := range readVectors(f).Writs {
		f.Add(v.Token)
		if parts := strings.Split(v.Token, "."); len(parts) == 3 {
			if b, err := base64.RawURLEncoding.DecodeString(parts[1]); err == nil {
				f.Add(string(b))
			}
		}
	}
	for _, text := range referenceTexts {
		f.Add(text)
	}
	header := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"ES256","kid":"k","typ":"writ+jwt"}`))
	sig := base64.RawURLEncoding.EncodeToString(make([]byte, 64))
	f.Fuzz(func(t *testing.T, s string) {
		if d := sameObject([]byte(s)); d != "" {
			t.Fatalf("%q: %s", s, d)
		}
		if d := sameParse(s); d != "" {
			t.Fatalf("token %q: %s", s, d)
		}
		if d := sameParse(header + "." + base64.RawURLEncoding.EncodeToString([]byte(s)) + "." + sig); d != "" {
			t.Fatalf("claims %q: %s", s, d)
		}
	})
}
