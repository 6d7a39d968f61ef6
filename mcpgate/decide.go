package mcpgate

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce/gateway"
)

// decision is what the gateway decided about one tools/call; reason is
// empty when the call may be forwarded.
type decision struct {
	reason, detail string
	shown          string // a detail the caller may see: the broker's, when it refused to issue
	requested      bool   // the gateway obtained the writ from the broker for the caller
	caller, tool   string
	jti, action    string
	call           *artifact.ToolCall
	forward        []byte // the arguments forwarded: their JCS form, exactly what the writ binds
}

// decide checks one tools/call, in this order, stopping at the first
// failure. It has no side effect but the last step's (and, in step 3, the
// broker's issuance of a writ for the caller).
//
//  1. the TLS connection presented a client certificate (the handshake
//     verified its chain to the trust bundle): caller_no_svid
//  2. the call has an mcp encoding for the configured server identity
//     (artifact.ToolCallFromRequest over the method, name and arguments
//     the SDK read; what is forwarded is rebuilt from exactly those):
//     request_invalid
//  3. a writ is in params._meta["dev.writ/writ"] or the Writ header (both
//     present: the same writ): writ_missing. When the call carries none
//     at all (neither the _meta member nor the header) and a Requester is
//     configured, the gateway asks the broker for a single-use writ bound
//     to exactly this call for the caller's chain (docs/adr/0028): the
//     broker's reason code when it refuses (action_denied, node_revoked,
//     gateway_not_allowed, ...), writ_request_failed when it gives none.
//     That writ then goes through steps 4 to 6 as a presented one.
//  4. artifact.Verify with the bundle's writ keys, aud = the gateway's
//     SPIFFE ID, the caller's leaf (sub, cnf), kind mcp and the digest of
//     step 2; att.pcrs is the writ's own (docs/adr/0027): every reason code
//     of artifact.Verify, writ_replayed included
//  5. the broker still trusts the writ's node (att.node; its node events,
//     Config.Nodes): node_failed, node_stale, node_revoked,
//     events_unavailable; and has not revoked the writ (or an ancestor):
//     writ_revoked (docs/adr/0031); checked before a single-use writ is
//     spent
//  6. (inside 4, last) a single-use writ is spent at the broker, unless
//     the same writ for the same digest was spent here before and has not
//     expired (a retry with a new JSON-RPC id): writ_replayed
func (g *Gateway) decide(ctx context.Context, chain []*x509.Certificate, r *mcp.ServerRequest[*mcp.CallToolParamsRaw]) *decision {
	d := &decision{}
	p := r.Params
	if p != nil {
		d.tool = p.Name
	}
	if len(chain) == 0 {
		return d.deny(ReasonCallerNoSVID, "no client certificate")
	}
	leaf := chain[0]
	if len(leaf.URIs) == 1 {
		if id, err := spiffeid.FromURI(leaf.URIs[0]); err == nil {
			d.caller = id.String()
		}
	}
	// Read, not trusted: the jti for the audit entry of any decision, and
	// the node and PCR digest Verify then checks under the signature.
	// Parsed once: a presented writ is not parsed again below.
	token, ok := writOf(r)
	var unverified *artifact.Claims
	if ok {
		if unverified, _ = artifact.ParseUnverified(token); unverified != nil {
			d.jti = unverified.ID
		}
	}
	if p == nil {
		return d.deny(ReasonRequestInvalid, "no params")
	}
	args := p.Arguments
	if len(args) == 0 {
		args = json.RawMessage("{}")
	}
	name, err := json.Marshal(p.Name)
	if err != nil {
		return d.deny(ReasonRequestInvalid, err.Error())
	}
	raw := fmt.Appendf(nil, `{"jsonrpc":"2.0","method":"tools/call","params":{"name":%s,"arguments":%s}}`, name, args)
	call, err := artifact.ToolCallFromRequest(g.cfg.ServerID, raw)
	if err != nil {
		return d.deny(ReasonRequestInvalid, err.Error())
	}
	d.call, d.forward = call, call.Arguments
	if len(d.forward) == 0 {
		d.forward = []byte("{}")
	}
	act := &artifact.Action{Kind: artifact.KindMCP, MCP: call}
	if d.action, err = act.Digest(); err != nil {
		return d.deny(ReasonRequestInvalid, err.Error())
	}
	if !ok && g.cfg.Requester != nil && noWrit(r) {
		d.requested = true
		if token, err = g.cfg.Requester.RequestWrit(ctx, chain, call); err != nil {
			var br *BrokerRefusal
			if errors.As(err, &br) {
				d.shown = br.Detail
				return d.deny(br.Reason, err.Error())
			}
			return d.deny(ReasonWritRequestFailed, err.Error())
		}
		if ok = token != ""; ok {
			if unverified, _ = artifact.ParseUnverified(token); unverified != nil {
				d.jti = unverified.ID
			}
		}
	}
	if !ok {
		return d.deny(ReasonWritMissing, "no writ in params._meta[\""+MetaKey+"\"] nor in the "+HeaderName+" header, or two different ones")
	}
	// The node's standing is checked after every check of Verify and
	// before a single-use writ is spent (gateway.VerifyWrit).
	standing, err := gateway.VerifyWrit(token, unverified, artifact.VerifyOptions{
		Keys: g.cfg.Keys, Audience: g.cfg.Audience.String(), SVID: leaf, Action: d.action, Kind: artifact.KindMCP, Now: g.cfg.Now(),
	}, g.cfg.Nodes, func(jti string, exp time.Time) error {
		return g.retry.Spend(ctx, g.cfg.Consumer, token, jti, d.action, exp, g.cfg.Now())
	})
	if standing != nil {
		return d.deny(g.cfg.Reasons(standing), standing.Error())
	}
	if err != nil {
		return d.deny(string(artifact.ReasonOf(err)), err.Error())
	}
	return d
}

func (d *decision) deny(reason, detail string) *decision {
	d.reason, d.detail = reason, detail
	return d
}

// writOf returns the writ of a call: from params._meta or the header; when
// both carry one they must be the same.
func writOf(r *mcp.ServerRequest[*mcp.CallToolParamsRaw]) (string, bool) {
	var meta, header string
	if r.Params != nil && r.Params.Meta != nil {
		v, present := r.Params.Meta[MetaKey]
		if present {
			s, ok := v.(string)
			if !ok || s == "" {
				return "", false
			}
			meta = s
		}
	}
	if r.Extra != nil && r.Extra.Header != nil {
		vs := r.Extra.Header.Values(HeaderName)
		switch {
		case len(vs) > 1:
			return "", false
		case len(vs) == 1:
			header = vs[0]
		}
	}
	switch {
	case meta != "" && header != "" && meta != header:
		return "", false
	case meta != "":
		return meta, true
	case header != "":
		return header, true
	}
	return "", false
}

// noWrit reports whether a call carries no writ at all: neither the
// _meta member (whatever its value) nor the header. Only such a call is
// one the gateway may ask a writ for; a malformed or conflicting writ is
// writ_missing.
func noWrit(r *mcp.ServerRequest[*mcp.CallToolParamsRaw]) bool {
	if r.Params != nil && r.Params.Meta != nil {
		if _, present := r.Params.Meta[MetaKey]; present {
			return false
		}
	}
	return r.Extra == nil || r.Extra.Header == nil || len(r.Extra.Header.Values(HeaderName)) == 0
}

// EntryKind is the kind of the gateway's audit entries: one per tools/call
// decision, refs server, tool, jti and action (the digest).
const EntryKind = "mcp-call"

// record appends the decision to the gateway's audit log.
func (g *Gateway) record(ctx context.Context, d *decision) error {
	e := audit.Entry{Kind: EntryKind, Subject: d.caller, Decision: audit.DecisionAllow, Reason: d.reason,
		Refs: map[string]string{"server": g.cfg.ServerID, "tool": d.tool}}
	if d.reason != "" {
		e.Decision = audit.DecisionDeny
	}
	if d.jti != "" {
		e.Refs["jti"] = d.jti
	}
	if d.action != "" {
		e.Refs["action"] = d.action
	}
	if d.requested {
		e.Refs["requested"] = "broker" // the gateway asked the broker for this caller's writ
	}
	_, err := g.cfg.Audit.Append(ctx, e)
	return err
}
