// Package mcpgate is writ's MCP gateway: a streamable-HTTP proxy, built on
// the MCP Go SDK, that forwards a tools/call to its upstream server only
// with a writ bound to exactly that call (docs/adr/0027).
package mcpgate

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
)

// MetaKey is the member of a tools/call's params._meta that carries the
// writ; HeaderName is the HTTP header that may carry it instead.
const (
	MetaKey    = "dev.writ/writ"
	HeaderName = "Writ"
)

// ParentMetaKey is the member of params._meta of a forwarded tools/call
// that names the checked writ's jti, so that the tool can name it as the
// parent of the writs it requests (lineage). Nothing else of the caller's
// _meta is forwarded.
const ParentMetaKey = "dev.writ/parent"

// Reason codes of the gateway's own refusals; every other refusal carries
// the artifact reason code of the failed check (writ_expired,
// action_mismatch, cnf_mismatch, writ_replayed, ...).
const (
	ReasonWritMissing     = "writ_missing"    // no writ in _meta nor in the header, or two different ones
	ReasonCallerNoSVID    = "caller_no_svid"  // the TLS connection presented no client certificate
	ReasonRequestInvalid  = "request_invalid" // the call has no mcp encoding (artifact.ToolCallFromRequest)
	ReasonUpstreamFailed  = "upstream_failed" // the upstream server could not be reached
	ReasonGatewayAuditErr = "audit_failed"    // the decision could not be recorded: nothing is forwarded
	// ReasonWritRequestFailed: the gateway asked the broker for a writ for
	// the caller and got no answer with a reason code (unreachable, ...).
	// A refusal with a reason code carries the broker's (action_denied, ...).
	ReasonWritRequestFailed = "writ_request_failed"
	// ReasonToolsListFailed: tools/list could not be filtered to what the
	// caller may call (the broker did not answer): nothing is listed.
	ReasonToolsListFailed = "tools_list_failed"
)

// CodeRefused is the JSON-RPC error code of a refused call; its data is
// {"reason": "<code>"}.
const CodeRefused = -32001

// Consumer spends a single-use writ at its issuer (the broker's
// ConsumeWrit, over mTLS with the gateway's SVID).
type Consumer interface {
	Consume(ctx context.Context, token string) error
}

// Requester asks the broker for a single-use writ bound to exactly call,
// for the caller whose X.509-SVID chain (leaf first) the gateway received
// in its TLS handshake. A refusal is a *BrokerRefusal.
type Requester interface {
	RequestWrit(ctx context.Context, caller []*x509.Certificate, call *artifact.ToolCall) (string, error)
}

// ToolLister says which of the named tools of server some rule could let
// the caller call (the broker's PermittedTools). A refusal is a
// *BrokerRefusal.
type ToolLister interface {
	PermittedTools(ctx context.Context, caller []*x509.Certificate, server string, tools []string) ([]string, error)
}

// Upstream is the gateway's client of the upstream MCP server: a
// *mcp.ClientSession, or a *Supervisor restarting a stdio server.
type Upstream interface {
	CallTool(ctx context.Context, p *mcp.CallToolParams) (*mcp.CallToolResult, error)
	ListTools(ctx context.Context, p *mcp.ListToolsParams) (*mcp.ListToolsResult, error)
}

var _ Upstream = (*mcp.ClientSession)(nil)

// Standing is the broker's node events as the gateway reads them
// (gateway.Standing); *enforce.Watcher is one.
type Standing = gateway.Standing

// Config is one gateway.
type Config struct {
	ServerID string      // the upstream's identity as writs name it (action.server)
	Audience spiffeid.ID // the gateway's SPIFFE ID: the writ's aud
	Keys     artifact.KeySet
	Upstream Upstream // a connected session to the upstream server
	Consumer Consumer
	// Requester, when set, asks the broker for a writ for a call that
	// carries none (docs/adr/0028); nil: such a call is writ_missing.
	Requester Requester
	// Tools filters tools/list to what the caller may call; nil: tools/list
	// is refused (tools_list_failed), never answered in full.
	Tools   ToolLister
	Nodes   Standing           // the broker's node events; required
	Reasons func(error) string // the reason code of a Standing error
	Audit   *audit.Log
	Log     *slog.Logger
	Now     func() time.Time // zero: time.Now
	// RetryEntries bounds the retry cache; zero: gateway.DefaultRetryEntries.
	RetryEntries int
}

// Gateway checks and forwards MCP tool calls.
type Gateway struct {
	cfg   Config
	retry *gateway.RetryCache
	lists *listCache
}

// New returns a gateway for cfg.
func New(cfg Config) (*Gateway, error) {
	switch {
	case cfg.ServerID == "":
		return nil, errors.New("mcpgate: the server id is required")
	case cfg.Audience.IsZero():
		return nil, errors.New("mcpgate: the gateway's SPIFFE ID is required")
	case cfg.Upstream == nil || cfg.Consumer == nil || cfg.Audit == nil || cfg.Nodes == nil || cfg.Reasons == nil:
		return nil, errors.New("mcpgate: upstream, consumer, node standing and audit log are required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.RetryEntries == 0 {
		cfg.RetryEntries = gateway.DefaultRetryEntries
	}
	return &Gateway{cfg: cfg, retry: gateway.NewRetryCache(cfg.RetryEntries), lists: newListCache()}, nil
}

// Handler is the gateway's MCP endpoint. It is stateless (one SDK server
// per HTTP request) so that every call is checked against the client
// certificate of the TLS connection it arrived on, never the one a
// session began on.
func (g *Gateway) Handler() http.Handler {
	return mcp.NewStreamableHTTPHandler(func(r *http.Request) *mcp.Server {
		var chain []*x509.Certificate // as the caller sent it, leaf first; verified by the handshake
		if r.TLS != nil {
			chain = r.TLS.PeerCertificates
		}
		s := mcp.NewServer(&mcp.Implementation{Name: "writ-gateway", Version: "v1"},
			&mcp.ServerOptions{Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}}})
		s.AddReceivingMiddleware(g.middleware(chain))
		return s
	}, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
}

// middleware answers tools/call by checking and forwarding it, and
// tools/list by forwarding it and filtering the answer; initialize and
// ping are the SDK server's.
func (g *Gateway) middleware(chain []*x509.Certificate) mcp.Middleware {
	return func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			switch method {
			case "tools/call":
				r, ok := req.(*mcp.ServerRequest[*mcp.CallToolParamsRaw])
				if !ok {
					return nil, refused(ReasonRequestInvalid)
				}
				return g.call(ctx, chain, r)
			case "tools/list":
				p, _ := req.GetParams().(*mcp.ListToolsParams)
				var cursor string
				if p != nil {
					cursor = p.Cursor
				}
				return g.listTools(ctx, chain, cursor)
			}
			return next(ctx, method, req)
		}
	}
}

// call decides one tools/call and forwards it when allowed.
func (g *Gateway) call(ctx context.Context, chain []*x509.Certificate, r *mcp.ServerRequest[*mcp.CallToolParamsRaw]) (mcp.Result, error) {
	d := g.decide(ctx, chain, r)
	if err := g.record(ctx, d); err != nil {
		g.cfg.Log.Error("gateway audit append failed", "err", err)
		return nil, refused(ReasonGatewayAuditErr)
	}
	if d.reason != "" {
		g.cfg.Log.Info("tool call refused", "reason", d.reason, "caller", d.caller, "tool", d.tool, "detail", d.detail)
		return nil, refusedWith(d.reason, d.shown)
	}
	res, err := g.cfg.Upstream.CallTool(ctx, &mcp.CallToolParams{Meta: mcp.Meta{ParentMetaKey: d.jti},
		Name: d.call.Tool, Arguments: json.RawMessage(d.forward)})
	if err != nil {
		var we *jsonrpc.Error
		if errors.As(err, &we) {
			return nil, we // the upstream's own JSON-RPC error, as it sent it
		}
		g.cfg.Log.Error("upstream call failed", "err", err)
		return nil, refused(ReasonUpstreamFailed)
	}
	return res, nil
}

// refused is the JSON-RPC error of a refusal.
func refused(reason string) *jsonrpc.Error { return refusedWith(reason, "") }

// refusedWith is a refusal whose data also carries a detail the caller
// may see (the broker's, for a writ it refused to issue), when not empty.
func refusedWith(reason, detail string) *jsonrpc.Error {
	m := map[string]string{"reason": reason}
	if detail != "" {
		m["detail"] = detail
	}
	data, _ := json.Marshal(m)
	return &jsonrpc.Error{Code: CodeRefused, Message: "writ gateway: refused: " + reason, Data: data}
}

// ReasonOf returns the reason code carried by a gateway refusal returned
// by an SDK client call, or "" when err is not one.
func ReasonOf(err error) string {
	var we *jsonrpc.Error
	if !errors.As(err, &we) || we.Code != CodeRefused {
		return ""
	}
	var d struct {
		Reason string `json:"reason"`
	}
	if json.Unmarshal(we.Data, &d) != nil {
		return ""
	}
	return d.Reason
}

func (g *Gateway) String() string {
	return fmt.Sprintf("mcp gateway %s for %s", g.cfg.Audience, g.cfg.ServerID)
}
