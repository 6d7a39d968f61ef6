package agent

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/shim"
)

// Writs for tool calls and HTTP requests through the agent
// (docs/adr/0031): the caller names the action; the agent names the
// parent from the caller's ancestry, asks the broker on its warm
// connection and records the decision in the node's audit log.

// Reasons of action requests.
const (
	// ReasonParentNotAncestor: a governed caller named a parent other
	// than the writ of its nearest governed ancestor.
	ReasonParentNotAncestor = "parent_not_ancestor"
	// ReasonParentRevoked: the broker's node events say the governing
	// writ (or one of its ancestors) was revoked.
	ReasonParentRevoked = "parent_revoked"
	// ReasonActionInvalid: the action has no canonical encoding.
	ReasonActionInvalid = "action_invalid"
	// ReasonWritInvalid: the broker's answer is not a writ for this
	// action and parent, signed with a key of the bundle.
	ReasonWritInvalid = "writ_invalid"
)

// AuditKindRequest is the node audit entry kind of an action request's
// decision (allow or deny).
const AuditKindRequest = "writ-request"

// actionDecision answers an action request. Checks, in order, each
// refusal audited (writ-request, deny) before it is answered:
//
//  1. the action has a canonical encoding: action_invalid;
//  2. the caller's ancestry can be read: lineage_unknown;
//  3. a parent the caller names is its ancestry's, or the caller has no
//     governed ancestor (then the broker checks it as any named parent:
//     live, same node): parent_not_ancestor;
//  4. the node's standing (docs/adr/0024): node_failed, node_stale,
//     node_revoked, events_unavailable;
//  5. the caller's workload subject (docs/adr/0023): its reason codes;
//  6. the parent from the ancestry is not revoked as the broker's node
//     events say: parent_revoked;
//  7. the broker issues the writ (its reason codes; broker_unreachable),
//     told that the parent is the ancestry's (brokerv1.LineageMetadata),
//     which lets it accept a governing writ that expired within its
//     lineage retention;
//  8. the answer is a writ signed with a bundle key, for this action and
//     this parent: writ_invalid.
//
// The allow is recorded (writ-request, allow, refs jti, parent, action,
// kind, display) before the writ is returned: audit_failed.
func (a *Agent) actionDecision(ctx context.Context, c *net.UnixConn, caller *unix.Ucred, req *shim.ActionRequest) *shim.NodeResponse {
	pid := int(caller.Pid)
	refs := map[string]string{"caller_pid": strconv.Itoa(pid), "caller_uid": strconv.FormatUint(uint64(caller.Uid), 10)}
	subject := ""
	if n, err := a.Node(); err == nil {
		subject = n.SPIFFEID
	}
	deny := func(d *enforce.Denial) *shim.NodeResponse {
		a.log.Warn("writ request refused", "reason", d.Reason, "pid", pid, "detail", d.Detail)
		e := audit.Entry{Kind: AuditKindRequest, Subject: subject, Decision: "deny", Reason: d.Reason, Refs: refs}
		if _, err := nodelog.Append(ctx, a.dir, e); err != nil {
			a.log.Warn("refused writ request not audited", "reason", d.Reason, "err", err)
		}
		return &shim.NodeResponse{Reason: d.Reason, Detail: d.Detail}
	}
	act, wreq := actionOf(req)
	digest, err := act.Digest() // 1
	if err != nil {
		return deny(&enforce.Denial{Reason: ReasonActionInvalid, Detail: err.Error()})
	}
	refs["action"], refs["kind"], refs["display"] = digest, act.Kind, act.Display()
	st, err := a.lineage.read(pid) // 2
	if err != nil {
		return deny(&enforce.Denial{Reason: ReasonLineageUnknown, Detail: "the caller's process cannot be read"})
	}
	parent, err := a.lineage.parentFrom(pid, st, time.Now())
	if err != nil && !expiredParent(err, parent) {
		return deny(asDenial(err))
	}
	ancestry := parent != ""
	switch { // 3
	case req.Parent != "" && ancestry && req.Parent != parent:
		return deny(&enforce.Denial{Reason: ReasonParentNotAncestor,
			Detail: fmt.Sprintf("the caller is governed by writ %s and may not name %s as parent", parent, req.Parent)})
	case req.Parent != "" && !ancestry:
		parent = req.Parent
		refs["lineage"] = "caller"
	case ancestry:
		refs["lineage"] = "ancestry"
	}
	refs["parent"] = parent
	if d := a.standing.refusal(time.Now()); d != nil { // 4
		return deny(d)
	}
	w, d := a.subjectOf(ctx, c) // 5
	if d != nil {
		return deny(d)
	}
	if w != nil {
		subject, refs["entry"] = w.ID.String(), w.EntryID
		wreq.Workload = &brokerv1.WorkloadSubject{EntryId: w.EntryID, Selectors: w.Selectors}
		for _, cert := range w.SVID {
			wreq.Workload.Svid = append(wreq.Workload.Svid, cert.Raw)
		}
	}
	if ancestry { // 6
		if d := a.checkParentRevoked(parent); d != nil {
			return deny(d)
		}
	}
	client, node := a.execDeps()
	if client == nil {
		return deny(&enforce.Denial{Reason: enforce.ReasonBrokerUnreachable, Detail: "the agent has no connection to the broker yet"})
	}
	wreq.Parent = parent
	token, d := a.requestWrit(ctx, client, wreq, ancestry) // 7
	if d != nil {
		return deny(d)
	}
	claims, err := artifact.VerifySignature(token, node.Keys) // 8
	if err != nil || claims.Action.Digest != digest || claims.Parent != parent {
		return deny(&enforce.Denial{Reason: ReasonWritInvalid, Detail: "the broker's answer is not a writ for this action and parent"})
	}
	refs["jti"] = claims.ID
	e := audit.Entry{Kind: AuditKindRequest, Subject: claims.Subject, Decision: "allow", Refs: refs}
	if _, err := nodelog.Append(ctx, a.dir, e); err != nil {
		a.log.Error("writ request not recorded: refused", "jti", claims.ID, "err", err)
		return &shim.NodeResponse{Reason: enforce.ReasonAuditFailed, Detail: "the decision could not be written to the audit log"}
	}
	a.log.Info("writ issued through the node API", "pid", pid, "jti", claims.ID, "parent", parent, "action", claims.Action.Display)
	return &shim.NodeResponse{Writ: token, Node: node.ID.String(), Subject: claims.Subject, Bundle: node.Bundle}
}

// actionOf is the request's action and the broker request for it.
func actionOf(req *shim.ActionRequest) (*artifact.Action, *brokerv1.WritRequest) {
	wreq := &brokerv1.WritRequest{Audience: req.Audience, Once: req.Once}
	if m := req.Action.MCP; m != nil {
		args := []byte(m.Arguments)
		wreq.Mcp = &brokerv1.MCPAction{Server: m.Server, Method: "tools/call", Tool: m.Tool, Arguments: args}
		return &artifact.Action{Kind: artifact.KindMCP, MCP: &artifact.ToolCall{Server: m.Server, Method: "tools/call", Tool: m.Tool,
			Arguments: args}}, wreq
	}
	h := req.Action.HTTP
	headers := map[string][]string{}
	wreq.Http = &brokerv1.HTTPAction{Method: h.Method, Scheme: h.Scheme, Authority: h.Authority, Path: h.Path, Query: h.Query,
		BodySha256: h.BodySHA256}
	for _, hd := range h.Headers {
		wreq.Http.Headers = append(wreq.Http.Headers, &brokerv1.HTTPHeader{Name: hd.Name, Values: hd.Values})
		headers[hd.Name] = append(headers[hd.Name], hd.Values...)
	}
	return &artifact.Action{Kind: artifact.KindHTTP, HTTP: &artifact.HTTPRequest{Method: h.Method, Scheme: h.Scheme,
		Authority: h.Authority, Path: h.Path, Query: h.Query, Headers: headers, BodySHA256: h.BodySHA256}}, wreq
}

// requestWrit asks the broker on the warm connection.
func (a *Agent) requestWrit(ctx context.Context, client brokerv1.BrokerClient, req *brokerv1.WritRequest, ancestry bool) (string, *enforce.Denial) {
	timeout := a.cfg.RPCTimeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if ancestry {
		ctx = metadata.AppendToOutgoingContext(ctx, brokerv1.LineageMetadata, brokerv1.LineageAncestry)
	}
	resp, err := client.RequestWrit(ctx, req)
	if err == nil {
		return resp.GetWrit(), nil
	}
	if reason := brokerv1.ReasonOf(err); reason != "" {
		return "", &enforce.Denial{Reason: reason, Detail: "broker: " + status.Convert(err).Message()}
	}
	if c := status.Code(err); c == codes.Unavailable || c == codes.DeadlineExceeded || c == codes.Canceled {
		return "", &enforce.Denial{Reason: enforce.ReasonBrokerUnreachable, Detail: err.Error()}
	}
	return "", &enforce.Denial{Reason: enforce.ReasonInternal, Detail: err.Error()}
}

// checkParentRevoked refuses a parent the broker's node events say was
// revoked (parent_revoked). Without events it says nothing: the standing
// refuses after its grace, and the broker checks the parent anyway.
func (a *Agent) checkParentRevoked(parent string) *enforce.Denial {
	w := a.events.Load()
	if w == nil {
		return nil
	}
	if err := w.CheckWrit(parent); enforce.ReasonOf(err) == enforce.ReasonWritRevoked {
		return &enforce.Denial{Reason: ReasonParentRevoked, Detail: "the broker revoked the governing writ " + parent + " (or an ancestor)"}
	}
	return nil
}
