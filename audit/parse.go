package audit

import (
	"bytes"
	"strconv"
	"time"
	"unicode/utf8"
)

// parseCanonical decodes a line that is in the log's canonical form without
// encoding/json, which is most of the cost of verifying a large log. It
// reports false for anything it does not recognise, and ParseEntry then
// takes the general path, whose errors are the ones callers see. It only
// decodes: ParseEntry still validates the entry and compares its re-encoding
// with the line, so a line this accepts is exactly a line the general path
// accepts.
func parseCanonical(line []byte) (Entry, bool) {
	var e Entry
	p := scanner{b: line}
	if !p.lit(`{"seq":`) {
		return e, false
	}
	seq, ok := p.uint()
	if !ok || !p.lit(`,"time":`) {
		return e, false
	}
	ts, ok := p.str()
	if !ok {
		return e, false
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return e, false
	}
	e.Seq, e.Time = seq, t.UTC()
	for _, f := range []struct {
		name string
		dst  *string
	}{{`,"kind":`, &e.Kind}, {`,"subject":`, &e.Subject}, {`,"decision":`, &e.Decision}, {`,"reason":`, &e.Reason}} {
		if !p.lit(f.name) {
			return e, false
		}
		if *f.dst, ok = p.str(); !ok {
			return e, false
		}
	}
	if !p.lit(`,"refs":{`) {
		return e, false
	}
	if !p.lit("}") {
		e.Refs = make(map[string]string, 2)
		for {
			k, ok := p.str()
			if !ok || !p.lit(":") {
				return e, false
			}
			v, ok := p.str()
			if !ok {
				return e, false
			}
			e.Refs[k] = v
			if p.lit("}") {
				break
			}
			if !p.lit(",") {
				return e, false
			}
		}
	}
	if !p.lit(`,"prev":`) {
		return e, false
	}
	if e.Prev, ok = p.str(); !ok || !p.lit("}") || len(p.b) != 0 {
		return e, false
	}
	return e, true
}

// scanner consumes a canonical line from the front.
type scanner struct{ b []byte }

// lit consumes s if the line continues with it.
func (p *scanner) lit(s string) bool {
	if len(p.b) < len(s) || string(p.b[:len(s)]) != s {
		return false
	}
	p.b = p.b[len(s):]
	return true
}

// uint consumes a decimal number.
func (p *scanner) uint() (uint64, bool) {
	i := 0
	for i < len(p.b) && p.b[i] >= '0' && p.b[i] <= '9' {
		i++
	}
	n, err := strconv.ParseUint(string(p.b[:i]), 10, 64)
	if i == 0 || err != nil {
		return 0, false
	}
	p.b = p.b[i:]
	return n, true
}

// str consumes a JSON string with only the escapes appendString writes.
func (p *scanner) str() (string, bool) {
	if len(p.b) == 0 || p.b[0] != '"' {
		return "", false
	}
	end := bytes.IndexByte(p.b[1:], '"')
	if end < 0 {
		return "", false
	}
	raw := p.b[1 : 1+end]
	if bytes.IndexByte(raw, '\\') < 0 {
		p.b = p.b[2+end:]
		return string(raw), true
	}
	// Escapes: decode byte by byte (a '"' found above may be escaped).
	var out []byte
	i := 1
	for ; i < len(p.b) && p.b[i] != '"'; i++ {
		c := p.b[i]
		if c != '\\' {
			out = append(out, c)
			continue
		}
		if i+1 >= len(p.b) {
			return "", false
		}
		i++
		switch p.b[i] {
		case '"', '\\':
			out = append(out, p.b[i])
		case 'n':
			out = append(out, '\n')
		case 'r':
			out = append(out, '\r')
		case 't':
			out = append(out, '\t')
		case 'u':
			if i+4 >= len(p.b) || p.b[i+1] != '0' || p.b[i+2] != '0' {
				return "", false
			}
			v, err := strconv.ParseUint(string(p.b[i+3:i+5]), 16, 8)
			if err != nil || v >= utf8.RuneSelf {
				return "", false
			}
			out = append(out, byte(v))
			i += 4
		default:
			return "", false
		}
	}
	if i >= len(p.b) {
		return "", false
	}
	p.b = p.b[i+1:]
	return string(out), true
}

// checkCanonical reports whether line is an entry's canonical line, and
// its seq and prev, without allocating: Verify's per-line check. It
// recognises a strict subset of what ParseEntry accepts (it leaves refs
// keys with escapes, for one, to ParseEntry); on false the caller asks
// ParseEntry, which either accepts the line after all or says what is
// wrong with it. FuzzCheckCanonical holds it to that.
func checkCanonical(line []byte) (seq uint64, prev [32]byte, ok bool) {
	if len(line) > MaxLineSize {
		return 0, prev, false
	}
	p := scanner{b: line}
	if !p.lit(`{"seq":`) {
		return 0, prev, false
	}
	if seq, ok = p.canonicalUint(); !ok || !p.lit(`,"time":"`) || !p.canonicalTime() || !p.lit(`","kind":`) {
		return 0, prev, false
	}
	if kind, ok := p.rawString(); !ok || len(kind) == 0 || !p.lit(`,"subject":`) {
		return 0, prev, false
	}
	if _, ok := p.rawString(); !ok || !p.lit(`,"decision":`) {
		return 0, prev, false
	}
	switch d, _ := p.rawString(); string(d) {
	case DecisionAllow, DecisionDeny, DecisionPass, DecisionFail, DecisionInfo:
	default:
		return 0, prev, false
	}
	if !p.lit(`,"reason":`) {
		return 0, prev, false
	}
	if _, ok := p.rawString(); !ok || !p.lit(`,"refs":{`) {
		return 0, prev, false
	}
	if !p.lit("}") {
		var last []byte
		for first := true; ; first = false {
			k, ok := p.rawString()
			// Keys in strictly increasing order, so sorted and unique as
			// appendLine writes them; escaped keys are left to ParseEntry.
			if !ok || len(k) == 0 || bytes.IndexByte(k, '\\') >= 0 || !first && bytes.Compare(last, k) >= 0 || !p.lit(":") {
				return 0, prev, false
			}
			last = k
			if _, ok := p.rawString(); !ok {
				return 0, prev, false
			}
			if p.lit("}") {
				break
			}
			if !p.lit(",") {
				return 0, prev, false
			}
		}
	}
	if !p.lit(`,"prev":"`) || len(p.b) != 2*len(prev)+2 || string(p.b[2*len(prev):]) != `"}` {
		return 0, prev, false
	}
	var bad byte
	for i := range prev {
		hi, lo := hexValue[p.b[2*i]], hexValue[p.b[2*i+1]]
		bad |= hi | lo
		prev[i] = hi<<4 | lo&0xf
	}
	if bad&0x10 != 0 {
		return 0, prev, false
	}
	return seq, prev, true
}

// hexValue maps a lowercase hex digit to its value and any other byte to
// 0x10: checkCanonical ORs them all and tests the bit once.
var hexValue = func() (t [256]byte) {
	for c := range t {
		v, ok := lowerHex(byte(c))
		if !ok {
			v = 0x10
		}
		t[c] = v
	}
	return t
}()

func lowerHex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// canonicalUint consumes a decimal number as strconv.AppendUint writes it.
func (p *scanner) canonicalUint() (uint64, bool) {
	var n uint64
	i := 0
	for ; i < len(p.b) && p.b[i] >= '0' && p.b[i] <= '9'; i++ {
		d := uint64(p.b[i] - '0')
		if n > (1<<64-1-d)/10 {
			return 0, false // overflow
		}
		n = n*10 + d
	}
	if i == 0 || i > 1 && p.b[0] == '0' {
		return 0, false
	}
	p.b = p.b[i:]
	return n, true
}

// canonicalTime consumes a UTC time as appendLine writes it (RFC 3339 with
// nanoseconds, trailing zeros of the fraction dropped, "Z"): the layout,
// digits, and each field in its range (the day in its month's). Formatting
// the time again to compare was a tenth of Verify's CPU.
func (p *scanner) canonicalTime() bool {
	end := bytes.IndexByte(p.b, '"')
	if end < len("2006-01-02T15:04:05Z") || end > len("2006-01-02T15:04:05.999999999Z") {
		return false
	}
	raw := p.b[:end]
	if raw[4] != '-' || raw[7] != '-' || raw[10] != 'T' || raw[13] != ':' || raw[16] != ':' || raw[end-1] != 'Z' {
		return false
	}
	y, mo, d, h, mi, s := digits(raw[0:4]), digits(raw[5:7]), digits(raw[8:10]), digits(raw[11:13]), digits(raw[14:16]), digits(raw[17:19])
	if min(y, mo, d, h, mi, s) < 0 || mo < 1 || mo > 12 || d < 1 || d > daysIn(mo, y) || h > 23 || mi > 59 || s > 59 {
		return false
	}
	// The fraction: none, or '.' and 1 to 9 digits, the last not 0.
	if frac := raw[19 : end-1]; len(frac) > 0 {
		if frac[0] != '.' || len(frac) < 2 || digits(frac[1:]) < 0 || frac[len(frac)-1] == '0' {
			return false
		}
	}
	p.b = p.b[end:]
	return true
}

// digits is the value of a run of decimal digits, or -1.
func digits(s []byte) int {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return -1
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// daysIn is the number of days in month mo (1-12) of year y.
func daysIn(mo, y int) int {
	switch mo {
	case 2:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// strSpecial marks the bytes rawString must look at: the closing quote,
// an escape, and control characters (which appendString escapes).
var strSpecial = func() (t [256]bool) {
	for c := range t {
		t[c] = c == '"' || c == '\\' || c < 0x20
	}
	return t
}()

// rawString consumes a JSON string written by appendString, with its
// contents valid UTF-8, and returns its raw (still escaped) bytes.
func (p *scanner) rawString() ([]byte, bool) {
	if len(p.b) == 0 || p.b[0] != '"' {
		return nil, false
	}
	var high byte // OR of the bytes: ASCII needs no UTF-8 check
	for i := 1; i < len(p.b); i++ {
		c := p.b[i]
		high |= c
		if !strSpecial[c] {
			continue
		}
		switch {
		case c == '"':
			raw := p.b[1:i]
			if high >= utf8.RuneSelf && !utf8.Valid(raw) { // escapes are ASCII: raw is valid iff the string is
				return nil, false
			}
			p.b = p.b[i+1:]
			return raw, true
		case c < 0x20:
			return nil, false
		case c == '\\':
			if i+1 >= len(p.b) {
				return nil, false
			}
			switch p.b[i+1] {
			case '"', '\\', 'n', 'r', 't':
				i++
			case 'u':
				// appendString writes \u00xx, lowercase, only for control
				// characters other than \n, \r and \t.
				if i+5 >= len(p.b) || p.b[i+2] != '0' || p.b[i+3] != '0' {
					return nil, false
				}
				hi, ok1 := lowerHex(p.b[i+4])
				lo, ok2 := lowerHex(p.b[i+5])
				v := hi<<4 | lo
				if !ok1 || !ok2 || v >= 0x20 || v == '\n' || v == '\r' || v == '\t' {
					return nil, false
				}
				i += 5
			default:
				return nil, false
			}
		}
	}
	return nil, false
}
