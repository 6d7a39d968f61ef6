package mcpgate

import (
	"net/http"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestWritOf: the writ comes from _meta or the header; two different ones,
// two headers, or a _meta writ that is not a string are no writ.
func TestWritOf(t *testing.T) {
	for _, c := range []struct {
		name string
		r    *mcp.ServerRequest[*mcp.CallToolParamsRaw]
		want string
		ok   bool
	}{
		{"meta", callRequest(mcp.Meta{MetaKey: "w1"}), "w1", true},
		{"header", callRequest(nil, "w2"), "w2", true},
		{"both, the same", callRequest(mcp.Meta{MetaKey: "w1"}, "w1"), "w1", true},
		{"both, different", callRequest(mcp.Meta{MetaKey: "w1"}, "w2"), "", false},
		{"two headers", callRequest(nil, "w1", "w2"), "", false},
		{"meta not a string", callRequest(mcp.Meta{MetaKey: 7}), "", false},
		{"meta empty", callRequest(mcp.Meta{MetaKey: ""}, "w2"), "", false},
		{"none", callRequest(mcp.Meta{"progressToken": 1}), "", false},
		{"no params", &mcp.ServerRequest[*mcp.CallToolParamsRaw]{}, "", false},
	} {
		got, ok := writOf(c.r)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %q %v, want %q %v", c.name, got, ok, c.want, c.ok)
		}
	}
}

// callRequest is a tools/call of tool "t" with meta and the Writ header
// values given.
func callRequest(meta mcp.Meta, header ...string) *mcp.ServerRequest[*mcp.CallToolParamsRaw] {
	h := http.Header{}
	for _, v := range header {
		h.Add(HeaderName, v)
	}
	return &mcp.ServerRequest[*mcp.CallToolParamsRaw]{Params: &mcp.CallToolParamsRaw{Meta: meta, Name: "t"}, Extra: &mcp.RequestExtra{Header: h}}
}
