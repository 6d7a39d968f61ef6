package broker

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// TestMayAllowTool: a tool is listed when some mcp rule for the subject
// could allow a call of it with the arguments unknown; a rule false for
// the tool or the server whatever the arguments, another subject's rule,
// another kind's rule or a failing condition list nothing.
func TestMayAllowTool(t *testing.T) {
	const server = "spiffe://example.org/mcp/files"
	alice := spiffeid.RequireFromString("spiffe://example.org/alice")
	bob := spiffeid.RequireFromString("spiffe://example.org/bob")
	rules := []RuleConfig{
		{Subject: alice.String(), Kind: "mcp", When: `action.server == "` + server + `" && action.tool == "read_file" && action.arguments.path.startsWith("/tmp/")`},
		{Subject: alice.String(), Kind: "mcp", When: `action.tool.startsWith("get_") || action.arguments.force == true`},
		{Subject: bob.String(), Kind: "mcp", When: `action.arguments.size() > 0 && action.tool == "write_file"`},
		{Subject: bob.String(), Kind: "mcp", When: `action.nosuchkey == "x"`},
		{Subject: bob.String(), Kind: "http", When: `true`},
	}
	var p actionPolicy
	for _, rc := range rules {
		r, err := compileRule(rc)
		if err != nil {
			t.Fatal(err)
		}
		p = append(p, r)
	}
	for _, c := range []struct {
		sub          spiffeid.ID
		server, tool string
		want         bool
	}{
		{alice, server, "read_file", true},
		{alice, "spiffe://example.org/mcp/other", "read_file", true}, // rule 2's residual: arguments.force
		{alice, server, "get_weather", true},
		{alice, server, "write_file", true}, // rule 2's residual again
		{bob, server, "write_file", true},
		{bob, server, "read_file", false}, // unknown && false is false
		{spiffeid.RequireFromString("spiffe://example.org/carol"), server, "read_file", false},
	} {
		if got := p.mayAllowTool(c.sub, c.server, c.tool); got != c.want {
			t.Errorf("%s %s %s: %v, want %v", c.sub, c.server, c.tool, got, c.want)
		}
	}
	strict := actionPolicy{p[0]}
	for tool, want := range map[string]bool{"read_file": true, "write_file": false} {
		if got := strict.mayAllowTool(alice, server, tool); got != want {
			t.Errorf("rule 1 alone, %s: %v, want %v", tool, got, want)
		}
	}
	if strict.mayAllowTool(alice, "spiffe://example.org/mcp/other", "read_file") {
		t.Error("rule 1 alone lists read_file of another server")
	}
}

// TestCheckGateways: a gateway is a SPIFFE ID of the trust domain, listed
// once, for kinds mcp and http only.
func TestCheckGateways(t *testing.T) {
	for _, c := range []struct {
		name string
		gws  []GatewayConfig
		ok   bool
	}{
		{"ok", []GatewayConfig{{ID: "spiffe://example.org/gateway/mcp", Kinds: []string{"mcp", "http"}}}, true},
		{"other trust domain", []GatewayConfig{{ID: "spiffe://other.org/gateway", Kinds: []string{"mcp"}}}, false},
		{"not a SPIFFE ID", []GatewayConfig{{ID: "gateway", Kinds: []string{"mcp"}}}, false},
		{"twice", []GatewayConfig{{ID: "spiffe://example.org/g", Kinds: []string{"mcp"}}, {ID: "spiffe://example.org/g", Kinds: []string{"http"}}}, false},
		{"no kinds", []GatewayConfig{{ID: "spiffe://example.org/g"}}, false},
		{"exec", []GatewayConfig{{ID: "spiffe://example.org/g", Kinds: []string{"exec"}}}, false},
	} {
		cfg := &Config{TrustDomain: "example.org", Gateways: c.gws}
		if err := cfg.checkGateways(); (err == nil) != c.ok {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

// TestEntryMCPActions: an entry may list mcp:<tool> and mcp:*.
func TestEntryMCPActions(t *testing.T) {
	if err := checkActions([]string{"mcp:read_file", "mcp:*", "mcp:fs/read.v2-beta"}); err != nil {
		t.Fatal(err)
	}
}
