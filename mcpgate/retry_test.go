package mcpgate

import (
	"net/http"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestRetryCache: a spent writ is a retry only for the digest it was
// spent for and until it expires; a full cache forgets expired entries and
// then remembers nothing more (a retry is refused as replayed, fail closed).
func TestRetryCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := newRetryCache(2)
	c.add("a", "sha256:1", now.Add(time.Minute), now)
	switch {
	case !c.seen("a", "sha256:1", now):
		t.Error("a spent writ is not a retry")
	case c.seen("a", "sha256:2", now):
		t.Error("a spent writ is a retry for another digest")
	case c.seen("b", "sha256:1", now):
		t.Error("an unknown writ is a retry")
	case c.seen("a", "sha256:1", now.Add(time.Minute)):
		t.Error("an expired writ is a retry")
	}
	c.add("b", "sha256:1", now.Add(time.Second), now)
	c.add("c", "sha256:1", now.Add(time.Minute), now) // full, nothing expired: not remembered
	if c.seen("c", "sha256:1", now) {
		t.Error("a full cache remembered one more")
	}
	later := now.Add(2 * time.Second)
	c.add("c", "sha256:1", later.Add(time.Minute), later) // b expired: forgotten, c fits
	if !c.seen("c", "sha256:1", later) || c.seen("b", "sha256:1", later) || len(c.entries) != 2 {
		t.Errorf("after pruning: %v", c.entries)
	}
}

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
