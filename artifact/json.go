package artifact

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
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
// Claims it does not know are ignored.
func decodeClaims(payload []byte) (*Claims, error) {
	m, err := object(payload)
	if err != nil {
		return nil, fmt.Errorf("claims: %w", err)
	}
	d := decoder{m: m}
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
	for _, sub := range []*decoder{&d, act, att, cnf} {
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
	name string
	m    map[string]json.RawMessage
	err  error
}

func (d *decoder) get(key string, first byte, what string) json.RawMessage {
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

func (d *decoder) str(key string) string {
	raw := d.get(key, '"', "a string")
	if raw == nil {
		return ""
	}
	if bytes.IndexByte(raw, '\\') < 0 {
		// Valid JSON (object checked it) with no escape: the bytes
		// between the quotes are the string.
		return string(raw[1 : len(raw)-1])
	}
	var s string
	d.unmarshal(key, raw, &s)
	return s
}

// optStr reads an optional string member: absent, or a non-empty string.
func (d *decoder) optStr(key string) string {
	s := d.str(key)
	if _, ok := d.m[key]; ok && s == "" && d.err == nil {
		d.err = fmt.Errorf("%q is present but empty", d.name+key)
	}
	return s
}

func (d *decoder) boolean(key string) bool {
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

// date reads a NumericDate: an integer number of seconds since the epoch.
func (d *decoder) date(key string) time.Time {
	raw, ok := d.m[key]
	if !ok || d.err != nil {
		return time.Time{}
	}
	n, ok := integer(raw)
	if !ok {
		d.err = fmt.Errorf("%q is not an integer NumericDate in 0..%d", d.name+key, maxInteger)
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
func integer(raw []byte) (int64, bool) {
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

func (d *decoder) ints(key string) []int {
	raw := d.get(key, '[', "an array")
	if raw == nil {
		return nil
	}
	var elems []json.RawMessage
	d.unmarshal(key, raw, &elems)
	v := make([]int, 0, len(elems))
	for _, e := range elems {
		n, ok := integer(e)
		if !ok {
			d.err = fmt.Errorf("%q holds %s, not an integer in 0..%d", d.name+key, e, maxInteger)
			return nil
		}
		v = append(v, int(n))
	}
	return v
}

// audience reads aud: a string, or an array of exactly one string.
func (d *decoder) audience() string {
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

// object reads a member that is itself an object, as a decoder; an absent
// one reads as an empty object.
func (d *decoder) object(key string) *decoder {
	sub := &decoder{name: d.name + key + ".", m: map[string]json.RawMessage{}}
	if raw := d.get(key, '{', "an object"); raw != nil {
		m, err := object(raw)
		if err != nil {
			d.err = fmt.Errorf("%q: %w", d.name+key, err)
		} else {
			sub.m = m
		}
	}
	return sub
}

func (d *decoder) unmarshal(key string, raw json.RawMessage, v any) {
	if err := json.Unmarshal(raw, v); err != nil {
		d.err = fmt.Errorf("%q: %w", d.name+key, err)
	}
}

// Size limits of a writ: the whole compact token, and how deeply its JSON
// may nest (the outermost object is depth 1).
const (
	MaxTokenSize = 8192
	maxDepth     = 16
)

// object splits a JSON object into its members, refusing anything else,
// invalid UTF-8 (a byte-order mark included), and any object, at any
// depth, in which a member name occurs twice after unescaping (parsers
// disagree about which one counts), JSON nested deeper than maxDepth, and
// a string holding an escaped lone surrogate (parsers decode it
// differently).
func object(data []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("not UTF-8")
	}
	if bytes.HasPrefix(data, []byte("\xef\xbb\xbf")) {
		return nil, errors.New("a byte-order mark")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	if err := scan(data); err != nil {
		return nil, err
	}
	return m, nil
}

// scan walks valid JSON text and refuses a member name repeated within
// one object, nesting deeper than maxDepth, and escaped lone surrogates.
func scan(data []byte) error {
	type frame struct {
		object bool
		names  map[string]bool
		key    bool // the next string in this object is a member name
	}
	var stack []frame
	for i := 0; i < len(data); i++ {
		switch c := data[i]; c {
		case '{', '[':
			if len(stack) == maxDepth {
				return fmt.Errorf("JSON nested deeper than %d", maxDepth)
			}
			stack = append(stack, frame{object: c == '{', key: c == '{'})
		case '}', ']':
			stack = stack[:len(stack)-1]
		case ',':
			if top := &stack[len(stack)-1]; top.object {
				top.key = true
			}
		case '"':
			end, escaped := stringEnd(data, i)
			text := data[i : end+1]
			if escaped {
				if err := checkEscapes(text); err != nil {
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

// stringEnd returns the index of the quote closing the JSON string that
// opens at data[start], and whether the string holds an escape.
func stringEnd(data []byte, start int) (end int, escaped bool) {
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

// checkEscapes refuses a \u escape of a UTF-16 surrogate that is not a
// high surrogate immediately followed by an escaped low one.
func checkEscapes(text []byte) error {
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
