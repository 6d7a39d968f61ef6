package runtime

import (
	"encoding/json"
)

// decodeEvent decodes a record's content as json.Unmarshal into an Event
// does. Content as Append writes it (json.Marshal of an Event: an object of
// known keys with plain ASCII string values, no spaces, no escapes) is read
// directly, without encoding/json's reflection, which was most of Replay's
// CPU (issue 11); anything else is left to json.Unmarshal, whose result and
// error stand. FuzzDecodeEvent holds the two to the same result.
func decodeEvent(b []byte) (Event, error) {
	if e, ok := decodePlain(b); ok {
		return e, nil
	}
	var e Event
	err := json.Unmarshal(b, &e)
	return e, err
}

// decodePlain reads {"key":"value",...} where every key is one of Event's
// JSON names, spelt exactly, and every value a string of printable ASCII
// other than '"' and '\\'. A key given twice keeps its last value, as with
// json.Unmarshal. ok is false for anything else.
func decodePlain(b []byte) (e Event, ok bool) {
	if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
		return e, false
	}
	b = b[1 : len(b)-1]
	for first := true; len(b) > 0 || first; first = false {
		if !first {
			if b[0] != ',' {
				return e, false
			}
			b = b[1:]
		}
		var key, value string
		if key, b, ok = plainString(b); !ok || len(b) == 0 || b[0] != ':' {
			return e, false
		}
		if value, b, ok = plainString(b[1:]); !ok {
			return e, false
		}
		switch key {
		case "kind":
			e.Kind = value
		case "exe":
			e.Exe = value
		case "interp":
			e.Interp = value
		case "argv":
			e.Argv = value
		case "jti":
			e.JTI = value
		case "config":
			e.Config = value
		default:
			return e, false
		}
	}
	return e, true
}

// plainString reads a JSON string of printable ASCII without escapes from
// the start of b.
func plainString(b []byte) (string, []byte, bool) {
	if len(b) == 0 || b[0] != '"' {
		return "", nil, false
	}
	for i := 1; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return string(b[1:i]), b[i+1:], true
		case c < 0x20 || c > 0x7e || c == '\\':
			return "", nil, false
		}
	}
	return "", nil, false
}
