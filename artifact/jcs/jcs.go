// Package jcs is the JSON Canonicalization Scheme of RFC 8785: one exact
// byte form for a JSON value, so that a digest over it does not depend on
// key order, whitespace, escapes or number spelling.
//
// It parses strictly (RFC 8259, UTF-8) and refuses what JCS cannot
// represent, each with a reason code: a duplicate member name at any
// level, a number outside the IEEE-754 double range, a lone surrogate
// (escaped or as bytes), invalid UTF-8, and nesting deeper than MaxDepth.
package jcs

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// MaxDepth bounds the nesting of arrays and objects.
const MaxDepth = 64

// Reason is a stable reason code for input JCS refuses.
type Reason string

// The reason codes.
const (
	ReasonSyntax        Reason = "jcs_syntax"         // not one JSON value (RFC 8259)
	ReasonDuplicateKey  Reason = "jcs_duplicate_key"  // an object names a member twice
	ReasonNumberRange   Reason = "jcs_number_range"   // a number beyond ±1.7976931348623157e308
	ReasonLoneSurrogate Reason = "jcs_lone_surrogate" // a \uD800–\uDFFF escape not in a pair
	ReasonInvalidUTF8   Reason = "jcs_invalid_utf8"   // bytes that are not UTF-8
	ReasonTooDeep       Reason = "jcs_too_deep"       // nested deeper than MaxDepth
)

// Error is a refusal with its reason code and the byte offset.
type Error struct {
	Reason Reason
	Offset int
	Detail string
}

func (e *Error) Error() string {
	return fmt.Sprintf("jcs: %s at byte %d: %s", e.Reason, e.Offset, e.Detail)
}

// ReasonOf returns the reason code of a jcs error, or "".
func ReasonOf(err error) Reason {
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return ""
}

// Transform returns the canonical form of the JSON text data.
func Transform(data []byte) ([]byte, error) {
	v, err := Parse(data)
	if err != nil {
		return nil, err
	}
	return Append(nil, v), nil
}

// Parse parses the JSON text data into nil, bool, float64, string,
// []any and map[string]any, refusing what JCS cannot represent.
func Parse(data []byte) (any, error) {
	p := parser{data: data}
	p.space()
	v, err := p.value(0)
	if err != nil {
		return nil, err
	}
	p.space()
	if p.i != len(p.data) {
		return nil, p.fail(ReasonSyntax, "data after the value")
	}
	return v, nil
}

// Append appends the canonical form of v (as Parse returns) to b. Maps are
// written with their members sorted by the UTF-16 code units of their
// names. Append panics on other types or a non-finite number: it is for
// values Parse produced.
func Append(b []byte, v any) []byte {
	switch v := v.(type) {
	case nil:
		return append(b, "null"...)
	case bool:
		return strconv.AppendBool(b, v)
	case float64:
		return AppendNumber(b, v)
	case string:
		return AppendString(b, v)
	case []any:
		b = append(b, '[')
		for i, e := range v {
			if i > 0 {
				b = append(b, ',')
			}
			b = Append(b, e)
		}
		return append(b, ']')
	case map[string]any:
		names := make([]string, 0, len(v))
		for k := range v {
			names = append(names, k)
		}
		slices.SortFunc(names, compareUTF16)
		b = append(b, '{')
		for i, k := range names {
			if i > 0 {
				b = append(b, ',')
			}
			b = AppendString(b, k)
			b = append(b, ':')
			b = Append(b, v[k])
		}
		return append(b, '}')
	}
	panic(fmt.Sprintf("jcs: cannot encode %T", v))
}

// compareUTF16 orders strings by their UTF-16 code units (RFC 8785 §3.2.3).
// Code points below U+10000 compare as in UTF-8, except that U+E000–U+FFFF
// sort after the surrogate pairs of U+10000 and above.
func compareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			return cmpUnit(firstUnit(ra), firstUnit(rb), ra, rb)
		}
		a, b = a[na:], b[nb:]
	}
	return len(a) - len(b)
}

func firstUnit(r rune) rune {
	if r >= 0x10000 {
		hi, _ := utf16.EncodeRune(r)
		return hi
	}
	return r
}

func cmpUnit(ua, ub, ra, rb rune) int {
	if ua != ub {
		return int(ua) - int(ub)
	}
	// Two supplementary code points with the same high surrogate: the low
	// surrogates order them as the code points do.
	return int(ra) - int(rb)
}

// AppendString appends s as a JCS string: `"` and `\` escaped, U+0008,
// U+0009, U+000A, U+000C, U+000D as \b \t \n \f \r, other controls below
// U+0020 as \u00xx (lower-case hex), everything else as its UTF-8 bytes.
func AppendString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\b':
			b = append(b, '\\', 'b')
		case c == '\t':
			b = append(b, '\\', 't')
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\f':
			b = append(b, '\\', 'f')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// AppendNumber appends f as ECMAScript's Number.prototype.toString writes
// it (RFC 8785 §3.2.2.3): the shortest digits that round-trip, plain
// notation for exponents in [-7, 21), otherwise d.ddde±n; -0 as 0.
func AppendNumber(b []byte, f float64) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		panic("jcs: non-finite number")
	}
	if f == 0 {
		return append(b, '0')
	}
	if f < 0 {
		b = append(b, '-')
		f = -f
	}
	// Shortest round-trip digits and exponent: d.ddddde±x.
	e := strconv.AppendFloat(nil, f, 'e', -1, 64)
	mant, exp, _ := strings.Cut(string(e), "e")
	digits := strings.Replace(mant, ".", "", 1)
	x, _ := strconv.Atoi(exp)
	k, n := len(digits), x+1 // value = 0.digits × 10^n
	switch {
	case k <= n && n <= 21:
		b = append(b, digits...)
		for range n - k {
			b = append(b, '0')
		}
	case 0 < n && n <= 21:
		b = append(b, digits[:n]...)
		b = append(b, '.')
		b = append(b, digits[n:]...)
	case -6 < n && n <= 0:
		b = append(b, '0', '.')
		for range -n {
			b = append(b, '0')
		}
		b = append(b, digits...)
	default:
		b = append(b, digits[0])
		if k > 1 {
			b = append(b, '.')
			b = append(b, digits[1:]...)
		}
		b = append(b, 'e')
		if n-1 >= 0 {
			b = append(b, '+')
		}
		b = strconv.AppendInt(b, int64(n-1), 10)
	}
	return b
}

type parser struct {
	data []byte
	i    int
}

func (p *parser) fail(r Reason, format string, args ...any) error {
	return &Error{Reason: r, Offset: p.i, Detail: fmt.Sprintf(format, args...)}
}

func (p *parser) space() {
	for p.i < len(p.data) {
		switch p.data[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *parser) value(depth int) (any, error) {
	if p.i >= len(p.data) {
		return nil, p.fail(ReasonSyntax, "unexpected end")
	}
	switch c := p.data[p.i]; {
	case c == '{':
		return p.object(depth + 1)
	case c == '[':
		return p.array(depth + 1)
	case c == '"':
		return p.string()
	case c == '-' || c >= '0' && c <= '9':
		return p.number()
	case p.literal("true"):
		return true, nil
	case p.literal("false"):
		return false, nil
	case p.literal("null"):
		return nil, nil
	}
	return nil, p.fail(ReasonSyntax, "unexpected byte %q", p.data[p.i])
}

func (p *parser) literal(s string) bool {
	if bytes.HasPrefix(p.data[p.i:], []byte(s)) {
		p.i += len(s)
		return true
	}
	return false
}

func (p *parser) object(depth int) (any, error) {
	if depth > MaxDepth {
		return nil, p.fail(ReasonTooDeep, "nested deeper than %d", MaxDepth)
	}
	p.i++ // {
	m := map[string]any{}
	p.space()
	if p.i < len(p.data) && p.data[p.i] == '}' {
		p.i++
		return m, nil
	}
	for {
		p.space()
		if p.i >= len(p.data) || p.data[p.i] != '"' {
			return nil, p.fail(ReasonSyntax, "expected a member name")
		}
		at := p.i
		k, err := p.string()
		if err != nil {
			return nil, err
		}
		if _, dup := m[k]; dup {
			return nil, &Error{Reason: ReasonDuplicateKey, Offset: at, Detail: fmt.Sprintf("member %q named twice", k)}
		}
		p.space()
		if p.i >= len(p.data) || p.data[p.i] != ':' {
			return nil, p.fail(ReasonSyntax, "expected ':'")
		}
		p.i++
		p.space()
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		m[k] = v
		p.space()
		if p.i >= len(p.data) {
			return nil, p.fail(ReasonSyntax, "unexpected end in an object")
		}
		switch p.data[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return m, nil
		default:
			return nil, p.fail(ReasonSyntax, "expected ',' or '}'")
		}
	}
}

func (p *parser) array(depth int) (any, error) {
	if depth > MaxDepth {
		return nil, p.fail(ReasonTooDeep, "nested deeper than %d", MaxDepth)
	}
	p.i++ // [
	a := []any{}
	p.space()
	if p.i < len(p.data) && p.data[p.i] == ']' {
		p.i++
		return a, nil
	}
	for {
		p.space()
		v, err := p.value(depth)
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		p.space()
		if p.i >= len(p.data) {
			return nil, p.fail(ReasonSyntax, "unexpected end in an array")
		}
		switch p.data[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			return a, nil
		default:
			return nil, p.fail(ReasonSyntax, "expected ',' or ']'")
		}
	}
}

// number parses the RFC 8259 number grammar:
// -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?
func (p *parser) number() (any, error) {
	start := p.i
	digits := func() int {
		n := 0
		for p.i < len(p.data) && p.data[p.i] >= '0' && p.data[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	if p.data[p.i] == '-' {
		p.i++
	}
	switch {
	case p.i < len(p.data) && p.data[p.i] == '0':
		p.i++
	case digits() == 0:
		return nil, p.fail(ReasonSyntax, "a number without digits")
	}
	if p.i < len(p.data) && p.data[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return nil, p.fail(ReasonSyntax, "no digits after '.'")
		}
	}
	if p.i < len(p.data) && (p.data[p.i] == 'e' || p.data[p.i] == 'E') {
		p.i++
		if p.i < len(p.data) && (p.data[p.i] == '+' || p.data[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return nil, p.fail(ReasonSyntax, "no digits in the exponent")
		}
	}
	f, err := strconv.ParseFloat(string(p.data[start:p.i]), 64)
	if err != nil || math.IsInf(f, 0) {
		return nil, &Error{Reason: ReasonNumberRange, Offset: start, Detail: fmt.Sprintf("%s is not an IEEE-754 double", p.data[start:p.i])}
	}
	return f, nil
}

func (p *parser) string() (string, error) {
	p.i++ // "
	// Fast path: printable ASCII with no escape.
	for j := p.i; j < len(p.data); j++ {
		c := p.data[j]
		if c == '"' {
			s := string(p.data[p.i:j])
			p.i = j + 1
			return s, nil
		}
		if c == '\\' || c < 0x20 || c >= utf8.RuneSelf {
			break
		}
	}
	var sb strings.Builder
	for {
		if p.i >= len(p.data) {
			return "", p.fail(ReasonSyntax, "unterminated string")
		}
		c := p.data[p.i]
		switch {
		case c == '"':
			p.i++
			return sb.String(), nil
		case c == '\\':
			r, err := p.escape()
			if err != nil {
				return "", err
			}
			sb.WriteRune(r)
		case c < 0x20:
			return "", p.fail(ReasonSyntax, "control character in a string")
		case c < utf8.RuneSelf:
			sb.WriteByte(c)
			p.i++
		default:
			r, n := utf8.DecodeRune(p.data[p.i:])
			if r == utf8.RuneError && n <= 1 {
				return "", p.fail(ReasonInvalidUTF8, "invalid UTF-8")
			}
			sb.Write(p.data[p.i : p.i+n])
			p.i += n
		}
	}
}

// escape decodes one escape sequence, a surrogate pair whole.
func (p *parser) escape() (rune, error) {
	if p.i+1 >= len(p.data) {
		return 0, p.fail(ReasonSyntax, "unterminated escape")
	}
	c := p.data[p.i+1]
	p.i += 2
	switch c {
	case '"', '\\', '/':
		return rune(c), nil
	case 'b':
		return '\b', nil
	case 'f':
		return '\f', nil
	case 'n':
		return '\n', nil
	case 'r':
		return '\r', nil
	case 't':
		return '\t', nil
	case 'u':
	default:
		return 0, p.fail(ReasonSyntax, "unknown escape \\%c", c)
	}
	r, err := p.hex4()
	if err != nil {
		return 0, err
	}
	if !utf16.IsSurrogate(r) {
		return r, nil
	}
	at := p.i - 6
	if r < 0xdc00 && p.i+1 < len(p.data) && p.data[p.i] == '\\' && p.data[p.i+1] == 'u' {
		p.i += 2
		lo, err := p.hex4()
		if err != nil {
			return 0, err
		}
		if pair := utf16.DecodeRune(r, lo); pair != utf8.RuneError {
			return pair, nil
		}
	}
	return 0, &Error{Reason: ReasonLoneSurrogate, Offset: at, Detail: fmt.Sprintf("\\u%04x is not half of a surrogate pair", r)}
}

func (p *parser) hex4() (rune, error) {
	if p.i+4 > len(p.data) {
		return 0, p.fail(ReasonSyntax, "short \\u escape")
	}
	var r rune
	for _, c := range p.data[p.i : p.i+4] {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, p.fail(ReasonSyntax, "bad hex digit in \\u escape")
		}
		r = r<<4 | rune(d)
	}
	p.i += 4
	return r, nil
}
