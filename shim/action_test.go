package shim

import (
	"testing"
)

// TestDecodeRequest: an exec request decodes as before (a parent still
// refused); an action request needs exactly one well-formed action and
// refuses unknown fields.
func TestDecodeRequest(t *testing.T) {
	for _, tc := range []struct {
		name, msg    string
		exec, action bool
	}{
		{"exec", `{"argv":["/bin/true"],"cwd":"/"}`, true, false},
		{"mcp", `{"action":{"mcp":{"server":"spiffe://d/mcp","tool":"t","arguments":{"a":1}}},"audience":"spiffe://d/gw"}`, false, true},
		{"http", `{"action":{"http":{"method":"GET","scheme":"https","authority":"a.test","path":"/","body_sha256":"x"}},"parent":"p"}`, false, true},
	} {
		r, a, err := DecodeRequest([]byte(tc.msg))
		if err != nil || (r != nil) != tc.exec || (a != nil) != tc.action {
			t.Errorf("%s: exec %v, action %v, %v", tc.name, r != nil, a != nil, err)
		}
	}
	for name, msg := range map[string]string{
		"an exec naming its parent":    `{"argv":["/bin/true"],"cwd":"/","parent":"p"}`,
		"both actions":                 `{"action":{"mcp":{"server":"s","tool":"t"},"http":{"method":"GET"}}}`,
		"no action":                    `{"action":{}}`,
		"an action with argv":          `{"action":{"mcp":{"server":"s","tool":"t"}},"argv":["/bin/true"]}`,
		"an unknown member":            `{"action":{"mcp":{"server":"s","tool":"t","extra":1}}}`,
		"arguments not an object":      `{"action":{"mcp":{"server":"s","tool":"t","arguments":[1]}}}`,
		"arguments null":               `{"action":{"mcp":{"server":"s","tool":"t","arguments":null}}}`,
		"an mcp action without a tool": `{"action":{"mcp":{"server":"s"}}}`,
		"not an object":                `[]`,
		"data after the message":       `{"action":{"mcp":{"server":"s","tool":"t"}}} {}`,
	} {
		if _, _, err := DecodeRequest([]byte(msg)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// FuzzDecodeRequest: any bytes decode to exactly one request or an
// error, never both, never a panic; an action request has exactly one
// action.
func FuzzDecodeRequest(f *testing.F) {
	f.Add([]byte(`{"argv":["/bin/true"],"cwd":"/"}`))
	f.Add([]byte(`{"action":{"mcp":{"server":"s","tool":"t","arguments":{"a":[1,{"b":null}]}}}}`))
	f.Add([]byte(`{"action":{"http":{"method":"GET","headers":[{"name":"a","values":["b"]}]}}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, a, err := DecodeRequest(b)
		switch {
		case err != nil && (r != nil || a != nil):
			t.Fatal("a request with an error")
		case err == nil && (r == nil) == (a == nil):
			t.Fatal("not exactly one request")
		case a != nil && (a.Action.MCP == nil) == (a.Action.HTTP == nil):
			t.Fatal("an action request without exactly one action")
		}
	})
}
