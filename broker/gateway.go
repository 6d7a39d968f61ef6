package broker

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
)

// Reasons the broker refuses a gateway acting for its caller
// (docs/adr/0028).
const (
	// ReasonGatewayNotAllowed: the mTLS caller is not a gateway the
	// configuration lists (gateways), or not for the action's kind.
	ReasonGatewayNotAllowed = "gateway_not_allowed"
	// ReasonCallerSVIDInvalid: the caller chain the gateway relayed does
	// not verify against this broker's CA (another CA, expired, malformed).
	ReasonCallerSVIDInvalid = "caller_svid_invalid"
	// ReasonCallerSVIDUnknown: the caller's leaf verifies but its serial
	// is not one this broker issued (recorded by node or workload SVID
	// issuance), or the record names another SPIFFE ID.
	ReasonCallerSVIDUnknown = "caller_svid_unknown"
)

// Bounds of a gateway's requests.
const (
	maxCallerChain = 8
	maxListTools   = 1024
	maxToolName    = 128
	maxServerName  = 2048
)

// opTools names PermittedTools' refusals (audit kind tools-list).
const opTools = "tools"

// gatewayKinds returns the action kinds the configuration lets gateway id
// ask for, or nil when it lists no such gateway.
func (b *Broker) gatewayKinds(id spiffeid.ID) []string {
	for _, g := range b.cfg.Gateways {
		if g.ID == id.String() {
			return g.Kinds
		}
	}
	return nil
}

// callerSubject resolves the caller whose X.509-SVID chain a listed
// gateway relayed, refusals audited as op's under the gateway's ID with
// refs gateway, in order:
//
//  1. the chain (DER, leaf first, 1 to 8 certificates) parses, verifies
//     against this broker's CA and is not expired: caller_svid_invalid.
//     A chain whose leaf names another trust domain verifies against that
//     federated domain's fresh bundle instead (foreignStanding,
//     docs/adr/0033) or caller_svid_invalid, and checks 2 and 3 do not
//     apply: it was not issued here and stands on no node of this broker;
//  2. its leaf's serial is one this broker issued (node or workload SVID)
//     to the same SPIFFE ID: caller_svid_unknown;
//  3. the node it was issued to is in good standing (nodeStanding, as for
//     a node's own calls): node_revoked, node_stale, attestation_missing,
//     attestation_failed, attestation_stale, attestation_policy_changed.
//
// The subject is the caller's SPIFFE ID and its leaf; n is the node.
func (b *Broker) callerSubject(ctx context.Context, op string, gw spiffeid.ID, c *brokerv1.CallerSubject) (writSubject, standingNode, error) {
	refs := map[string]string{"gateway": gw.String()}
	deny := func(reason, format string, args ...any) (writSubject, standingNode, error) {
		return writSubject{}, standingNode{}, b.denyRefs(ctx, op, gw.String(), reason, codes.PermissionDenied, fmt.Sprintf(format, args...), refs)
	}
	der := c.GetSvid()
	if len(der) == 0 || len(der) > maxCallerChain {
		return deny(ReasonCallerSVIDInvalid, "the caller's SVID chain has %d certificates, want 1 to %d", len(der), maxCallerChain)
	}
	chain := make([]*x509.Certificate, 0, len(der))
	for _, d := range der {
		cert, err := x509.ParseCertificate(d)
		if err != nil {
			return deny(ReasonCallerSVIDInvalid, "the caller's SVID: %v", err)
		}
		chain = append(chain, cert)
	}
	if leafID, err := x509svid.IDFromCert(chain[0]); err == nil && leafID.TrustDomain() != b.td {
		sub, n, err := b.foreignStanding(chain) // check 1, foreign
		if err != nil {
			return deny(ReasonCallerSVIDInvalid, "the caller's SVID (of trust domain %s) does not verify: %v", leafID.TrustDomain().Name(), err)
		}
		return sub, n, nil
	}
	id, err := b.verifySVID(chain) // check 1
	if err != nil {
		return deny(ReasonCallerSVIDInvalid, "the caller's SVID does not verify: %v", err)
	}
	refs["caller"] = id.String()
	serial := fmt.Sprintf("%x", chain[0].SerialNumber)
	rec, err := b.store.SVIDBySerial(ctx, serial) // check 2
	switch {
	case errors.Is(err, store.ErrNotFound):
		return deny(ReasonCallerSVIDUnknown, "the caller's SVID (serial %s) is not one this broker issued", serial)
	case err != nil:
		return writSubject{}, standingNode{}, b.refuse(ctx, op, gw.String(), err)
	case rec.SPIFFEID != id.String():
		return deny(ReasonCallerSVIDUnknown, "the SVID with serial %s was issued to %s, not %s", serial, rec.SPIFFEID, id)
	}
	refs["node"] = rec.NodeID
	node, res, err := b.nodeStanding(ctx, op, id.String(), rec.NodeID) // check 3
	if err != nil {
		return writSubject{}, standingNode{}, err
	}
	nodeID, err := spiffeid.FromString(node.SPIFFEID)
	if err != nil {
		return writSubject{}, standingNode{}, b.refuse(ctx, op, gw.String(), err)
	}
	n := standingNode{leaf: chain[0], id: nodeID, node: node, res: res,
		claims: sync.OnceValue(func() map[string]string { return flatClaims(res) })}
	return writSubject{id: id, leaf: chain[0]}, n, nil
}

// entryAllows reports whether the registration entries the caller's SVID
// may have come from let it call tool: the entries for its SPIFFE ID whose
// parent matches its node and that list actions must list mcp:<tool> or
// mcp:*. A caller no such entry constrains (a node SVID, an entry without
// actions) is left to the rules.
func (b *Broker) entryAllows(ctx context.Context, sub writSubject, n standingNode, tool string) (bool, error) {
	if n.foreign {
		return true, nil // entries are of this domain's nodes; the rules decide
	}
	all, err := b.store.Entries(ctx)
	if err != nil {
		return false, err
	}
	constrained := false
	for _, e := range all {
		if e.SPIFFEID != sub.id.String() || !parentMatches(e.Parent, n) || len(e.Actions) == 0 {
			continue
		}
		constrained = true
		if slices.Contains(e.Actions, "mcp:*") || slices.Contains(e.Actions, "mcp:"+tool) {
			return true, nil
		}
	}
	return !constrained, nil
}

// requestForCaller issues a writ to a gateway for its caller
// (req.caller): the gateway received exactly this call and asks for a
// single-use writ bound to it, which it then verifies and spends as any
// presented writ. Checks, in order, each refusal audited as writ-deny:
//
//  1. the mTLS caller presents an X.509-SVID of the trust domain
//     (caller_unauthenticated) and is a gateway the configuration lists
//     (gateway_not_allowed); it is not a node, so its own standing is not
//     asked;
//  2. exactly one action, of kind mcp or http, is set and well formed,
//     and no workload subject (action_invalid); the gateway is listed for
//     that kind (gateway_not_allowed); no parent is named
//     (parent_invalid: the gateway knows no lineage of its caller) and the
//     audience, if named, is the gateway (audience_denied);
//  3. the caller (callerSubject): caller_svid_invalid, caller_svid_unknown,
//     and the standing of the node it was issued to;
//  4. for kind mcp, the caller's entries allow the tool (entryAllows):
//     entry_action_denied;
//  5. a rule for the caller's SPIFFE ID allows the action: action_denied;
//  6. a rule allowing it lists the gateway as an audience: audience_denied.
//
// The writ: sub the caller's SPIFFE ID, cnf its leaf's thumbprint, att the
// node's result, aud the gateway, single use. Audited writ-issue with refs
// gateway and node.
func (b *Broker) requestForCaller(ctx context.Context, req *brokerv1.WritRequest) (*brokerv1.WritResponse, error) {
	_, gw, err := b.caller(ctx) // check 1
	if err != nil {
		return nil, b.deny(ctx, "writ", "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	refs := map[string]string{"gateway": gw.String()}
	kinds := b.gatewayKinds(gw)
	if kinds == nil {
		return nil, b.denyRefs(ctx, "writ", gw.String(), ReasonGatewayNotAllowed, codes.PermissionDenied,
			"only a gateway the broker's configuration lists may ask for writs on behalf of its callers", refs)
	}
	act, err := requestAction(req) // check 2
	var digest string
	if err == nil && act.Kind != artifact.KindMCP && act.Kind != artifact.KindHTTP {
		err = fmt.Errorf("a gateway asks for writs of kind mcp or http, not %s", act.Kind)
	}
	if err == nil && req.GetWorkload() != nil {
		err = errors.New("caller and workload exclude each other")
	}
	if err == nil {
		digest, err = act.Digest()
	}
	if err != nil {
		return nil, b.denyRefs(ctx, "writ", gw.String(), ReasonActionInvalid, codes.InvalidArgument, err.Error(), refs)
	}
	switch {
	case !slices.Contains(kinds, act.Kind):
		return nil, b.denyRefs(ctx, "writ", gw.String(), ReasonGatewayNotAllowed, codes.PermissionDenied,
			fmt.Sprintf("gateway %s is not listed for kind %s", gw, act.Kind), refs)
	case req.GetParent() != "":
		return nil, b.denyRefs(ctx, "writ", gw.String(), ReasonParentInvalid, codes.InvalidArgument,
			"a gateway cannot name a parent for its caller's writ", refs)
	case req.GetAudience() != "" && req.GetAudience() != gw.String():
		return nil, b.denyRefs(ctx, "writ", gw.String(), ReasonAudienceDenied, codes.PermissionDenied,
			"a gateway's writ for its caller is for the gateway itself", refs)
	}
	sub, n, err := b.callerSubject(ctx, "writ", gw, req.GetCaller()) // check 3
	if err != nil {
		return nil, err
	}
	standingRef(refs, n)
	if act.Kind == artifact.KindMCP { // check 4
		ok, err := b.entryAllows(ctx, sub, n, act.MCP.Tool)
		if err != nil {
			return nil, b.refuse(ctx, "writ", gw.String(), err)
		}
		if !ok {
			return nil, b.denyRefs(ctx, "writ", sub.id.String(), ReasonEntryActionDenied, codes.PermissionDenied,
				fmt.Sprintf("no entry of %s lists mcp:%s or mcp:*", sub.id, act.MCP.Tool), refs)
		}
	}
	rl, r := b.rules().actions.checkWithin(sub.id, act, false, nil) // check 5
	if r != nil {
		return nil, b.denyRefs(ctx, "writ", sub.id.String(), r.reason, codes.PermissionDenied, r.detail, refs)
	}
	nodeID := n.id
	if n.foreign {
		nodeID = spiffeid.ID{} // no own node an audience may default to
	}
	if !b.rules().aud.allows(sub.id, nodeID, act, gw.String()) { // check 6
		return nil, b.denyRefs(ctx, "writ", sub.id.String(), ReasonAudienceDenied, codes.PermissionDenied,
			fmt.Sprintf("no rule allowing this action lets its writ name audience %q", gw), refs)
	}
	if _, appr := b.rules().approvalNeeded(sub.id, nodeID, act, gw.String()); n.foreign && appr != nil {
		return nil, b.denyRefs(ctx, "writ", sub.id.String(), ReasonCallerForeign, codes.PermissionDenied,
			"the rules allowing this action require a person's approval, which binds a node: not for a foreign caller", refs)
	}
	jti := uuid.NewString()
	approval, err := b.checkApproval(ctx, req, sub, n.id, n.res, act, digest, gw.String(), true, jti) // check 7
	if errors.Is(err, errApprovalDecided) {
		return b.recheckApproved(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	return b.issue(ctx, issuance{sub: sub, node: n.id, res: n.res, act: act, digest: digest, aud: gw.String(),
		once: true, rule: rl, refs: refs, jti: jti, approval: approval}, time.Now())
}

// PermittedTools returns the tools, among those named, that some mcp rule
// could let the caller call on the server: the tool's entry check passes
// (entryAllows) and a rule's when condition, evaluated with the server and
// tool known and the arguments unknown, is not false (actionCondition.
// mayHold). It is advisory (a gateway filters tools/list with it); every
// call is still checked. Only a gateway listed for kind mcp may call it;
// the caller is checked as for a writ (callerSubject). Audited tools-list.
func (b *Broker) PermittedTools(ctx context.Context, req *brokerv1.PermittedToolsRequest) (*brokerv1.PermittedToolsResponse, error) {
	if chain, _, ok := b.foreignPeer(ctx); ok {
		return b.permittedToolsForeign(ctx, req, chain) // for itself (foreign.go)
	}
	_, gw, err := b.caller(ctx)
	if err != nil {
		return nil, b.deny(ctx, opTools, "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	refs := map[string]string{"gateway": gw.String()}
	if !slices.Contains(b.gatewayKinds(gw), artifact.KindMCP) {
		return nil, b.denyRefs(ctx, opTools, gw.String(), ReasonGatewayNotAllowed, codes.PermissionDenied,
			"only a gateway the broker's configuration lists for kind mcp may list tools", refs)
	}
	if err := checkToolsRequest(req); err != nil {
		return nil, b.denyRefs(ctx, opTools, gw.String(), ReasonActionInvalid, codes.InvalidArgument, err.Error(), refs)
	}
	sub, n, err := b.callerSubject(ctx, opTools, gw, req.GetCaller())
	if err != nil {
		return nil, err
	}
	resp := &brokerv1.PermittedToolsResponse{}
	for _, tool := range req.GetTools() {
		ok, err := b.entryAllows(ctx, sub, n, tool)
		if err != nil {
			return nil, b.refuse(ctx, opTools, gw.String(), err)
		}
		if ok && b.rules().actions.mayAllowTool(sub.id, req.GetServer(), tool) {
			resp.Tools = append(resp.Tools, tool)
		}
	}
	refs["caller"], refs["server"] = sub.id.String(), req.GetServer()
	standingRef(refs, n)
	refs["permitted"] = fmt.Sprintf("%d/%d", len(resp.Tools), len(req.GetTools()))
	if err := b.record(ctx, "tools-list", sub.id.String(), "allow", "", refs); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the listing could not be recorded")
	}
	return resp, nil
}

// checkToolsRequest bounds a PermittedTools request.
func checkToolsRequest(req *brokerv1.PermittedToolsRequest) error {
	if len(req.GetTools()) > maxListTools || req.GetServer() == "" || len(req.GetServer()) > maxServerName {
		return fmt.Errorf("name the server (at most %d bytes) and at most %d tools", maxServerName, maxListTools)
	}
	for _, t := range req.GetTools() {
		if t == "" || len(t) > maxToolName {
			return fmt.Errorf("a tool name has 1 to %d bytes", maxToolName)
		}
	}
	return nil
}

// standingRef names in an audit entry's refs what the caller stands on:
// its node, or for a foreign caller its trust domain (never as a node:
// reports count decisions by node).
func standingRef(refs map[string]string, n standingNode) {
	if n.foreign {
		refs["trust_domain"] = n.id.TrustDomain().Name()
		return
	}
	refs["node"] = n.id.String()
}
