package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"testing"
	"time"

	"github.com/writ-dev/writ/artifact/jcs"
)

// httpActionVector is an http action of testdata/vectors.json, with the
// exact body whose digest it binds.
type httpActionVector struct {
	Name       string              `json:"name"`
	Method     string              `json:"method"`
	Scheme     string              `json:"scheme"`
	Authority  string              `json:"authority"`
	Path       string              `json:"path"`
	Query      string              `json:"query"`
	Headers    map[string][]string `json:"headers"`
	Body       string              `json:"body"`
	BodySHA256 string              `json:"body_sha256"`
	Canonical  string              `json:"canonical_hex"`
	Digest     string              `json:"digest"`
	Display    string              `json:"display"`
}

func (v httpActionVector) action() *Action {
	return &Action{Kind: KindHTTP, HTTP: &HTTPRequest{Method: v.Method, Scheme: v.Scheme, Authority: v.Authority,
		Path: v.Path, Query: v.Query, Headers: v.Headers, BodySHA256: v.BodySHA256}}
}

// mcpActionVector is an mcp action of testdata/vectors.json: the
// arguments as the request carried them, and their JCS form.
type mcpActionVector struct {
	Name            string `json:"name"`
	Server          string `json:"server"`
	Method          string `json:"method"`
	Tool            string `json:"tool"`
	Arguments       string `json:"arguments"` // JSON text of params.arguments; "" when absent
	ArgumentsJCS    string `json:"arguments_jcs"`
	ArgumentsSHA256 string `json:"arguments_sha256"`
	Canonical       string `json:"canonical_hex"`
	Digest          string `json:"digest"`
	Display         string `json:"display"`
}

func (v mcpActionVector) action() *Action {
	var args []byte
	if v.Arguments != "" {
		args = []byte(v.Arguments)
	}
	return &Action{Kind: KindMCP, MCP: &ToolCall{Server: v.Server, Method: v.Method, Tool: v.Tool, Arguments: args}}
}

func hexSHA256(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }

// The inputs of the http and mcp vectors; kindVectors fills in the rest.
func kindVectorInputs() ([]httpActionVector, []mcpActionVector) {
	const server = "spiffe://example.org/mcp/files"
	return []httpActionVector{
			{Name: "http GET with query", Method: "GET", Scheme: "https", Authority: "api.example.com",
				Path: "/v1/items", Query: "limit=10&after=a%20b", Headers: map[string][]string{}},
			{Name: "http POST with bound headers", Method: "POST", Scheme: "https", Authority: "api.example.com:8443",
				Path: "/v1/items/%2Fx", Body: `{"name":"a"}`,
				// x-tenant has two values in this order; authorization is bound absent.
				Headers: map[string][]string{"content-type": {"application/json"}, "x-tenant": {"b", "a"}, "authorization": {}}},
		}, []mcpActionVector{
			{Name: "mcp read_file", Server: server, Method: MethodToolsCall, Tool: "read_file",
				Arguments: `{"path":"/tmp/a.txt","limit":10}`},
			{Name: "mcp read_file, members reordered, spaced and escaped", Server: server, Method: MethodToolsCall, Tool: "read_file",
				Arguments: " {\n  \"limit\" : 1E1 ,\n  \"path\" : \"\\/tmp\\/a.txt\"\n} "},
			{Name: "mcp without arguments", Server: server, Method: MethodToolsCall, Tool: "list_roots"},
			{Name: "mcp nested, UTF-16 order and numbers", Server: "https://mcp.example.com/mcp", Method: MethodToolsCall, Tool: "search",
				Arguments: `{"\u20ac":1.0,"\ud83d\ude00":-0,"\ufb33":[1e21,0.000001,1e-7],"z":{"b":null,"a":true},"a":"line\nbreak"}`},
		}
}

func kindVectors(t *testing.T) ([]httpActionVector, []mcpActionVector) {
	hs, ms := kindVectorInputs()
	for i := range hs {
		hs[i].BodySHA256 = hexSHA256(hs[i].Body)
		c, err := hs[i].action().Canonical()
		if err != nil {
			t.Fatalf("action %s: %v", hs[i].Name, err)
		}
		hs[i].Canonical = hex.EncodeToString(c)
		hs[i].Digest, _ = hs[i].action().Digest()
		hs[i].Display = hs[i].action().Display()
	}
	for i := range ms {
		args := ms[i].Arguments
		if args == "" {
			args = "{}"
		}
		j, err := jcs.Transform([]byte(args))
		if err != nil {
			t.Fatalf("action %s: %v", ms[i].Name, err)
		}
		ms[i].ArgumentsJCS, ms[i].ArgumentsSHA256 = string(j), hexSHA256(string(j))
		c, err := ms[i].action().Canonical()
		if err != nil {
			t.Fatalf("action %s: %v", ms[i].Name, err)
		}
		ms[i].Canonical = hex.EncodeToString(c)
		ms[i].Digest, _ = ms[i].action().Digest()
		ms[i].Display = ms[i].action().Display()
	}
	return hs, ms
}

// checkKindVectors checks the http and mcp vectors of vf against the
// encoder, and that the vector set holds what it claims to show.
func checkKindVectors(t *testing.T, vf *vectorFile) {
	check := func(name string, a *Action, canonical, digest, display string) {
		c, err := a.Canonical()
		if err != nil {
			t.Errorf("action %s: %v", name, err)
			return
		}
		sum := sha256.Sum256(c)
		if got := hex.EncodeToString(c); got != canonical {
			t.Errorf("action %s: canonical\n%s\nwant\n%s", name, got, canonical)
		}
		if d, _ := a.Digest(); d != digest || d != "sha256:"+hex.EncodeToString(sum[:]) {
			t.Errorf("action %s: digest %s, want %s", name, d, digest)
		}
		if got := a.Display(); got != display {
			t.Errorf("action %s: display %q, want %q", name, got, display)
		}
	}
	if len(vf.HTTPActions) < 2 || len(vf.MCPActions) < 4 {
		t.Fatalf("%d http and %d mcp action vectors", len(vf.HTTPActions), len(vf.MCPActions))
	}
	for _, v := range vf.HTTPActions {
		if v.BodySHA256 != hexSHA256(v.Body) {
			t.Errorf("action %s: body_sha256 is not the body's", v.Name)
		}
		check(v.Name, v.action(), v.Canonical, v.Digest, v.Display)
	}
	for _, v := range vf.MCPActions {
		args := v.Arguments
		if args == "" {
			args = "{}"
		}
		if j, err := jcs.Transform([]byte(args)); err != nil || string(j) != v.ArgumentsJCS || hexSHA256(v.ArgumentsJCS) != v.ArgumentsSHA256 {
			t.Errorf("action %s: arguments_jcs %s, %v; want %s", v.Name, j, err, v.ArgumentsJCS)
		}
		check(v.Name, v.action(), v.Canonical, v.Digest, v.Display)
	}
	// The reordered arguments bind as the original.
	if vf.MCPActions[0].Digest != vf.MCPActions[1].Digest {
		t.Errorf("%s and %s differ", vf.MCPActions[0].Name, vf.MCPActions[1].Name)
	}
}

// kindWritVectors are writs for http and mcp actions: verified as their
// kind against the digest a gateway recomputes, they are valid; as
// another kind, or for another action, action_mismatch. They are signed
// after the other writ vectors, so adding them changed none of those.
func kindWritVectors(t *testing.T, f *fixture) []writVector {
	hs, ms := kindVectors(t)
	sign := func(kind, digest, display string) string {
		c := f.claims()
		c.Action = ActionClaim{Kind: kind, Digest: digest, Display: display}
		return f.sign(t, c)
	}
	mcpWrit := sign(KindMCP, ms[0].Digest, ms[0].Display)
	httpWrit := sign(KindHTTP, hs[0].Digest, hs[0].Display)
	vec := func(name, token, kind, action, expect string) writVector {
		return writVector{Name: name, Token: token, Expect: expect, Verify: verifyVector{Now: f.now.Format(time.RFC3339),
			SkewSeconds: int(DefaultSkew / time.Second), Audience: testAudience, Action: action, PCRs: f.pcrs,
			Bundle: bundleFile, SVID: svidFile, Consume: "none", Kind: kind}}
	}
	return []writVector{
		vec("valid mcp writ", mcpWrit, KindMCP, ms[0].Digest, "valid"),
		vec("valid mcp writ, the call's arguments reordered", mcpWrit, KindMCP, ms[1].Digest, "valid"),
		vec("valid http writ", httpWrit, KindHTTP, hs[0].Digest, "valid"),
		vec("mcp writ verified as exec", mcpWrit, "", ms[0].Digest, string(ReasonActionMismatch)),
		vec("mcp writ for other arguments", mcpWrit, KindMCP, ms[2].Digest, string(ReasonActionMismatch)),
		vec("http writ verified as mcp", httpWrit, KindMCP, hs[0].Digest, string(ReasonActionMismatch)),
	}
}
