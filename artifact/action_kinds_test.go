package artifact

import (
	"bytes"
	"strings"
	"testing"

	"github.com/writ-dev/writ/artifact/jcs"
)

func validHTTP() *Action {
	return &Action{Kind: KindHTTP, HTTP: &HTTPRequest{Method: "GET", Scheme: "https", Authority: "h", Path: "/p",
		Headers: map[string][]string{}, BodySHA256: hexSHA256("")}}
}

func validMCP() *Action {
	return &Action{Kind: KindMCP, MCP: &ToolCall{Server: "spiffe://td/s", Method: MethodToolsCall, Tool: "t", Arguments: []byte(`{"a":1}`)}}
}

// TestCanonicalLayoutKinds spells out an http and an mcp encoding byte by
// byte, independently of the encoder.
func TestCanonicalLayoutKinds(t *testing.T) {
	h := validHTTP()
	h.HTTP.Query = "q"
	h.HTTP.Headers = map[string][]string{"x": {"2", "1"}, "a": nil}
	var want bytes.Buffer
	want.WriteString("writ-action-v1\x00")
	want.WriteString("\x00\x00\x00\x04http" + "\x00\x00\x00\x03GET" + "\x00\x00\x00\x05https" + "\x00\x00\x00\x01h" + "\x00\x00\x00\x02/p" + "\x00\x00\x00\x01q")
	want.WriteString("\x00\x00\x00\x02" + "\x00\x00\x00\x01a\x00\x00\x00\x00" + "\x00\x00\x00\x01x\x00\x00\x00\x02" + "\x00\x00\x00\x012\x00\x00\x00\x011")
	want.WriteString("\x00\x00\x00\x40" + hexSHA256(""))
	if got, err := h.Canonical(); err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("http Canonical =\n%q, %v\nwant\n%q", got, err, want.Bytes())
	}

	m := validMCP()
	want.Reset()
	want.WriteString("writ-action-v1\x00")
	want.WriteString("\x00\x00\x00\x03mcp" + "\x00\x00\x00\x0dspiffe://td/s" + "\x00\x00\x00\x0atools/call" + "\x00\x00\x00\x01t")
	want.WriteString("\x00\x00\x00\x40" + hexSHA256(`{"a":1}`))
	if got, err := m.Canonical(); err != nil || !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("mcp Canonical =\n%q, %v\nwant\n%q", got, err, want.Bytes())
	}
}

func TestCanonicalDistinctKinds(t *testing.T) {
	type edit struct {
		base func() *Action
		f    func(*Action)
	}
	edits := map[string]edit{
		"http base":            {validHTTP, func(*Action) {}},
		"http method":          {validHTTP, func(a *Action) { a.HTTP.Method = "get" }},
		"http scheme":          {validHTTP, func(a *Action) { a.HTTP.Scheme = "http" }},
		"http authority":       {validHTTP, func(a *Action) { a.HTTP.Authority = "h:443" }},
		"http path":            {validHTTP, func(a *Action) { a.HTTP.Path = "/p/" }},
		"http path into query": {validHTTP, func(a *Action) { a.HTTP.Path, a.HTTP.Query = "/", "p" }},
		"http query":           {validHTTP, func(a *Action) { a.HTTP.Query = "a=1" }},
		"http header absent":   {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"a": nil} }},
		"http header empty":    {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"a": {""}} }},
		"http header order":    {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"a": {"1", "2"}} }},
		"http header reversed": {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"a": {"2", "1"}} }},
		"http header joined":   {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"a": {"1, 2"}} }},
		"http body":            {validHTTP, func(a *Action) { a.HTTP.BodySHA256 = hexSHA256("x") }},
		"mcp base":             {validMCP, func(*Action) {}},
		"mcp server":           {validMCP, func(a *Action) { a.MCP.Server = "spiffe://td/t" }},
		"mcp tool":             {validMCP, func(a *Action) { a.MCP.Tool = "u" }},
		"mcp arguments":        {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`{"a":2}`) }},
		"mcp argument type":    {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`{"a":"1"}`) }},
		"mcp no arguments":     {validMCP, func(a *Action) { a.MCP.Arguments = nil }},
		"mcp tool as server":   {validMCP, func(a *Action) { a.MCP.Server, a.MCP.Tool = "t", "spiffe://td/s" }},
	}
	seen := map[string]string{}
	for name, e := range edits {
		a := e.base()
		e.f(a)
		d, err := a.Digest()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if prev, ok := seen[d]; ok {
			t.Errorf("%s and %s share digest %s", name, prev, d)
		}
		seen[d] = name
	}
}

// TestMCPArgumentsCanonical: arguments that differ only in member order,
// whitespace, escapes or number spelling bind the same digest; what
// lies outside params.arguments (the JSON-RPC id, params._meta) is not
// part of a ToolCall at all.
func TestMCPArgumentsCanonical(t *testing.T) {
	same := []string{
		`{"path":"/tmp/a","opts":{"n":100,"deep":[true,null]}}`,
		` { "opts" : { "deep" : [ true , null ] , "n" : 1e2 } , "path" : "\/tmp\/a" } `,
		"{\"opts\":{\"n\":100.0,\"deep\":[true,null]},\n\"path\":\"/tmp/\\u0061\"}",
	}
	var first string
	for i, args := range same {
		a := validMCP()
		a.MCP.Arguments = []byte(args)
		d, err := a.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = d
		} else if d != first {
			t.Errorf("%s: digest %s, want %s", args, d, first)
		}
	}
	empty, none := validMCP(), validMCP()
	empty.MCP.Arguments, none.MCP.Arguments = []byte(" {} "), nil
	d1, err1 := empty.Digest()
	d2, err2 := none.Digest()
	if err1 != nil || err2 != nil || d1 != d2 {
		t.Errorf("absent and empty arguments: %s %v, %s %v", d1, err1, d2, err2)
	}
}

func TestCanonicalRefusesKinds(t *testing.T) {
	tests := map[string]struct {
		base func() *Action
		f    func(*Action)
		jcs  jcs.Reason // the JCS reason the error carries, if any
	}{
		"http without request":   {validHTTP, func(a *Action) { a.HTTP = nil }, ""},
		"http with argv":         {validHTTP, func(a *Action) { a.Argv = []string{"x"} }, ""},
		"http with mcp":          {validHTTP, func(a *Action) { a.MCP = validMCP().MCP }, ""},
		"http empty method":      {validHTTP, func(a *Action) { a.HTTP.Method = "" }, ""},
		"http method space":      {validHTTP, func(a *Action) { a.HTTP.Method = "GET " }, ""},
		"http scheme ftp":        {validHTTP, func(a *Action) { a.HTTP.Scheme = "ftp" }, ""},
		"http scheme upper":      {validHTTP, func(a *Action) { a.HTTP.Scheme = "HTTPS" }, ""},
		"http empty authority":   {validHTTP, func(a *Action) { a.HTTP.Authority = "" }, ""},
		"http authority upper":   {validHTTP, func(a *Action) { a.HTTP.Authority = "H" }, ""},
		"http authority user":    {validHTTP, func(a *Action) { a.HTTP.Authority = "u@h" }, ""},
		"http relative path":     {validHTTP, func(a *Action) { a.HTTP.Path = "p" }, ""},
		"http path with query":   {validHTTP, func(a *Action) { a.HTTP.Path = "/p?q" }, ""},
		"http path space":        {validHTTP, func(a *Action) { a.HTTP.Path = "/a b" }, ""},
		"http query fragment":    {validHTTP, func(a *Action) { a.HTTP.Query = "a#b" }, ""},
		"http header upper":      {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"X": {"1"}} }, ""},
		"http header empty name": {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"": {"1"}} }, ""},
		"http header CRLF":       {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"x": {"a\r\nb: c"}} }, ""},
		"http header padded":     {validHTTP, func(a *Action) { a.HTTP.Headers = map[string][]string{"x": {" a"}} }, ""},
		"http body not hex":      {validHTTP, func(a *Action) { a.HTTP.BodySHA256 = "" }, ""},
		"mcp without call":       {validMCP, func(a *Action) { a.MCP = nil }, ""},
		"mcp with path":          {validMCP, func(a *Action) { a.Path = "/x" }, ""},
		"mcp empty server":       {validMCP, func(a *Action) { a.MCP.Server = "" }, ""},
		"mcp other method":       {validMCP, func(a *Action) { a.MCP.Method = "tools/list" }, ""},
		"mcp empty tool":         {validMCP, func(a *Action) { a.MCP.Tool = "" }, ""},
		"mcp tool newline":       {validMCP, func(a *Action) { a.MCP.Tool = "a\nb" }, ""},
		"mcp arguments array":    {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`[1]`) }, ""},
		"mcp arguments null":     {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`null`) }, ""},
		"mcp duplicate member":   {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`{"a":1,"a":2}`) }, jcs.ReasonDuplicateKey},
		"mcp number overflow":    {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`{"a":1e400}`) }, jcs.ReasonNumberRange},
		"mcp lone surrogate":     {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`{"a":"\udead"}`) }, jcs.ReasonLoneSurrogate},
		"mcp not JSON":           {validMCP, func(a *Action) { a.MCP.Arguments = []byte(`{a:1}`) }, jcs.ReasonSyntax},
		"exec with http":         {validAction, func(a *Action) { a.HTTP = validHTTP().HTTP }, ""},
	}
	for name, tt := range tests {
		a := tt.base()
		tt.f(a)
		d, err := a.Digest()
		if err == nil {
			t.Errorf("%s: Digest = %q, want an error", name, d)
			continue
		}
		if tt.jcs != "" && jcs.ReasonOf(err) != tt.jcs {
			t.Errorf("%s: %v, want reason %s", name, err, tt.jcs)
		}
	}
}

func TestDisplayKinds(t *testing.T) {
	h := validHTTP()
	h.HTTP.Query = "a=1"
	if got, want := h.Display(), "http GET https://h/p?a=1"; got != want {
		t.Errorf("Display = %q, want %q", got, want)
	}
	if got, want := validMCP().Display(), "mcp t on spiffe://td/s"; got != want {
		t.Errorf("Display = %q, want %q", got, want)
	}
	h.HTTP.Path = "/" + strings.Repeat("x", 300)
	if got := h.Display(); len(got) > maxDisplay {
		t.Errorf("Display is %d bytes", len(got))
	}
}

// TestToolCallFromRequest: the JSON-RPC id and params._meta are outside
// the binding (a retry, a progress token or the writ itself change
// nothing); the tool, the arguments, and anything params carries besides
// are not.
func TestToolCallFromRequest(t *testing.T) {
	const server = "spiffe://td/mcp"
	digest := func(req string) (string, error) {
		tc, err := ToolCallFromRequest(server, []byte(req))
		if err != nil {
			return "", err
		}
		return (&Action{Kind: KindMCP, MCP: tc}).Digest()
	}
	base, err := digest(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/a","n":1}}}`)
	if err != nil {
		t.Fatal(err)
	}
	same := []string{
		`{"jsonrpc":"2.0","id":"retry-7","method":"tools/call","params":{"name":"read","arguments":{"n":1.0,"path":"/tmp/a"}}}`,
		`{"method":"tools/call","params":{"_meta":{"progressToken":42,"writ":"eyJ..."},"arguments":{"path":"/tmp/a","n":1},"name":"read"},"jsonrpc":"2.0","id":2}`,
		`{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/a","n":1},"_meta":{}}}`,
	}
	for _, req := range same {
		if d, err := digest(req); err != nil || d != base {
			t.Errorf("%s: %s, %v; want %s", req, d, err, base)
		}
	}
	differ := []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write","arguments":{"path":"/tmp/a","n":1}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/b","n":1}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/a","n":1,"_meta":{}}}}`,
	}
	for _, req := range differ {
		if d, err := digest(req); err != nil || d == base {
			t.Errorf("%s: %s, %v; want another digest", req, d, err)
		}
	}
	refused := []string{
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","name":"write"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","task":{"ttl":1}}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}}`,
		`{"jsonrpc":"1.0","id":1,"method":"tools/call","params":{"name":"read"}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":[1]}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":7}}`,
		`{"jsonrpc":"2.0","id":1,"method":"tools/call"}`,
		`[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read"}}]`,
	}
	for _, req := range refused {
		if _, err := ToolCallFromRequest(server, []byte(req)); err == nil {
			t.Errorf("%s: accepted", req)
		}
	}
}

// FuzzToolCallFromRequest: no request panics the reader, and every tool
// call it accepts has a digest.
func FuzzToolCallFromRequest(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read","arguments":{"path":"/tmp/a"},"_meta":{"p":1}}}`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}}`))
	f.Fuzz(func(t *testing.T, req []byte) {
		tc, err := ToolCallFromRequest("spiffe://td/mcp", req)
		if err != nil {
			return
		}
		if _, err := (&Action{Kind: KindMCP, MCP: tc}).Digest(); err != nil {
			t.Fatalf("accepted %q but it has no digest: %v", req, err)
		}
	})
}

// BenchmarkMCPDigest is what a gateway pays to bind one tool call: parse
// the JSON-RPC request, canonicalize the arguments, hash.
func BenchmarkMCPDigest(b *testing.B) {
	req := []byte(`{"jsonrpc":"2.0","id":17,"method":"tools/call","params":{"_meta":{"progressToken":"p-17"},"name":"read_file",` +
		`"arguments":{"path":"/tmp/reports/2026/q4.csv","encoding":"utf-8","limit":1000,"offset":0,"columns":["date","amount","account"],"filters":{"amount":{"gte":100.5},"account":"ops"}}}}`)
	b.ReportAllocs()
	for b.Loop() {
		tc, err := ToolCallFromRequest("spiffe://example.org/mcp/files", req)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := (&Action{Kind: KindMCP, MCP: tc}).Digest(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHTTPDigest binds one request with two headers.
func BenchmarkHTTPDigest(b *testing.B) {
	a := &Action{Kind: KindHTTP, HTTP: &HTTPRequest{Method: "GET", Scheme: "https", Authority: "api.example.com",
		Path: "/v1/items", Query: "limit=10", Headers: map[string][]string{"x-tenant": {"acme"}, "authorization": nil},
		BodySHA256: hexSHA256("")}}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.Digest(); err != nil {
			b.Fatal(err)
		}
	}
}
