package artifact

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/writ-dev/writ/artifact/jcs"
)

// KindMCP is the kind of an Action that calls one MCP tool.
const KindMCP = "mcp"

// MethodToolsCall is the JSON-RPC method of an MCP tool call, the only
// MCP method a writ names for now.
const MethodToolsCall = "tools/call"

// ToolCall is one MCP tool call (docs/writ-format.md, section 4). What it
// binds is the server, the method, params.name and params.arguments; the
// JSON-RPC id (new on each retry), params._meta (progress token, the writ
// itself, anything else a client attaches) and every other member of the
// request are outside it.
type ToolCall struct {
	Server string // the server's identity: its SPIFFE ID, or its URL
	Method string // the JSON-RPC method: "tools/call"
	Tool   string // params.name
	// Arguments is the JSON text of params.arguments, a JSON object; nil
	// or empty when the request has none, which binds as {}. It is bound
	// by the sha256 of its RFC 8785 (JCS) canonical form, so key order,
	// whitespace, escapes and number spelling do not change the digest.
	Arguments []byte
}

// ArgumentsSHA256 returns the lower-case hex sha256 of the JCS form of
// the arguments, refusing (with a jcs reason code in the error) what is
// not a JSON object JCS can represent.
func (t *ToolCall) ArgumentsSHA256() (string, error) {
	args := t.Arguments
	if len(args) == 0 {
		args = []byte("{}")
	}
	v, err := jcs.Parse(args)
	if err != nil {
		return "", fmt.Errorf("artifact: mcp arguments: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return "", fmt.Errorf("artifact: mcp arguments are not a JSON object")
	}
	sum := sha256.Sum256(jcs.Append(nil, v))
	return hex.EncodeToString(sum[:]), nil
}

func (t *ToolCall) validate() error {
	switch {
	case t == nil:
		return fmt.Errorf("artifact: mcp action without its tool call")
	case t.Server == "" || !isPrintableText(t.Server):
		return fmt.Errorf("artifact: mcp server %q is empty or holds a control character", t.Server)
	case t.Method != MethodToolsCall:
		return fmt.Errorf("artifact: mcp method %q is not %q", t.Method, MethodToolsCall)
	case t.Tool == "" || !isPrintableText(t.Tool):
		return fmt.Errorf("artifact: mcp tool name %q is empty or holds a control character", t.Tool)
	}
	return nil
}

// appendMCP appends the fields of an mcp action after str(kind):
//
//	str(server) str(method) str(tool) str(arguments sha256)
func appendMCP(b []byte, t *ToolCall, argsSHA256 string) []byte {
	for _, s := range []string{t.Server, t.Method, t.Tool, argsSHA256} {
		b = appendString(b, s)
	}
	return b
}

// isPrintableText reports whether s is valid UTF-8 with no C0 control
// character and no DEL.
func isPrintableText(s string) bool {
	return !strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f || r == 0xfffd })
}

// ToolCallFromRequest reads the tool call of one JSON-RPC tools/call
// request for server. The request is parsed as JCS parses (no duplicate
// member at any level, so every reader sees the same name and arguments).
// It binds method, params.name and params.arguments (kept in their JCS
// form); it leaves out exactly the JSON-RPC id, which a retry changes, and
// params._meta (progress token, the writ carried there, and whatever else a
// client attaches). Any other member of params is refused, as is a request
// that is not a JSON-RPC 2.0 tools/call: a member the writ does not bind
// must not reach the server.
func ToolCallFromRequest(server string, request []byte) (*ToolCall, error) {
	v, err := jcs.Parse(request)
	if err != nil {
		return nil, fmt.Errorf("artifact: mcp request: %w", err)
	}
	msg, ok := v.(map[string]any)
	if !ok || msg["jsonrpc"] != "2.0" || msg["method"] != MethodToolsCall {
		return nil, fmt.Errorf("artifact: mcp request: not a JSON-RPC 2.0 %s request", MethodToolsCall)
	}
	params, ok := msg["params"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("artifact: mcp request: params is not an object")
	}
	t := &ToolCall{Server: server, Method: MethodToolsCall}
	for name, value := range params {
		switch name {
		case "name":
			if t.Tool, ok = value.(string); !ok {
				return nil, fmt.Errorf("artifact: mcp request: params.name is not a string")
			}
		case "arguments":
			if _, ok := value.(map[string]any); !ok {
				return nil, fmt.Errorf("artifact: mcp request: params.arguments is not an object")
			}
			t.Arguments = jcs.Append(nil, value)
		case "_meta":
		default:
			return nil, fmt.Errorf("artifact: mcp request: params.%s is not bound by a writ", name)
		}
	}
	if err := t.validate(); err != nil {
		return nil, err
	}
	return t, nil
}
