package policy

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
)

// claimsDocument builds the document ClaimsDocument(c) would, without the
// JSON round trip, which was a fifth of an appraisal's CPU (issue 11). It
// follows attest.Claims' JSON encoding field by field: the same keys, a
// field tagged omitempty absent when empty, a nil slice or map null, numbers
// float64, objects map[string]any, arrays []any, and a string that is not
// valid UTF-8 with each bad byte replaced by U+FFFD, as encoding/json does.
// TestClaimsDocumentDirect and FuzzClaimsDocumentDirect hold it to the
// round trip.
func claimsDocument(c attest.Claims) map[string]any {
	doc := make(map[string]any, 4)
	if c.Runtime != nil {
		doc["runtime"] = runtimeDocument(c.Runtime)
	}
	if c.PCRs == nil {
		doc["pcrs"] = nil
	} else {
		pcrs := make(map[string]any, len(c.PCRs))
		for i, v := range c.PCRs {
			pcrs[strconv.Itoa(i)] = jsonString(v)
		}
		doc["pcrs"] = pcrs
	}
	if l := c.EventLog; l != nil {
		log := map[string]any{"events": float64(l.Events), "events_by_pcr": nil}
		if l.EventsByPCR != nil {
			by := make(map[string]any, len(l.EventsByPCR))
			for i, n := range l.EventsByPCR {
				by[strconv.Itoa(i)] = float64(n)
			}
			log["events_by_pcr"] = by
		}
		doc["event_log"] = log
	}
	if c.Boot != nil {
		doc["boot"] = bootDocument(c.Boot)
	}
	return doc
}

func runtimeDocument(r *attest.RuntimeClaims) map[string]any {
	out := map[string]any{"pcr": float64(r.PCR), "events": nil}
	if r.Events != nil {
		events := make([]any, len(r.Events))
		for i, e := range r.Events {
			events[i] = runtimeEventDocument(e)
		}
		out["events"] = events
	}
	return out
}

func runtimeEventDocument(e runtime.Event) map[string]any {
	m := make(map[string]any, 4)
	m["kind"] = jsonString(e.Kind)
	putString(m, "exe", e.Exe)
	putString(m, "interp", e.Interp)
	putString(m, "argv", e.Argv)
	putString(m, "jti", e.JTI)
	putString(m, "config", e.Config)
	return m
}

func bootDocument(b *attest.BootClaims) map[string]any {
	m := make(map[string]any, 14) // room for EvaluationDocument's three
	if sb := b.SecureBoot; sb != nil {
		s := map[string]any{"enabled": sb.Enabled, "authorities": nil}
		putString(s, "pk", sb.PK)
		putString(s, "kek", sb.KEK)
		putString(s, "db", sb.DB)
		putString(s, "dbx", sb.DBX)
		if sb.Authorities != nil {
			list := make([]any, len(sb.Authorities))
			for i, a := range sb.Authorities {
				list[i] = map[string]any{"event": float64(a.Event), "name": jsonString(a.Name), "digest": jsonString(a.Digest)}
			}
			s["authorities"] = list
		}
		m["secureboot"] = s
	}
	putString(m, "firmware_version", b.FirmwareVersion)
	m["firmware"] = componentsDocument(b.Firmware)
	m["drivers"] = componentsDocument(b.Drivers)
	m["bootloaders"] = componentsDocument(b.Bootloaders)
	if k := b.Kernel; k != nil {
		kd := map[string]any{"loads": float64(k.Loads)}
		putString(kd, "path", k.Path)
		putString(kd, "digest", k.Digest)
		putString(kd, "cmdline", k.Cmdline)
		putString(kd, "load_options_digest", k.LoadOptionsDigest)
		m["kernel"] = kd
	}
	m["initrd"] = componentsDocument(b.Initrd)
	m["separators"] = intsDocument(b.Separators)
	m["separator_errors"] = intsDocument(b.SeparatorErrors)
	return m
}

func componentsDocument(list []attest.Component) any {
	if list == nil {
		return nil
	}
	out := make([]any, len(list))
	for i, c := range list {
		m := map[string]any{"event": float64(c.Event), "pcr": float64(c.PCR), "type": jsonString(c.Type), "digest": jsonString(c.Digest)}
		putString(m, "path", c.Path)
		putString(m, "description", c.Description)
		out[i] = m
	}
	return out
}

func intsDocument(list []int) any {
	if list == nil {
		return nil
	}
	out := make([]any, len(list))
	for i, v := range list {
		out[i] = float64(v)
	}
	return out
}

// putString sets m[key] to s unless s is empty: a string field tagged
// omitempty.
func putString(m map[string]any, key, s string) {
	if s != "" {
		m[key] = jsonString(s)
	}
}

// jsonString is s as a JSON round trip returns it: each byte that is not
// part of valid UTF-8 becomes U+FFFD. Valid strings (all but a node's
// garbage) are returned as they are, without a copy.
func jsonString(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}
