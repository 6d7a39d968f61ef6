package shim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// ActionRequest asks the agent for a writ for an HTTP request or an MCP
// tool call (docs/adr/0031): the agent identifies the caller, finds the
// parent from its ancestry as for an exec, asks the broker on its warm
// connection and answers with the writ (NodeResponse.Writ), sending no
// files. It is told from a NodeRequest by its "action" member; an exec
// request is unchanged on the wire.
type ActionRequest struct {
	Action   Action `json:"action"`
	Audience string `json:"audience,omitempty"` // the relying party's SPIFFE ID (a gateway); empty: the node
	// Parent is accepted only from a caller with no governed ancestor
	// (an MCP server naming the tool-call writ it received, say), and
	// checked by the broker; a governed caller's parent is its ancestry's.
	Parent string `json:"parent,omitempty"`
	Once   bool   `json:"once,omitempty"`
}

// Action is exactly one of MCP and HTTP.
type Action struct {
	MCP  *MCPCall  `json:"mcp,omitempty"`
	HTTP *HTTPCall `json:"http,omitempty"`
}

// MCPCall is one tools/call (artifact.ToolCall).
type MCPCall struct {
	Server    string          `json:"server"`
	Tool      string          `json:"tool"`
	Arguments json.RawMessage `json:"arguments,omitempty"` // a JSON object; absent: {}
}

// HTTPCall is one HTTP request (artifact.HTTPRequest).
type HTTPCall struct {
	Method     string       `json:"method"`
	Scheme     string       `json:"scheme"`
	Authority  string       `json:"authority"`
	Path       string       `json:"path"`
	Query      string       `json:"query,omitempty"`
	Headers    []HTTPHeader `json:"headers,omitempty"`
	BodySHA256 string       `json:"body_sha256"`
}

// HTTPHeader is a bound header: its values in order; none binds absence.
type HTTPHeader struct {
	Name   string   `json:"name"`
	Values []string `json:"values,omitempty"`
}

// DecodeRequest parses a node API request from an untrusted caller: an
// ActionRequest when it has an "action" member, else a NodeRequest (an
// exec). Each is decoded strictly (DecodeNodeRequest,
// DecodeActionRequest).
func DecodeRequest(b []byte) (*NodeRequest, *ActionRequest, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, nil, fmt.Errorf("shim: node request: %w", err)
	}
	if _, ok := top["action"]; ok {
		a, err := DecodeActionRequest(b)
		return nil, a, err
	}
	r, err := DecodeNodeRequest(b)
	return r, nil, err
}

// DecodeActionRequest parses an action request: unknown fields refused,
// exactly one action, its arguments (if any) a JSON object.
func DecodeActionRequest(b []byte) (*ActionRequest, error) {
	var r ActionRequest
	if err := decodeStrict(b, &r); err != nil {
		return nil, fmt.Errorf("shim: action request: %w", err)
	}
	switch {
	case (r.Action.MCP == nil) == (r.Action.HTTP == nil):
		return nil, errors.New("shim: action request: name exactly one of mcp and http")
	case r.Action.MCP != nil && (r.Action.MCP.Server == "" || r.Action.MCP.Tool == ""):
		return nil, errors.New("shim: action request: an mcp action needs its server and tool")
	case r.Action.MCP != nil && len(r.Action.MCP.Arguments) > 0 && !isObject(r.Action.MCP.Arguments):
		return nil, errors.New("shim: action request: mcp arguments are not a JSON object")
	}
	return &r, nil
}

func isObject(raw json.RawMessage) bool {
	var obj map[string]json.RawMessage
	return json.Unmarshal(raw, &obj) == nil && obj != nil && bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{"))
}

// RequestVia asks the agent on socket for the writ req names and returns
// it, unverified (its relying party verifies it). The agent's refusal is
// a *Denial with its reason code.
func RequestVia(ctx context.Context, socket string, cfg Config, req *ActionRequest) (string, error) {
	conn, err := dial(ctx, socket, cfg)
	if err != nil {
		return "", err
	}
	defer func() { _ = conn.Close() }()
	resp, got, err := roundTrip(conn, req, nil)
	if err != nil {
		return "", err
	}
	closeAll(got)
	if len(got) > 0 || resp.Writ == "" {
		return "", Deny(ReasonAgentUnreachable, nil, "node API: an answer without a writ, or with files")
	}
	return resp.Writ, nil
}
