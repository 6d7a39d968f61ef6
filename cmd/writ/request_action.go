package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/shim"
)

// requestAction prints a writ for one tools/call (--mcp-server) or one
// HTTP request (--http-method, --http-url): through the agent's node API,
// or with --direct from the broker with the node's SVID (docs/adr/0031).
func requestAction(c *cli.Context) error {
	what := "an HTTP request"
	if c.IsSet("mcp-server") {
		what = "a tool call"
	}
	if c.Args().Present() {
		return usageError(fmt.Errorf("--%s requests a writ for %s, not for a command", map[bool]string{true: "mcp-server", false: "http-url"}[c.IsSet("mcp-server")], what))
	}
	if err := unusedFlags(c, what+" has no environment", "env", "allow-dangerous-env"); err != nil {
		return err
	}
	req, err := actionRequest(c)
	if err != nil {
		return err
	}
	var token string
	if c.Bool("direct") {
		if err := givenFlags(c, "--direct does not ask the agent", "agent", "agent-uid"); err != nil {
			return err
		}
		cfg, err := shimConfig(c)
		if err == nil {
			err = approvalWait(c, &cfg)
		}
		if err != nil {
			return denied(c, err)
		}
		token, err = enforce.RequestAction(c.Context, cfg, directRequest(req))
		if err != nil {
			return approvalPending(c, err)
		}
	} else {
		if err := givenFlags(c, "through the agent a request does not wait for an approval; add --direct", "wait"); err != nil {
			return err
		}
		if err := givenFlags(c, "the agent holds the node's identity, TPM and broker connection; add --direct to use them here", "broker", "tpm", "data-dir"); err != nil {
			return err
		}
		uid := c.Uint("agent-uid")
		if uint(uint32(uid)) != uid {
			return usageError(fmt.Errorf("--agent-uid %d: not a uid", uid))
		}
		token, err = shim.RequestVia(c.Context, c.Path("agent"), shim.Config{AgentUID: uint32(uid)}, req)
		if err != nil {
			return denied(c, err)
		}
	}
	_, err = fmt.Fprintln(c.App.Writer, token)
	return err
}

// actionRequest is the node API request the flags describe.
func actionRequest(c *cli.Context) (*shim.ActionRequest, error) {
	req := &shim.ActionRequest{Audience: c.String("audience"), Parent: c.String("parent"), Once: c.Bool("once")}
	if c.IsSet("mcp-server") {
		if c.IsSet("http-method") || c.IsSet("http-url") {
			return nil, usageError(errors.New("--mcp-server and --http-url: a writ is for one action"))
		}
		if err := unusedFlags(c, "they go with --http-url", "header", "body-file"); err != nil {
			return nil, err
		}
		if c.String("tool") == "" {
			return nil, usageError(errors.New("--mcp-server needs --tool"))
		}
		call := &shim.MCPCall{Server: c.String("mcp-server"), Tool: c.String("tool")}
		if c.IsSet("arguments") {
			var obj map[string]json.RawMessage
			if err := json.Unmarshal([]byte(c.String("arguments")), &obj); err != nil || obj == nil {
				return nil, usageError(fmt.Errorf("--arguments: not a JSON object: %q", c.String("arguments")))
			}
			call.Arguments = json.RawMessage(c.String("arguments"))
		}
		req.Action.MCP = call
		return req, nil
	}
	if err := unusedFlags(c, "they go with --mcp-server", "tool", "arguments"); err != nil {
		return nil, err
	}
	if c.String("http-url") == "" || c.String("http-method") == "" {
		return nil, usageError(errors.New("an http writ needs --http-url (and a --http-method, GET by default)"))
	}
	if req.Audience == "" {
		return nil, usageError(errors.New("--http-url needs --audience, the gateway's SPIFFE ID"))
	}
	call, err := httpCall(c.String("http-method"), c.String("http-url"), c.StringSlice("header"), c.Path("body-file"))
	if err != nil {
		return nil, err
	}
	req.Action.HTTP = call
	return req, nil
}

// httpCall is the request a URL (kept as written: httpActionOf), headers
// and body file describe.
func httpCall(method, rawURL string, headers []string, bodyFile string) (*shim.HTTPCall, error) {
	act, err := httpActionOf(method, rawURL, headers)
	if err != nil {
		return nil, usageError(err)
	}
	call := &shim.HTTPCall{Method: act.Method, Scheme: act.Scheme, Authority: act.Authority, Path: act.Path, Query: act.Query}
	for _, h := range act.Headers {
		call.Headers = append(call.Headers, shim.HTTPHeader{Name: h.Name, Values: h.Values})
	}
	var body []byte
	if bodyFile != "" {
		if body, err = os.ReadFile(bodyFile); err != nil {
			return nil, usageError(fmt.Errorf("--body-file: %w", err))
		}
	}
	sum := sha256.Sum256(body)
	call.BodySHA256 = hex.EncodeToString(sum[:])
	return call, nil
}

// directRequest is the broker request for req (writ request --direct).
func directRequest(req *shim.ActionRequest) *brokerv1.WritRequest {
	out := &brokerv1.WritRequest{Audience: req.Audience, Once: req.Once, Parent: req.Parent}
	if m := req.Action.MCP; m != nil {
		out.Mcp = &brokerv1.MCPAction{Server: m.Server, Method: "tools/call", Tool: m.Tool, Arguments: m.Arguments}
		return out
	}
	h := req.Action.HTTP
	out.Http = &brokerv1.HTTPAction{Method: h.Method, Scheme: h.Scheme, Authority: h.Authority, Path: h.Path, Query: h.Query, BodySha256: h.BodySHA256}
	for _, hd := range h.Headers {
		out.Http.Headers = append(out.Http.Headers, &brokerv1.HTTPHeader{Name: hd.Name, Values: hd.Values})
	}
	return out
}
