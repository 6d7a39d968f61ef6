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
