package audit

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"
)

const canonicalLine = `{"seq":7,"time":"2026-03-01T12:00:00.5Z","kind":"exec-allow","subject":"spiffe://td/w","decision":"allow","reason":"","refs":{"jti":"j1","result":"r\n1"},"prev":"` +
	"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff" + `"}`

func TestParseEntryCanonical(t *testing.T) {
	e, err := ParseEntry([]byte(canonicalLine))
	if err != nil {
		t.Fatalf("ParseEntry: %v", err)
	}
	want := time.Date(2026, 3, 1, 12, 0, 0, 5e8, time.UTC)
	if e.Seq != 7 || !e.Time.Equal(want) || e.Refs["result"] != "r\n1" || e.Kind != "exec-allow" {
		t.Errorf("parsed %+v", e)
	}
	if got := appendLine(nil, &e); string(got) != canonicalLine {
		t.Errorf("re-encoded\n%s\nwant\n%s", got, canonicalLine)
	}
	for name, line := range map[string]string{
		"whitespace":        strings.Replace(canonicalLine, `"seq":7`, `"seq": 7`, 1),
		"field order":       strings.Replace(canonicalLine, `"seq":7,"time":"2026-03-01T12:00:00.5Z"`, `"time":"2026-03-01T12:00:00.5Z","seq":7`, 1),
		"refs order":        strings.Replace(canonicalLine, `"jti":"j1","result":"r\n1"`, `"result":"r\n1","jti":"j1"`, 1),
		"escaped letter":    strings.Replace(canonicalLine, `exec-allow`, `exec\u002dallow`, 1),
		"html escape":       strings.Replace(canonicalLine, `"reason":""`, `"reason":"\u003c"`, 1),
		"time offset":       strings.Replace(canonicalLine, `00.5Z`, `00.5+00:00`, 1),
		"time zeros":        strings.Replace(canonicalLine, `00.5Z`, `00.500Z`, 1),
		"seq leading zero":  strings.Replace(canonicalLine, `"seq":7`, `"seq":07`, 1),
		"seq float":         strings.Replace(canonicalLine, `"seq":7`, `"seq":7.0`, 1),
		"uppercase prev":    strings.Replace(canonicalLine, `aabbcc`, `AABBCC`, 1),
		"short prev":        strings.Replace(canonicalLine, `ccddeeff"}`, `ccddee"}`, 1),
		"unknown field":     strings.Replace(canonicalLine, `"seq":7`, `"seq":7,"x":1`, 1),
		"duplicate field":   strings.Replace(canonicalLine, `"seq":7`, `"seq":8,"seq":7`, 1),
		"field name case":   strings.Replace(canonicalLine, `"seq"`, `"SEQ"`, 1),
		"null refs":         strings.Replace(canonicalLine, `{"jti":"j1","result":"r\n1"}`, `null`, 1),
		"bad decision":      strings.Replace(canonicalLine, `"allow"`, `"maybe"`, 1),
		"empty kind":        strings.Replace(canonicalLine, `"exec-allow"`, `""`, 1),
		"trailing newline":  canonicalLine + "\n",
		"trailing CR":       canonicalLine + "\r",
		"invalid utf8":      strings.Replace(canonicalLine, `spiffe`, "sp\xffffe", 1),
		"two objects":       canonicalLine + canonicalLine,
		"raw control":       strings.Replace(canonicalLine, `r\n1`, "r\x011", 1),
		"escaped slash":     strings.Replace(canonicalLine, `spiffe://`, `spiffe:\/\/`, 1),
		"unicode escape nl": strings.Replace(canonicalLine, `r\n1`, `r\u000a1`, 1),
	} {
		if _, err := ParseEntry([]byte(line)); !errors.Is(err, ErrMalformedEntry) {
			t.Errorf("%s: ParseEntry = %v, want ErrMalformedEntry", name, err)
		}
	}
}

func FuzzParseEntry(f *testing.F) {
	f.Add([]byte(canonicalLine))
	f.Add([]byte(`{"seq":0,"time":"2026-01-01T00:00:00Z","kind":"k","subject":"","decision":"info","reason":"","refs":{},"prev":"` + zeroPrev + `"}`))
	f.Add([]byte(`{"seq":18446744073709551615,"time":"9999-12-31T23:59:59.999999999Z","kind":"\u0001\"\\","subject":"é\u2028","decision":"deny","reason":"\t","refs":{"a":"","b":"\u001f"},"prev":"` + zeroPrev + `"}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, line []byte) {
		e, err := ParseEntry(line)
		if err != nil {
			if !errors.Is(err, ErrMalformedEntry) {
				t.Fatalf("error does not wrap ErrMalformedEntry: %v", err)
			}
			return
		}
		if got := appendLine(nil, &e); !bytes.Equal(got, line) {
			t.Fatalf("parsed entry re-encodes differently:\n%q\n%q", line, got)
		}
		if again, err := ParseEntry(appendLine(nil, &e)); err != nil || again.Seq != e.Seq || !again.Time.Equal(e.Time) {
			t.Fatalf("re-encoded entry does not parse back: %v", err)
		}
	})
}
