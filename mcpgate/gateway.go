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
)

// MetaKey is the member of a tools/call's params._meta that carries the
// writ; HeaderName is the HTTP header that may carry it instead.
const (
	MetaKey    = "dev.writ/writ"
	HeaderName = "Writ"
)

// Reason codes of the gateway's own refusals; every other refusal carries
// the artifact reason code of the failed check (writ_expired,
// action_mismatch, cnf_mismatch, writ_replayed, ...).
const (
	ReasonWritMissing     = "writ_missing"    // no writ in _meta nor in the header, or two different ones
	ReasonCallerNoSVID    = "caller_no_svid"  // the TLS connection presented no client certificate
	ReasonRequestInvalid  = "request_invalid" // the call has no mcp encoding (artifact.ToolCallFromRequest)
	ReasonUpstreamFailed  = "upstream_failed" // the upstream server could not be reached
	ReasonGatewayAuditErr = "audit_failed"    // the decision could not be recorded: nothing is forwarded
)

// CodeRefused is the JSON-RPC error code of a refused call; its data is
// {"reason": "<code>"}.
const CodeRefused = -32001

// Consumer spends a single-use writ at its issuer (the broker's
// ConsumeWrit, over mTLS with the gateway's SVID).
type Consumer interface {
	Consume(ctx context.Context, token string) error
}

// Standing says whether the broker still trusts a node (its SPIFFE ID)
// and a writ: an error carrying a reason code (ReasonOf) when it reported
// the node failed, stale or revoked, the writ revoked, or when it is not
// known (not in sync).
// *enforce.Watcher is one.
type Standing interface {
	CheckNode(node string) error
	// CheckWrit refuses a writ (its jti) the broker revoked
	// (writ_revoked, docs/adr/0031).
	CheckWrit(jti string) error
}

// Config is one gateway.
type Config struct {
	ServerID string      // the upstream's identity as writs name it (action.server)
	Audience spiffeid.ID // the gateway's SPIFFE ID: the writ's aud
	Keys     artifact.KeySet
	Upstream *mcp.ClientSession // a connected session to the upstream server
	Consumer Consumer
	Nodes    Standing           // the broker's node events; required
	Reasons  func(error) string // the reason code of a Standing error
	Audit    *audit.Log
	Log      *slog.Logger
	Now      func() time.Time // zero: time.Now
	// RetryEntries bounds the retry cache; zero: DefaultRetryEntries.
	RetryEntries int
}

// Gateway checks and forwards MCP tool calls.
type Gateway struct {
	cfg   Config
	retry *retryCache
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
		cfg.RetryEntries = DefaultRetryEntries
	}
	return &Gateway{cfg: cfg, retry: newRetryCache(cfg.RetryEntries)}, nil
}

// Handler is the gateway's MCP endpoint. It is stateless (one SDK server
// per HTTP request) so that every call is checked against the client
// certificate of the TLS connection it arrived on, never the one a
// session began on.
func (g *Gateway) Handler() http.Handler {
	return mcp.NewStreamableHTTPHandler(func(r *http.Request) *mcp.Server {
		var leaf *x509.Certificate
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
			leaf = r.TLS.PeerCertificates[0]
		}
		s := mcp.NewServer(&mcp.Implementation{Name: "writ-gateway", Version: "v1"},
			&mcp.ServerOptions{Capabilities: &mcp.ServerCapabilities{Tools: &mcp.ToolCapabilities{}}})
		s.AddReceivingMiddleware(g.middleware(leaf))
		return s
	}, &mcp.StreamableHTTPOptions{Stateless: true, JSONResponse: true})
}

// middleware answers tools/call by checking and forwarding it, and
// tools/list by forwarding it; initialize and ping are the SDK server's.
func (g *Gateway) middleware(leaf *x509.Certificate) mcp.Middleware {
	return func(next mcp.MethodHandler) mcp.MethodHandler {
		return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
			switch method {
			case "tools/call":
				r, ok := req.(*mcp.ServerRequest[*mcp.CallToolParamsRaw])
				if !ok {
					return nil, refused(ReasonRequestInvalid)
				}
				return g.call(ctx, leaf, r)
			case "tools/list":
				p, _ := req.GetParams().(*mcp.ListToolsParams)
				var cursor string
				if p != nil {
					cursor = p.Cursor
				}
				return g.cfg.Upstream.ListTools(ctx, &mcp.ListToolsParams{Cursor: cursor})
			}
			return next(ctx, method, req)
		}
	}
}

// call decides one tools/call and forwards it when allowed.
func (g *Gateway) call(ctx context.Context, leaf *x509.Certificate, r *mcp.ServerRequest[*mcp.CallToolParamsRaw]) (mcp.Result, error) {
	d := g.decide(ctx, leaf, r)
	if err := g.record(ctx, d); err != nil {
		g.cfg.Log.Error("gateway audit append failed", "err", err)
		return nil, refused(ReasonGatewayAuditErr)
	}
	if d.reason != "" {
		g.cfg.Log.Info("tool call refused", "reason", d.reason, "caller", d.caller, "tool", d.tool, "detail", d.detail)
		return nil, refused(d.reason)
	}
	res, err := g.cfg.Upstream.CallTool(ctx, &mcp.CallToolParams{Name: d.call.Tool, Arguments: json.RawMessage(d.forward)})
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
func refused(reason string) *jsonrpc.Error {
	data, _ := json.Marshal(map[string]string{"reason": reason})
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
