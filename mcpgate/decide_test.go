package mcpgate

import (
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// TestNoWrit: only a call with neither the _meta member nor the header is
// one the gateway may ask the broker a writ for; an empty, non-string or
// conflicting writ is not replaced by one.
func TestNoWrit(t *testing.T) {
	for _, c := range []struct {
		name string
		r    *mcp.ServerRequest[*mcp.CallToolParamsRaw]
		want bool
	}{
		{"none", callRequest(mcp.Meta{"progressToken": 1}), true},
		{"no params, no extra", &mcp.ServerRequest[*mcp.CallToolParamsRaw]{}, true},
		{"meta empty", callRequest(mcp.Meta{MetaKey: ""}), false},
		{"meta not a string", callRequest(mcp.Meta{MetaKey: 7}), false},
		{"header empty", callRequest(nil, ""), false},
		{"two different", callRequest(mcp.Meta{MetaKey: "a"}, "b"), false},
	} {
		if got := noWrit(c.r); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
}

// TestListCache: an answer is reused only for the same key and until it
// expires; a full cache is emptied.
func TestListCache(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	c := newListCache()
	c.put("k", map[string]bool{"a": true}, now.Add(time.Second))
	if p, ok := c.get("k", now); !ok || !p["a"] {
		t.Fatal("a fresh answer is not reused")
	}
	if _, ok := c.get("other", now); ok {
		t.Fatal("another key reused the answer")
	}
	if _, ok := c.get("k", now.Add(time.Second)); ok {
		t.Fatal("an expired answer is reused")
	}
	for i := range listEntries + 1 {
		c.put(string(rune(i+1000)), nil, now.Add(time.Hour))
	}
	if len(c.entries) > listEntries {
		t.Fatalf("%d entries", len(c.entries))
	}
}
