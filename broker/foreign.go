package broker

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
)

// Foreign callers: workloads of federated trust domains (docs/adr/0033).
// They hold no node here, so everything node-scoped is closed to them;
// what is open: RequestWrit for a writ of kind http or mcp whose subject
// is the caller itself (requestForeign), PermittedTools for itself
// (permittedToolsForeign), Subscribe when its domain's federation entry
// says subscribe: true. A gateway of this trust domain may also relay a
// foreign caller's chain (callerSubject, foreignSubject).

// opForeign names refusals of RPCs closed to foreign callers.
const opForeign = "foreign"

// verifyPeer verifies an mTLS client's chain in the handshake: a member
// of this trust domain against the broker's CA, as before federation;
// any other against its federated domain's fresh bundle (refusals logged
// and counted by reason).
func (b *Broker) verifyPeer(raw [][]byte) error {
	if chain, id, ok := parseForeign(raw, b.td); ok {
		_, err := b.fed.verify(chain)
		if err != nil {
			return fmt.Errorf("broker: %s: %w", id, err)
		}
		return nil
	}
	return tlsconfig.VerifyPeerCertificate(b.trustBundle(), tlsconfig.AuthorizeMemberOf(b.td))(raw, nil)
}

// parseForeign parses a chain whose leaf names a SPIFFE ID of another
// trust domain than own; ok is false for anything else (own members,
// malformed chains: those take the own-domain path and its errors).
func parseForeign(raw [][]byte, own spiffeid.TrustDomain) ([]*x509.Certificate, spiffeid.ID, bool) {
	if len(raw) == 0 || len(raw) > maxCallerChain {
		return nil, spiffeid.ID{}, false
	}
	chain := make([]*x509.Certificate, 0, len(raw))
	for _, d := range raw {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			return nil, spiffeid.ID{}, false
		}
		chain = append(chain, c)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil || id.TrustDomain() == own {
		return nil, spiffeid.ID{}, false
	}
	return chain, id, true
}

// peerChain is the mTLS caller's certificate chain, leaf first (nil when
// it presented none).
func peerChain(ctx context.Context) []*x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		return nil
	}
	return info.State.PeerCertificates
}

// foreignPeer returns the mTLS caller's chain and SPIFFE ID when it is a
// foreign caller (its leaf names another trust domain), unverified: the
// handshake verified it, and every handler that serves it verifies it
// again (foreignCaller).
func (b *Broker) foreignPeer(ctx context.Context) ([]*x509.Certificate, spiffeid.ID, bool) {
	chain := peerChain(ctx)
	if len(chain) == 0 {
		return nil, spiffeid.ID{}, false
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil || id.TrustDomain() == b.td {
		return nil, spiffeid.ID{}, false
	}
	return chain, id, true
}

// foreignAllowed reports whether a foreign caller of td may call method.
func (b *Broker) foreignAllowed(td spiffeid.TrustDomain, method string) bool {
	switch method {
	case brokerv1.Broker_RequestWrit_FullMethodName, brokerv1.Broker_PermittedTools_FullMethodName:
		return true
	case brokerv1.Broker_Subscribe_FullMethodName:
		d, ok := b.fed.domains[td]
		return ok && d.cfg.Subscribe
	}
	return false
}

// foreignGuard refuses a foreign caller any RPC it may not call
// (caller_foreign), before its handler runs: the admin API, node and
// workload RPCs, ConsumeWrit, and Subscribe unless its domain allows it.
func (b *Broker) foreignGuard(ctx context.Context, method string) error {
	_, id, ok := b.foreignPeer(ctx)
	if !ok || b.foreignAllowed(id.TrustDomain(), method) {
		return nil
	}
	return b.deny(ctx, opForeign, id.String(), ReasonCallerForeign, codes.PermissionDenied,
		fmt.Sprintf("%s is a workload of trust domain %s: it may call RequestWrit (kinds http and mcp) and PermittedTools, not %s",
			id, id.TrustDomain().Name(), method))
}

func (b *Broker) foreignUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := b.foreignGuard(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (b *Broker) foreignStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := b.foreignGuard(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// foreignCaller verifies a foreign mTLS caller's chain again, against its
// domain's fresh bundle, and returns its standing: the subject (its
// SPIFFE ID and leaf) and a standingNode that stands for its trust domain
// (foreignStanding). Refused: caller_unauthenticated, the detail naming
// the foreign reason (trust_domain_unknown, bundle_stale, ...).
func (b *Broker) foreignCaller(ctx context.Context, op string, chain []*x509.Certificate) (writSubject, standingNode, error) {
	sub, n, err := b.foreignStanding(chain)
	if err != nil {
		return writSubject{}, standingNode{}, b.deny(ctx, op, "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	return sub, n, nil
}

// foreignStanding verifies a foreign chain and returns its subject and
// the standing of its trust domain: id the trust domain's ID (spiffe://td,
// no path: never a node's), and a result standing for the bundle that
// verified the chain: id and policy "federation:<td>@<spiffe_sequence>",
// pcrs the sha256 of that bundle's document (no PCR state: no TPM ever
// reads it, and a foreign writ is never of kind exec), sel the loaded
// policy's selection (the writ format requires one).
func (b *Broker) foreignStanding(chain []*x509.Certificate) (writSubject, standingNode, error) {
	id, err := b.fed.verify(chain)
	if err != nil {
		return writSubject{}, standingNode{}, err
	}
	bundle, digest, err := b.fed.fresh(id.TrustDomain())
	if err != nil { // went stale between the two calls
		return writSubject{}, standingNode{}, err
	}
	seq, _ := bundle.SequenceNumber()
	ref := fmt.Sprintf("federation:%s@%d", id.TrustDomain().Name(), seq)
	res := store.Result{ID: ref, Passed: true, PCRDigest: "sha256:" + hex.EncodeToString(digest[:]), Policy: ref,
		Sel: b.rules().appr.Quote().Selection()}
	n := standingNode{leaf: chain[0], id: id.TrustDomain().ID(), res: res, foreign: true,
		claims: func() map[string]string { return nil }}
	return writSubject{id: id, leaf: chain[0]}, n, nil
}

// requestForeign issues a writ to a foreign caller for itself. Checks, in
// order, each refusal audited as writ-deny:
//
//  1. the caller's chain verifies against its federated domain's fresh
//     bundle (foreignCaller): caller_unauthenticated;
//  2. it does not act as a gateway (caller), name a workload subject or a
//     parent — gateways, entries and lineage are of this trust domain's
//     nodes: caller_foreign;
//  3. exactly one action, well formed (action_invalid), of kind http or
//     mcp: an exec writ binds a node's PCR state and a foreign workload
//     has no node here: caller_foreign;
//  4. an audience is named (there is no own node to default to):
//     audience_denied;
//  5. a rule for the caller's SPIFFE ID allows the action: action_denied;
//  6. a rule allowing it lists the audience: audience_denied;
//  7. no rule allowing it at that audience requires a person's approval
//     (approvals bind a node): caller_foreign.
//
// Not checked, as there is nothing to check: node standing, attestation
// and entries. The writ: sub the caller, cnf its leaf, aud as asked, att
// the trust domain (foreignStanding). Audited writ-issue with refs
// trust_domain.
func (b *Broker) requestForeign(ctx context.Context, req *brokerv1.WritRequest, chain []*x509.Certificate) (*brokerv1.WritResponse, error) {
	sub, n, err := b.foreignCaller(ctx, "writ", chain) // check 1
	if err != nil {
		return nil, err
	}
	who := sub.id.String()
	refs := map[string]string{"trust_domain": sub.id.TrustDomain().Name()}
	deny := func(reason string, code codes.Code, msg string) error {
		return b.denyRefs(ctx, "writ", who, reason, code, msg, refs)
	}
	switch { // check 2
	case req.GetCaller() != nil:
		return nil, deny(ReasonCallerForeign, codes.PermissionDenied, "a workload of a federated trust domain cannot act as a gateway here")
	case req.GetWorkload() != nil:
		return nil, deny(ReasonCallerForeign, codes.PermissionDenied, "a workload of a federated trust domain has no registration entry here")
	case req.GetParent() != "":
		return nil, deny(ReasonParentInvalid, codes.InvalidArgument, "a workload of a federated trust domain has no lineage here")
	}
	act, err := requestAction(req) // check 3
	var digest string
	if err == nil {
		digest, err = act.Digest()
	}
	if err != nil {
		return nil, deny(ReasonActionInvalid, codes.InvalidArgument, err.Error())
	}
	if act.Kind != artifact.KindHTTP && act.Kind != artifact.KindMCP {
		return nil, deny(ReasonCallerForeign, codes.PermissionDenied,
			fmt.Sprintf("a workload of a federated trust domain has no node here: no writ of kind %s, only http and mcp", act.Kind))
	}
	aud := req.GetAudience()
	if aud == "" { // check 4
		return nil, deny(ReasonAudienceDenied, codes.PermissionDenied, "a foreign caller's writ names its audience (a gateway a rule lists)")
	}
	rl, r := b.rules().actions.checkWithin(sub.id, act, false, nil) // check 5
	if r != nil {
		return nil, deny(r.reason, codes.PermissionDenied, r.detail)
	}
	if !b.rules().aud.allows(sub.id, spiffeid.ID{}, act, aud) { // check 6
		return nil, deny(ReasonAudienceDenied, codes.PermissionDenied, fmt.Sprintf("no rule allowing this action lets its writ name audience %q", aud))
	}
	if _, appr := b.rules().approvalNeeded(sub.id, spiffeid.ID{}, act, aud); appr != nil { // check 7
		return nil, deny(ReasonCallerForeign, codes.PermissionDenied, "the rules allowing this action require a person's approval, which binds a node: not for a foreign caller")
	}
	return b.issue(ctx, issuance{sub: sub, node: n.id, res: n.res, act: act, digest: digest, aud: aud,
		once: req.GetOnce(), rule: rl, refs: refs, jti: uuid.NewString()}, time.Now())
}

// permittedToolsForeign is PermittedTools for a foreign caller asking for
// itself: the caller, if named, is the mTLS caller's own chain
// (caller_foreign otherwise); no entries constrain it; a tool is listed
// when some mcp rule for it could allow it (mayAllowTool).
func (b *Broker) permittedToolsForeign(ctx context.Context, req *brokerv1.PermittedToolsRequest, chain []*x509.Certificate) (*brokerv1.PermittedToolsResponse, error) {
	sub, _, err := b.foreignCaller(ctx, opTools, chain)
	if err != nil {
		return nil, err
	}
	refs := map[string]string{"trust_domain": sub.id.TrustDomain().Name(), "caller": sub.id.String(), "server": req.GetServer()}
	if c := req.GetCaller(); c != nil && (len(c.GetSvid()) == 0 || string(c.GetSvid()[0]) != string(chain[0].Raw)) {
		return nil, b.denyRefs(ctx, opTools, sub.id.String(), ReasonCallerForeign, codes.PermissionDenied,
			"a workload of a federated trust domain lists the tools it may call itself, not another caller's", refs)
	}
	if err := checkToolsRequest(req); err != nil {
		return nil, b.denyRefs(ctx, opTools, sub.id.String(), ReasonActionInvalid, codes.InvalidArgument, err.Error(), refs)
	}
	resp := &brokerv1.PermittedToolsResponse{}
	for _, tool := range req.GetTools() {
		if b.rules().actions.mayAllowTool(sub.id, req.GetServer(), tool) {
			resp.Tools = append(resp.Tools, tool)
		}
	}
	refs["permitted"] = fmt.Sprintf("%d/%d", len(resp.Tools), len(req.GetTools()))
	if err := b.record(ctx, "tools-list", sub.id.String(), "allow", "", refs); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the listing could not be recorded")
	}
	return resp, nil
}

// subscriber checks the caller of Subscribe: a member of this trust
// domain, or a foreign caller whose domain allows it (foreignGuard
// checked that) and whose chain verifies again.
func (b *Broker) subscriber(ctx context.Context) error {
	if chain, _, ok := b.foreignPeer(ctx); ok {
		_, _, err := b.foreignCaller(ctx, "subscribe", chain)
		return err
	}
	if _, _, err := b.caller(ctx); err != nil {
		return b.deny(ctx, "subscribe", "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	return nil
}
