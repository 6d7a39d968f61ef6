// Package audit is writ's tamper-evident decision log: an append-only file of
// hash-chained entries, one canonical JSON object a line, over which an
// RFC 6962 Merkle tree is kept and periodically committed to by C2SP
// tlog-checkpoint checkpoints, signed as C2SP signed notes by an ECDSA P-256
// key that is normally TPM-resident and certified by the node's AK.
//
// A log is a directory holding
//
//	entries.jsonl  one entry a line; each line's bytes are what is hashed;
//	               while a writer has it open, zeros follow (prealloc.go)
//	checkpoints    signed notes, each followed by one blank line
//	key.json       the signing key (KeyInfo), written at creation
//	keys.jsonl     the keys that followed it (AddKey), one KeyInfo a line
//	lock           the flock that serializes writers across processes
//	state          a cache of the tail, so that Open need not reread it all
//
// The writer side is Create, Open and Log; the auditor side (Verify, Read,
// Prove, ParseEntry) needs public keys only and imports no TPM transport.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// Decisions an entry may record.
const (
	DecisionAllow = "allow"
	DecisionDeny  = "deny"
	DecisionPass  = "pass"
	DecisionFail  = "fail"
	DecisionInfo  = "info"
)

// MaxLineSize bounds one entry line, newline excluded.
const MaxLineSize = 64 << 10

// zeroPrev is the prev of entry 0.
var zeroPrev = strings.Repeat("0", 2*sha256.Size)

// ErrMalformedEntry is wrapped by the errors of ParseEntry and of Append for
// an entry that cannot be logged as given.
var ErrMalformedEntry = errors.New("audit: malformed entry")

// Entry is one logged decision. Its line in entries.jsonl is its canonical
// JSON encoding: the fields below in this order, no insignificant
// whitespace, refs keys sorted.
type Entry struct {
	Seq      uint64            // 0-based index in the log, and leaf index in the Merkle tree
	Time     time.Time         // UTC, RFC 3339 with nanoseconds
	Kind     string            // enroll, attest, svid, writ-issue, writ-deny, exec-allow, exec-deny, revoke, …
	Subject  string            // SPIFFE ID or other subject
	Decision string            // allow, deny, pass, fail or info
	Reason   string            // stable reason code; may be empty
	Refs     map[string]string // result, jti, parent, …; nil when empty
	Prev     string            // hex sha256 of the previous entry's line; 64 zeros for entry 0
}

// validate checks what the writer controls: everything but Seq and Prev.
func (e *Entry) validate() error {
	if e.Kind == "" {
		return fmt.Errorf("%w: empty kind", ErrMalformedEntry)
	}
	switch e.Decision {
	case DecisionAllow, DecisionDeny, DecisionPass, DecisionFail, DecisionInfo:
	default:
		return fmt.Errorf("%w: decision %q is not allow, deny, pass, fail or info", ErrMalformedEntry, e.Decision)
	}
	if y := e.Time.UTC().Year(); y < 0 || y > 9999 {
		return fmt.Errorf("%w: time %v is outside RFC 3339", ErrMalformedEntry, e.Time)
	}
	for _, f := range [...]struct{ name, s string }{{"kind", e.Kind}, {"subject", e.Subject}, {"reason", e.Reason}} {
		if !utf8.ValidString(f.s) {
			return fmt.Errorf("%w: %s is not UTF-8", ErrMalformedEntry, f.name)
		}
	}
	for k, v := range e.Refs {
		if k == "" || !utf8.ValidString(k) || !utf8.ValidString(v) {
			return fmt.Errorf("%w: ref %q is empty or not UTF-8", ErrMalformedEntry, k)
		}
	}
	return nil
}

// appendLine appends e's canonical line, without its newline, to b.
func appendLine(b []byte, e *Entry) []byte {
	b = append(b, `{"seq":`...)
	b = strconv.AppendUint(b, e.Seq, 10)
	b = append(b, `,"time":"`...)
	b = e.Time.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","kind":`...)
	b = appendString(b, e.Kind)
	b = append(b, `,"subject":`...)
	b = appendString(b, e.Subject)
	b = append(b, `,"decision":`...)
	b = appendString(b, e.Decision)
	b = append(b, `,"reason":`...)
	b = appendString(b, e.Reason)
	b = append(b, `,"refs":{`...)
	var small [8]string // most entries have a few refs: no allocation
	keys := small[:0]
	for k := range e.Refs {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for i, k := range keys {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, k)
		b = append(b, ':')
		b = appendString(b, e.Refs[k])
	}
	b = append(b, `},"prev":`...)
	b = appendString(b, e.Prev)
	return append(b, '}')
}

// appendString appends s as a JSON string: '"' and '\\' escaped, control
// characters as \n, \r, \t or \u00xx, everything else (valid UTF-8) as is.
func appendString(b []byte, s string) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c == '\n':
			b = append(b, '\\', 'n')
		case c == '\r':
			b = append(b, '\\', 'r')
		case c == '\t':
			b = append(b, '\\', 't')
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		default:
			b = append(b, c)
		}
	}
	return append(b, '"')
}

// wireEntry is the decoding shape of a line.
type wireEntry struct {
	Seq      uint64            `json:"seq"`
	Time     string            `json:"time"`
	Kind     string            `json:"kind"`
	Subject  string            `json:"subject"`
	Decision string            `json:"decision"`
	Reason   string            `json:"reason"`
	Refs     map[string]string `json:"refs"`
	Prev     string            `json:"prev"`
}

// ParseEntry decodes one untrusted line (without its newline). It refuses
// any encoding other than the canonical one, so that a line and the entry it
// stands for are one-to-one: it re-encodes the entry and compares bytes.
func ParseEntry(line []byte) (Entry, error) {
	if len(line) > MaxLineSize {
		return Entry{}, fmt.Errorf("%w: line is %d bytes, more than %d", ErrMalformedEntry, len(line), MaxLineSize)
	}
	if e, ok := parseCanonical(line); ok && e.validate() == nil && validPrev(e.Prev) &&
		bytes.Equal(appendLine(make([]byte, 0, len(line)), &e), line) {
		return e, nil
	}
	// Not canonical, or not an entry: the general path says why.
	e, err := decodeEntry(line)
	if err != nil {
		return Entry{}, err
	}
	if !bytes.Equal(appendLine(make([]byte, 0, len(line)), &e), line) {
		return Entry{}, fmt.Errorf("%w: not in canonical form", ErrMalformedEntry)
	}
	return e, nil
}

// decodeEntry decodes an entry in the log's form, with any spacing, and
// checks its fields.
func decodeEntry(b []byte) (Entry, error) {
	var w wireEntry
	if err := json.Unmarshal(b, &w); err != nil {
		return Entry{}, fmt.Errorf("%w: %w", ErrMalformedEntry, err)
	}
	t, err := time.Parse(time.RFC3339Nano, w.Time)
	if err != nil {
		return Entry{}, fmt.Errorf("%w: time: %w", ErrMalformedEntry, err)
	}
	e := Entry{
		Seq: w.Seq, Time: t.UTC(), Kind: w.Kind, Subject: w.Subject,
		Decision: w.Decision, Reason: w.Reason, Refs: w.Refs, Prev: w.Prev,
	}
	if len(e.Refs) == 0 {
		e.Refs = nil
	}
	if err := e.validate(); err != nil {
		return Entry{}, err
	}
	if !validPrev(e.Prev) {
		return Entry{}, fmt.Errorf("%w: prev is not 64 lowercase hex digits", ErrMalformedEntry)
	}
	return e, nil
}

func validPrev(s string) bool {
	if len(s) != 2*sha256.Size {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// lineHash is the chain hash of a line: what the next entry's prev holds.
func lineHash(line []byte) [sha256.Size]byte { return sha256.Sum256(line) }

func hexHash(h [sha256.Size]byte) string { return hex.EncodeToString(h[:]) }

// MarshalJSON encodes e as its canonical line, the log's own form (lowercase
// names: seq, time, kind, subject, decision, reason, refs, prev): one JSON
// form for entries wherever they are shown or exported.
func (e Entry) MarshalJSON() ([]byte, error) {
	if err := e.validate(); err != nil {
		return nil, err
	}
	return appendLine(nil, &e), nil
}

// UnmarshalJSON decodes an entry in the log's form. Unlike ParseEntry it
// accepts any spacing (an entry embedded in an indented document); it
// checks the fields as ParseEntry does.
func (e *Entry) UnmarshalJSON(b []byte) error {
	d, err := decodeEntry(b)
	if err != nil {
		return err
	}
	*e = d
	return nil
}
