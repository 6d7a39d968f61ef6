package artifact

import (
	"strings"
	"testing"
)

// TestObjectRules checks the JSON rules of docs/writ-format.md section 1
// on texts the vectors do not reach: what must stay accepted as well as
// what is refused.
func TestObjectRules(t *testing.T) {
	tests := []struct {
		json string
		ok   bool
	}{
		{`{"a":1}`, true},
		{` {"a" : 1} `, true},
		{`{"a":{"b":1},"c":{"b":2}}`, true},           // the same name in two objects
		{`{"a":[{"b":1},{"b":1}]}`, true},             // two objects in one array
		{`{"a":"\\ud800"}`, true},                     // an escaped backslash, then text
		{`{"a":"\ud83d\ude00","b":"\u00e9\""}`, true}, // a surrogate pair, other escapes
		{`{"a":"x","b":"a"}`, true},                   // a value equal to a name
		{`{"a":1,"a":1}`, false},                      // same value twice still counts
		{`{"a":1,"\u0061":2}`, false},                 // duplicate through an escape
		{`{"a":{"b":1,"b":2}}`, false},                // nested
		{`{"a":[1,{"b":[{"c":1,"c":2}]}]}`, false},    // deep inside arrays
		{`{"a":"\ud800"}`, false},                     // lone high surrogate
		{`{"a":"\udc00"}`, false},                     // lone low surrogate
		{`{"a":"\ud800\ud800"}`, false},               // high then high
		{`{"a":"\ud800x"}`, false},                    // high then text
		{`{"\ud800":1}`, false},                       // in a member name
		{"\xef\xbb\xbf{}", false},                     // byte-order mark
		{`{"a":1}{}`, false},                          // two values
		{`[]`, false},                                 // not an object
		{`null`, false},                               // not an object
		{`{"a":` + strings.Repeat("[", maxDepth-1) + `1` + strings.Repeat("]", maxDepth-1) + `}`, true},
		{`{"a":` + strings.Repeat("[", maxDepth) + `1` + strings.Repeat("]", maxDepth) + `}`, false},
	}
	for _, tt := range tests {
		_, err := object([]byte(tt.json))
		if (err == nil) != tt.ok {
			t.Errorf("object(%s) = %v, want ok %v", tt.json, err, tt.ok)
		}
	}
}

func TestInteger(t *testing.T) {
	for raw, want := range map[string]int64{"0": 0, "7": 7, "1767225600": 1767225600, "9007199254740991": 1<<53 - 1} {
		if n, ok := integer([]byte(raw)); !ok || n != want {
			t.Errorf("integer(%s) = %d, %v", raw, n, ok)
		}
	}
	for _, raw := range []string{"", "-0", "-1", "+1", "01", "1.0", "1e0", "1E0", "9007199254740992", "99999999999999999999", `"1"`, "null", "true"} {
		if n, ok := integer([]byte(raw)); ok {
			t.Errorf("integer(%s) = %d, want refused", raw, n)
		}
	}
}
