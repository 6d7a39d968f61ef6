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
		Parent:    d.str("par"),
		Once:      d.boolean("once"),
	}
	act, att, cnf := d.object("act"), d.object("att"), d.object("cnf")
	c.Action = ActionClaim{Kind: act.str("kind"), Digest: act.str("digest"), Display: act.str("display")}
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
	n, err := strconv.ParseInt(string(raw), 10, 64)
	if err != nil {
		d.err = fmt.Errorf("%q is not an integer NumericDate", d.name+key)
		return time.Time{}
	}
	return time.Unix(n, 0).UTC()
}

func (d *decoder) ints(key string) []int {
	var v []int
	if raw := d.get(key, '[', "an array"); raw != nil {
		d.unmarshal(key, raw, &v)
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

// object splits a JSON object into its members, refusing anything else,
// invalid UTF-8, and a member name that occurs twice (where parsers
// disagree about which one counts).
func object(data []byte) (map[string]json.RawMessage, error) {
	if !utf8.Valid(data) {
		return nil, errors.New("not UTF-8")
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(data, &m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	if countMembers(data) != len(m) {
		return nil, errors.New("a member name occurs twice")
	}
	return m, nil
}

// countMembers counts the members of the outermost object of valid JSON:
// the colons at depth 1, outside strings.
func countMembers(data []byte) int {
	n, depth := 0, 0
	inString, escaped := false, false
	for _, c := range data {
		switch {
		case escaped:
			escaped = false
		case inString:
			escaped = c == '\\'
			inString = c != '"'
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
		case c == '}' || c == ']':
			depth--
		case c == ':' && depth == 1:
			n++
		}
	}
	return n
}
