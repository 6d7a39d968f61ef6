package mcpgate

import (
	"net/http"
	"testing"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestWritOf: the writ comes from _meta or the header; two different ones,
// two headers, or a _meta writ that is not a string are no writ.
func TestWritOf(t *testing.T) {
	req := func(meta mcp.Meta, header ...string) *mcp.ServerRequest[*mcp.CallToolParamsRaw] {
		h := http.Header{}
		for _, v := range header {
			h.Add(HeaderName, v)
		}
		return &mcp.ServerRequest[*mcp.CallToolParamsRaw]{Params: &mcp.CallToolParamsRaw{Meta: meta, Name: "t"}, Extra: &mcp.RequestExtra{Header: h}}
	}
	for _, c := range []struct {
		name string
		r    *mcp.ServerRequest[*mcp.CallToolParamsRaw]
		want string
		ok   bool
	}{
		{"meta", req(mcp.Meta{MetaKey: "w1"}), "w1", true},
		{"header", req(nil, "w2"), "w2", true},
		{"both, the same", req(mcp.Meta{MetaKey: "w1"}, "w1"), "w1", true},
		{"both, different", req(mcp.Meta{MetaKey: "w1"}, "w2"), "", false},
		{"two headers", req(nil, "w1", "w2"), "", false},
		{"meta not a string", req(mcp.Meta{MetaKey: 7}), "", false},
		{"meta empty", req(mcp.Meta{MetaKey: ""}, "w2"), "", false},
		{"none", req(mcp.Meta{"progressToken": 1}), "", false},
		{"no params", &mcp.ServerRequest[*mcp.CallToolParamsRaw]{}, "", false},
	} {
		got, ok := writOf(c.r)
		if got != c.want || ok != c.ok {
			t.Errorf("%s: %q %v, want %q %v", c.name, got, ok, c.want, c.ok)
		}
	}
}
