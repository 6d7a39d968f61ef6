package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
)

const (
	kindsGateway = "spiffe://writ.test/gateway/edge"
	kindsServer  = "spiffe://writ.test/mcp/files"
)

// kindRules allow nodes GET requests under /v1/ of api.example.com with
// the x-tenant header bound to acme, and calls of the files server's
// read_file tool for paths under /tmp/, both enforced at the gateway.
var kindRules = defaultRules +
	"    - subject: spiffe://writ.test/node/*\n      kind: http\n" +
	"      when: 'action.method == \"GET\" && action.scheme == \"https\" && action.authority == \"api.example.com\" && action.path.startsWith(\"/v1/\") && action.headers[\"x-tenant\"] == [\"acme\"]'\n" +
	"      audiences: [\"" + kindsGateway + "\"]\n" +
	"    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
	"      when: 'action.server == \"" + kindsServer + "\" && action.tool == \"read_file\" && action.arguments.path.startsWith(\"/tmp/\") && action.arguments.limit <= 100'\n" +
	"      audiences: [\"" + kindsGateway + "\"]\n"

func emptySHA256() string { h := sha256.Sum256(nil); return hex.EncodeToString(h[:]) }

func httpReq() *brokerv1.HTTPAction {
	return &brokerv1.HTTPAction{Method: "GET", Scheme: "https", Authority: "api.example.com", Path: "/v1/items", Query: "limit=5",
		Headers: []*brokerv1.HTTPHeader{{Name: "x-tenant", Values: []string{"acme"}}, {Name: "authorization"}}, BodySha256: emptySHA256()}
}

func mcpReq(args string) *brokerv1.MCPAction {
	return &brokerv1.MCPAction{Server: kindsServer, Method: "tools/call", Tool: "read_file", Arguments: []byte(args)}
}

// TestRequestWritHTTPAndMCP: over real mTLS, a node gets writs for an
// http request and an MCP tool call its rules allow. Each verifies with
// artifact.Verify against the digest a gateway recomputes from the same
// request (for mcp: from the JSON-RPC request, with other key order,
// spacing, id and _meta), not as another kind, and not for another
// request; issues are audited with the action digest.
func TestRequestWritHTTPAndMCP(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, kindRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	b.passedNode(t, "n1")
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n1 := b.nodeClient(t, "n1")

	// What the gateway sees, built independently of the request messages.
	seenHTTP := &artifact.Action{Kind: artifact.KindHTTP, HTTP: &artifact.HTTPRequest{Method: "GET", Scheme: "https",
		Authority: "api.example.com", Path: "/v1/items", Query: "limit=5",
		Headers: map[string][]string{"authorization": nil, "x-tenant": {"acme"}}, BodySHA256: emptySHA256()}}
	call, err := artifact.ToolCallFromRequest(kindsServer, []byte(`{"jsonrpc":"2.0","id":"retry-2","method":"tools/call",
		"params":{"_meta":{"progressToken":7},"name":"read_file","arguments":{ "limit" : 1e1, "path":"/tmp/a.txt" }}}`))
	if err != nil {
		t.Fatal(err)
	}
	seenMCP := &artifact.Action{Kind: artifact.KindMCP, MCP: call}

	for _, tc := range []struct {
		name string
		req  *brokerv1.WritRequest
		seen *artifact.Action
	}{
		{"http", &brokerv1.WritRequest{Http: httpReq(), Audience: kindsGateway}, seenHTTP},
		{"mcp", &brokerv1.WritRequest{Mcp: mcpReq(`{"path":"/tmp/a.txt","limit":10}`), Audience: kindsGateway}, seenMCP},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := n1.c.RequestWrit(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			digest, err := tc.seen.Digest()
			if err != nil {
				t.Fatal(err)
			}
			opts := artifact.VerifyOptions{Keys: b.writ.keySet(), Audience: kindsGateway, SVID: n1.leaf, Action: digest,
				Kind: tc.seen.Kind, PCRs: "sha256:" + strings.Repeat("11", 32)}
			claims, err := artifact.Verify(resp.GetWrit(), opts)
			if err != nil {
				t.Fatalf("the %s writ does not verify against the recomputed digest: %v", tc.name, err)
			}
			if claims.Action.Kind != tc.seen.Kind || claims.Action.Display != tc.seen.Display() {
				t.Errorf("act %+v", claims.Action)
			}
			exec := opts
			exec.Kind = ""
			if _, err := artifact.Verify(resp.GetWrit(), exec); artifact.ReasonOf(err) != artifact.ReasonActionMismatch {
				t.Errorf("verified as an exec writ: %v", err)
			}
			other := opts
			other.Action = "sha256:" + strings.Repeat("00", 32)
			if _, err := artifact.Verify(resp.GetWrit(), other); artifact.ReasonOf(err) != artifact.ReasonActionMismatch {
				t.Errorf("verified for another action: %v", err)
			}
			audited := false
			for _, e := range b.auditEntries(t) {
				audited = audited || (e.Kind == "writ-issue" && e.Refs["jti"] == claims.ID && e.Refs["action"] == digest)
			}
			if !audited {
				t.Error("the issue was not audited with the action digest")
			}
		})
	}
}

// TestRequestWritHTTPAndMCPRefused: requests the rules do not allow, and
// malformed ones, are refused over real mTLS with their reason codes and
// audited as writ-deny; the same requests done right are allowed.
func TestRequestWritHTTPAndMCPRefused(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, kindRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	b.passedNode(t, "n1")
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n1 := b.nodeClient(t, "n1")

	httpWith := func(f func(*brokerv1.HTTPAction)) *brokerv1.WritRequest {
		h := httpReq()
		f(h)
		return &brokerv1.WritRequest{Http: h, Audience: kindsGateway}
	}
	mcpWith := func(args string, f func(*brokerv1.MCPAction)) *brokerv1.WritRequest {
		m := mcpReq(args)
		f(m)
		return &brokerv1.WritRequest{Mcp: m, Audience: kindsGateway}
	}
	const args = `{"path":"/tmp/a.txt","limit":10}`
	cases := []struct {
		name   string
		req    *brokerv1.WritRequest
		reason string
	}{
		{"http other method", httpWith(func(h *brokerv1.HTTPAction) { h.Method = "DELETE" }), ReasonActionDenied},
		{"http other path", httpWith(func(h *brokerv1.HTTPAction) { h.Path = "/admin/users" }), ReasonActionDenied},
		{"http other host", httpWith(func(h *brokerv1.HTTPAction) { h.Authority = "evil.example.com" }), ReasonActionDenied},
		{"http tenant header unbound", httpWith(func(h *brokerv1.HTTPAction) { h.Headers = nil }), ReasonActionDenied},
		{"http second tenant", httpWith(func(h *brokerv1.HTTPAction) { h.Headers[0].Values = []string{"acme", "other"} }), ReasonActionDenied},
		{"mcp other tool", mcpWith(args, func(m *brokerv1.MCPAction) { m.Tool = "write_file" }), ReasonActionDenied},
		{"mcp other server", mcpWith(args, func(m *brokerv1.MCPAction) { m.Server = "spiffe://writ.test/mcp/other" }), ReasonActionDenied},
		{"mcp other path", mcpWith(`{"path":"/etc/shadow","limit":10}`, func(*brokerv1.MCPAction) {}), ReasonActionDenied},
		{"mcp limit too high", mcpWith(`{"path":"/tmp/a.txt","limit":1000}`, func(*brokerv1.MCPAction) {}), ReasonActionDenied},
		{"mcp argument missing", mcpWith(`{"limit":10}`, func(*brokerv1.MCPAction) {}), ReasonActionDenied},
		{"mcp path not a string", mcpWith(`{"path":["/tmp/a"],"limit":10}`, func(*brokerv1.MCPAction) {}), ReasonActionDenied},
		{"mcp no audience listed", &brokerv1.WritRequest{Mcp: mcpReq(args), Audience: "spiffe://writ.test/gateway/other"}, ReasonAudienceDenied},
		{"mcp duplicate argument", mcpWith(`{"path":"/tmp/a.txt","path":"/etc/shadow","limit":10}`, func(*brokerv1.MCPAction) {}), ReasonActionInvalid},
		{"mcp lone surrogate", mcpWith(`{"path":"/tmp/\ud800","limit":10}`, func(*brokerv1.MCPAction) {}), ReasonActionInvalid},
		{"mcp number out of range", mcpWith(`{"path":"/tmp/a.txt","limit":1e999}`, func(*brokerv1.MCPAction) {}), ReasonActionInvalid},
		{"mcp arguments not an object", mcpWith(`["/tmp/a.txt"]`, func(*brokerv1.MCPAction) {}), ReasonActionInvalid},
		{"mcp other method", mcpWith(args, func(m *brokerv1.MCPAction) { m.Method = "tools/list" }), ReasonActionInvalid},
		{"http header listed twice", httpWith(func(h *brokerv1.HTTPAction) {
			h.Headers = append(h.Headers, &brokerv1.HTTPHeader{Name: "x-tenant", Values: []string{"acme"}})
		}), ReasonActionInvalid},
		{"http upper-case header", httpWith(func(h *brokerv1.HTTPAction) { h.Headers[0].Name = "X-Tenant" }), ReasonActionInvalid},
		{"http no body digest", httpWith(func(h *brokerv1.HTTPAction) { h.BodySha256 = "" }), ReasonActionInvalid},
		{"exec and mcp both", &brokerv1.WritRequest{Exec: execReq(), Mcp: mcpReq(args), Audience: kindsGateway}, ReasonActionInvalid},
		{"http and mcp both", &brokerv1.WritRequest{Http: httpReq(), Mcp: mcpReq(args), Audience: kindsGateway}, ReasonActionInvalid},
		{"no action", &brokerv1.WritRequest{Audience: kindsGateway}, ReasonActionInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(b.auditEntries(t))
			_, err := n1.c.RequestWrit(ctx, c.req)
			wantRefused(t, c.name, err, c.reason)
			es := b.auditEntries(t)
			if len(es) != before+1 || es[before].Kind != "writ-deny" || es[before].Reason != c.reason {
				t.Fatalf("refusal not audited as writ-deny %s: %v", c.reason, es[before:])
			}
		})
	}
	// The refusal of arguments JCS cannot represent names why.
	for args, jcsReason := range map[string]string{
		`{"path":"/tmp/a","path":"/tmp/b"}`: "jcs_duplicate_key",
		`{"limit":1e999}`:                   "jcs_number_range",
		`{"path":"\udc00"}`:                 "jcs_lone_surrogate",
	} {
		_, err := n1.c.RequestWrit(ctx, mcpWith(args, func(*brokerv1.MCPAction) {}))
		if brokerv1.ReasonOf(err) != ReasonActionInvalid || !strings.Contains(err.Error(), jcsReason) {
			t.Errorf("%s: %v, want %s naming %s", args, err, ReasonActionInvalid, jcsReason)
		}
	}
	for name, req := range map[string]*brokerv1.WritRequest{
		"http":                 {Http: httpReq(), Audience: kindsGateway},
		"http at the node":     {Http: httpReq()},
		"mcp":                  {Mcp: mcpReq(args), Audience: kindsGateway},
		"mcp, limit a double":  {Mcp: mcpReq(`{"path":"/tmp/b","limit":99.5}`), Audience: kindsGateway},
		"exec still, no kinds": {Exec: execReq()},
	} {
		if _, err := n1.c.RequestWrit(ctx, req); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}
