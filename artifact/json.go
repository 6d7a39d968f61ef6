package artifact

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// wireClaims is the JSON form of Claims, in the order Sign writes it.
type wireClaims struct {
	Issuer    string       `json:"iss"`
	Subject   string       `json:"sub"`
	Audience  string       `json:"aud"`
	IssuedAt  int64        `json:"iat"`
	NotBefore int64        `json:"nbf"`
	Expiry    int64        `json:"exp"`
	ID        string       `json:"jti"`
	Action    ActionClaim  `json:"act"`
	Att       Attestation  `json:"att"`
	Cnf       Confirmation `json:"cnf"`
	Parent    string       `json:"par,omitempty"`
	Once      bool         `json:"once,omitempty"`
}

func encodeClaims(c *Claims) ([]byte, error) {
	return json.Marshal(wireClaims{
		Issuer: c.Issuer, Subject: c.Subject, Audience: c.Audience,
		IssuedAt: c.IssuedAt.Unix(), NotBefore: c.NotBefore.Unix(), Expiry: c.Expiry.Unix(),
		ID: c.ID, Action: c.Action, Att: c.Att, Cnf: c.Cnf, Parent: c.Parent, Once: c.Once,
	})
}

// decodeClaims decodes a writ payload strictly: a JSON object in UTF-8,
// member names matched exactly, no name twice, each claim of its type.
// Claims it does not know are ignored. The strings of the claims share
// payload's memory.
func decodeClaims(payload string, sc *scratch) (*Claims, error) {
	m, err := parseObject(payload, sc)
	if err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	d := decoder{m: m, sc: sc}
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
	act, att, cnf := d.object("act"), d.object("att"), d.object("cnf")
	c.Action = ActionClaim{Kind: act.str("kind"), Digest: act.str("digest"), Display: act.optStr("display")}
	c.Att = Attestation{Node: att.str("node"), Result: att.str("result"), PCRs: att.str("pcrs"),
		Sel: att.ints("sel"), Policy: att.str("policy")}
	c.Cnf = Confirmation{X5TS256: cnf.str("x5t#S256")}
	for _, sub := range []*decoder{&d, &act, &att, &cnf} {
		if sub.err != nil {
			return nil, sub.err
		}
	}
	return c, nil
}

// decoder reads typed members of one JSON object, keeping the first error.
// An absent member reads as its zero value; Claims.check catches the
// required ones.
type decoder struct {
	name string // the object's path from the outermost one; "" for that
	m    members
	sc   *scratch // for the objects inside
	err  error
}

// path returns the path of member key, for messages.
func (d *decoder) path(key string) string {
	if d.name == "" {
		return key
	}
	return d.name + "." + key
}

func (d *decoder) get(key string, first byte, what string) string {
	raw, ok := d.m.get(key)
	if !ok || d.err != nil {
		return ""
	}
	if raw[0] != first {
		d.err = fmt.Errorf("%q is not %s", d.path(key), what)
		return ""
	}
	return raw
}

func (d *decoder) str(key string) string {
	raw := d.get(key, '"', "a string")
	if raw == "" {
		return ""
	}
	return unquote(raw)
}

// optStr reads an optional string member: absent, or a non-empty string.
func (d *decoder) optStr(key string) string {
	s := d.str(key)
	if _, ok := d.m.get(key); ok && s == "" && d.err == nil {
		d.err = fmt.Errorf("%q is present but empty", d.path(key))
	}
	return s
}

func (d *decoder) boolean(key string) bool {
	raw, ok := d.m.get(key)
	switch {
	case !ok || d.err != nil:
	case raw == "true":
		return true
	case raw != "false":
		d.err = fmt.Errorf("%q is not a boolean", d.path(key))
	}
	return false
}

// date reads a NumericDate: an integer number of seconds since the epoch.
func (d *decoder) date(key string) time.Time {
	raw, ok := d.m.get(key)
	if !ok || d.err != nil {
		return time.Time{}
	}
	n, ok := integer(raw)
	if !ok {
		d.err = fmt.Errorf("%q is not an integer NumericDate in 0..%d", d.path(key), maxInteger)
		return time.Time{}
	}
	return time.Unix(n, 0).UTC()
}

// maxInteger is the largest integer a claim may hold: 2^53 - 1, the
// largest that every JSON parser (JavaScript's included) reads exactly.
const maxInteger = 1<<53 - 1

// integer reads a JSON number written as a non-negative integer, in
// writ syntax: 0 or a digit 1-9 followed by digits (no sign, fraction,
// exponent or leading zero), at most maxInteger.
func integer[T string | []byte](raw T) (int64, bool) {
	if len(raw) == 0 || len(raw) > 16 || (raw[0] == '0' && len(raw) > 1) {
		return 0, false
	}
	var n int64
	for i := range len(raw) {
		c := raw[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, n <= maxInteger
}

func (d *decoder) ints(key string) []int {
	raw := d.get(key, '[', "an array")
	if raw == "" {
		return nil
	}
	var buf [maxPCR + 1]string
	elems := elements(raw, d.sc, buf[:0])
	v := make([]int, 0, len(elems))
	for _, e := range elems {
		n, ok := integer(e)
		if !ok {
			d.err = fmt.Errorf("%q holds %s, not an integer in 0..%d", d.path(key), e, maxInteger)
			return nil
		}
		v = append(v, int(n))
	}
	return v
}

// audience reads aud: a string, or an array of exactly one string.
func (d *decoder) audience() string {
	raw, ok := d.m.get("aud")
	if !ok || d.err != nil {
		return ""
	}
	if raw[0] == '"' {
		return d.str("aud")
	}
	var buf [2]string
	var v []string
	if raw[0] == '[' {
		v = elements(raw, d.sc, buf[:0])
	}
	if len(v) != 1 || v[0][0] != '"' {
		d.err = errors.New(`"aud" is neither a string nor an array of one string`)
		return ""
	}
	return unquote(v[0])
}

// object reads a member that is itself an object, as a decoder; an absent
// one reads as an empty object.
func (d *decoder) object(key string) decoder {
	sub := decoder{name: d.path(key), sc: d.sc}
	if raw := d.get(key, '{', "an object"); raw != "" {
		m, err := parseObject(raw, d.sc)
		if err != nil {
			d.err = fmt.Errorf("%q: %w", d.path(key), err)
		} else {
			sub.m = m
		}
	}
	return sub
}

// Size limits of a writ: the whole compact token, and how deeply its JSON
// may nest (the outermost object is depth 1).
const (
	MaxTokenSize = 8192
	maxDepth     = 16
)

// object splits a JSON object into its members (parseObject), for the
// trust bundle code, which edits and re-encodes documents.
func object(data []byte) (map[string]json.RawMessage, error) {
	ms, err := parseObject(string(data), newScratch())
	if err != nil {
		return nil, err
	}
	m := make(map[string]json.RawMessage, len(ms))
	for _, mb := range ms {
		m[mb.name] = json.RawMessage(mb.raw)
	}
	return m, nil
}

// member is one member of a JSON object: its name, unescaped, and the
// exact text of its value, without the white space around it.
type member struct{ name, raw string }

// members are the members of one JSON object in the order of the text,
// each name once.
type members []member

func (ms members) get(name string) (string, bool) {
	for _, m := range ms {
		if m.name == name {
			return m.raw, true
		}
	}
	return "", false
}

// scratch holds the buffers that the objects read from one writ or
// document share, so that reading them allocates little.
type scratch struct {
	members members  // every object's members, one object after another
	names   []string // member names of the objects being read, outermost first
	m       [32]member
	n       [32]string
}

func newScratch() *scratch {
	sc := new(scratch)
	sc.members, sc.names = sc.m[:0], sc.n[:0]
	return sc
}

// parseObject splits a JSON object (RFC 8259) into its members in one
// pass, refusing anything else: invalid UTF-8 (a byte-order mark
// included), any object, at any depth, in which a member name occurs twice
// after unescaping (parsers disagree about which one counts), JSON nested
// deeper than maxDepth, and a string holding an escaped lone surrogate
// (parsers decode it differently). The names and values share text's
// memory; the members are appended to sc.members.
func parseObject(text string, sc *scratch) (members, error) {
	if !utf8.ValidString(text) {
		return nil, errors.New("not UTF-8")
	}
	if strings.HasPrefix(text, "\xef\xbb\xbf") {
		return nil, errors.New("a byte-order mark")
	}
	sc.names = sc.names[:0] // left over by a refused object
	p := scanner{s: text, sc: sc}
	p.space()
	if p.peek() != '{' {
		return nil, errors.New("not a JSON object")
	}
	start := len(sc.members)
	if err := p.object(true); err != nil {
		return nil, err
	}
	if p.space(); p.i != len(p.s) {
		return nil, fmt.Errorf("text after the object at byte %d", p.i)
	}
	end := len(sc.members)
	return sc.members[start:end:end], nil
}

// elements appends to v the texts of the elements of raw, a JSON array
// that parseObject has accepted, without the white space around them.
func elements(raw string, sc *scratch, v []string) []string {
	p := scanner{s: raw, sc: sc, i: 1}
	p.space()
	for p.peek() != ']' {
		start := p.i
		if p.value() != nil {
			return nil // not reached: raw was checked
		}
		v = append(v, p.s[start:p.i])
		if p.space(); p.peek() == ',' {
			p.i++
			p.space()
		}
	}
	return v
}

// unquote returns the value of raw, a JSON string that parseObject has
// accepted.
func unquote(raw string) string {
	s := raw[1 : len(raw)-1]
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); {
		if s[i] != '\\' {
			b = append(b, s[i])
			i++
			continue
		}
		switch c := s[i+1]; c {
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, _ := hex4(s, i+2)
			i += 6
			if utf16.IsSurrogate(r) {
				low, _ := hex4(s, i+2)
				r = utf16.DecodeRune(r, low)
				i += 6
			}
			b = utf8.AppendRune(b, r)
			continue
		default: // " \ /
			b = append(b, c)
		}
		i += 2
	}
	return string(b)
}

// scanner reads JSON text, checking it as it goes.
type scanner struct {
	s     string
	i     int // the next byte to read
	depth int // of the object or array being read; the outermost is 1
	sc    *scratch
}

func (p *scanner) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *scanner) space() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *scanner) unexpected(want string) error {
	if p.i >= len(p.s) {
		return fmt.Errorf("the text ends where %s is expected", want)
	}
	return fmt.Errorf("%q at byte %d, expected %s", p.s[p.i], p.i, want)
}

func (p *scanner) value() error {
	switch c := p.peek(); {
	case c == '{':
		return p.object(false)
	case c == '[':
		return p.array()
	case c == '"':
		_, _, err := p.str()
		return err
	case c == 't':
		return p.literal("true")
	case c == 'f':
		return p.literal("false")
	case c == 'n':
		return p.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		return p.number()
	}
	return p.unexpected("a value")
}

// enter starts an object or array one level deeper.
func (p *scanner) enter() error {
	if p.depth == maxDepth {
		return fmt.Errorf("JSON nested deeper than %d", maxDepth)
	}
	p.depth++
	p.i++
	p.space()
	return nil
}

// object reads an object, appending its members to p.sc.members if keep.
func (p *scanner) object(keep bool) error {
	if err := p.enter(); err != nil {
		return err
	}
	if p.peek() == '}' {
		p.i++
		p.depth--
		return nil
	}
	base := len(p.sc.names)
	var seen map[string]bool // the names, once there are many
	for {
		if p.peek() != '"' {
			return p.unexpected("a member name")
		}
		name, escaped, err := p.str()
		if err != nil {
			return err
		}
		if escaped {
			name = unquote(name)
		} else {
			name = name[1 : len(name)-1]
		}
		names := p.sc.names[base:]
		switch {
		case seen == nil && len(names) < 16:
			for _, n := range names {
				if n == name {
					return fmt.Errorf("member name %q occurs twice", name)
				}
			}
		case seen == nil:
			seen = make(map[string]bool, 2*len(names))
			for _, n := range names {
				seen[n] = true
			}
			fallthrough
		default:
			if seen[name] {
				return fmt.Errorf("member name %q occurs twice", name)
			}
			seen[name] = true
		}
		p.sc.names = append(p.sc.names, name)
		if p.space(); p.peek() != ':' {
			return p.unexpected("':'")
		}
		p.i++
		p.space()
		start := p.i
		if err := p.value(); err != nil {
			return err
		}
		if keep {
			p.sc.members = append(p.sc.members, member{name: name, raw: p.s[start:p.i]})
		}
		p.space()
		switch p.peek() {
		case ',':
			p.i++
			p.space()
		case '}':
			p.i++
			p.depth--
			p.sc.names = p.sc.names[:base]
			return nil
		default:
			return p.unexpected("',' or '}'")
		}
	}
}

// array reads an array.
func (p *scanner) array() error {
	if err := p.enter(); err != nil {
		return err
	}
	if p.peek() == ']' {
		p.i++
		p.depth--
		return nil
	}
	for {
		if err := p.value(); err != nil {
			return err
		}
		p.space()
		switch p.peek() {
		case ',':
			p.i++
			p.space()
		case ']':
			p.i++
			p.depth--
			return nil
		default:
			return p.unexpected("',' or ']'")
		}
	}
}

// str reads a string and returns its text, quotes included, and whether
// it holds an escape. It refuses control characters, unknown escapes and
// an escaped UTF-16 surrogate that is not a high one immediately followed
// by an escaped low one.
func (p *scanner) str() (text string, escaped bool, err error) {
	start := p.i
	for p.i++; p.i < len(p.s); {
		switch c := p.s[p.i]; {
		case c == '"':
			p.i++
			return p.s[start:p.i], escaped, nil
		case c == '\\':
			escaped = true
			if err := p.escape(); err != nil {
				return "", false, err
			}
		case c < 0x20:
			return "", false, fmt.Errorf("control character %q in a string at byte %d", c, p.i)
		default:
			p.i++
		}
	}
	return "", false, errors.New("the text ends inside a string")
}

// escape reads the escape sequence at p.i.
func (p *scanner) escape() error {
	if p.i+1 >= len(p.s) {
		return errors.New("the text ends inside a string")
	}
	switch p.s[p.i+1] {
	case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		p.i += 2
		return nil
	case 'u':
	default:
		return fmt.Errorf("invalid escape at byte %d", p.i)
	}
	r, ok := hex4(p.s, p.i+2)
	if !ok {
		return fmt.Errorf("invalid \\u escape at byte %d", p.i)
	}
	p.i += 6
	switch {
	case !utf16.IsSurrogate(r):
		return nil
	case r >= 0xdc00:
		return errors.New("a lone low surrogate escape")
	}
	if p.i+1 < len(p.s) && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
		if low, ok := hex4(p.s, p.i+2); ok && low >= 0xdc00 && low <= 0xdfff {
			p.i += 6
			return nil
		}
	}
	return errors.New("a lone high surrogate escape")
}

// hex4 reads the four hexadecimal digits at s[i:].
func hex4(s string, i int) (rune, bool) {
	if i+4 > len(s) {
		return 0, false
	}
	var r rune
	for _, c := range []byte(s[i : i+4]) {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		r = r<<4 | rune(c)
	}
	return r, true
}

func (p *scanner) literal(word string) error {
	if !strings.HasPrefix(p.s[p.i:], word) {
		return p.unexpected(word)
	}
	p.i += len(word)
	return nil
}

// number reads a number: an optional minus, an integer part without a
// leading zero, an optional fraction and an optional exponent.
func (p *scanner) number() error {
	if p.peek() == '-' {
		p.i++
	}
	switch c := p.peek(); {
	case c == '0':
		p.i++
	case '1' <= c && c <= '9':
		p.digits()
	default:
		return p.unexpected("a digit")
	}
	if p.peek() == '.' {
		p.i++
		if !p.digits() {
			return p.unexpected("a digit")
		}
	}
	if c := p.peek(); c == 'e' || c == 'E' {
		p.i++
		if c := p.peek(); c == '+' || c == '-' {
			p.i++
		}
		if !p.digits() {
			return p.unexpected("a digit")
		}
	}
	return nil
}

// digits reads one or more digits, reporting whether there was one.
func (p *scanner) digits() bool {
	start := p.i
	for p.i < len(p.s) && '0' <= p.s[p.i] && p.s[p.i] <= '9' {
		p.i++
	}
	return p.i > start
}
