package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Signed lineage across hops (docs/adr/0031): a writ's parent narrows
// what its descendants may be issued for, the lineage is bounded in
// depth, and revoking a writ revokes its descendants.

// Reasons of lineage.
const (
	// ReasonParentExpired: the parent expired, and was not named by the
	// node agent from a governed process that still lives, or expired
	// longer than writ.lineage_retention ago.
	ReasonParentExpired = "parent_expired"
	// ReasonParentRevoked: the parent (or one of its ancestors) was
	// revoked.
	ReasonParentRevoked = "parent_revoked"
	// ReasonParentScopeDenied: a rule allows the action, but none that the
	// parent's scope (its rules' children) lets a descendant be issued
	// under.
	ReasonParentScopeDenied = "parent_scope_denied"
	// ReasonLineageTooDeep: the writ would be deeper than writ.max_depth.
	ReasonLineageTooDeep = "lineage_too_deep"
	// ReasonWritRevoked: the writ (or one of its ancestors) was revoked.
	ReasonWritRevoked = "writ_revoked"
	// ReasonWritUnknown: no writ with this jti is recorded (never issued,
	// or pruned after the lineage retention).
	ReasonWritUnknown = "writ_unknown"
)

// lineageOf is what a new writ inherits from its parent.
type lineageOf struct {
	depth   int
	scope   []string // the parent's scope: nil for any rule
	rule    *rule    // the rule within the parent's scope; nil: the first allowing
	vouched bool     // an expired parent accepted on the agent's word
}

// checkParent checks a parent named for a writ that rules already allow
// subject to perform (act), in order, each refusal audited as writ-deny:
//
//  1. it is a writ this broker issued (and still retains): parent_invalid;
//  2. on the same node (to the node or to one of its workloads; a governed
//     shell may start a child under another entry): parent_invalid;
//  3. not revoked: parent_revoked;
//  4. not expired, or expired less than writ.lineage_retention ago and
//     named by the node agent from the caller's ancestry (the gRPC
//     metadata brokerv1.LineageMetadata): parent_expired;
//  5. the new writ's depth (the parent's + 1) is at most writ.max_depth:
//     lineage_too_deep;
//  6. with a restricted parent scope, a rule within it allows the action:
//     parent_scope_denied.
func (b *Broker) checkParent(ctx context.Context, node, subject spiffeid.ID, act *artifact.Action, governed bool, parent string, now time.Time) (lineageOf, error) {
	if parent == "" {
		return lineageOf{}, nil
	}
	deny := func(reason, msg string) (lineageOf, error) {
		return lineageOf{}, b.deny(ctx, "writ", node.String(), reason, codes.PermissionDenied, msg)
	}
	w, err := b.store.IssuedWrit(ctx, parent)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return deny(ReasonParentInvalid, "the parent is not a writ this broker issued (or its record was pruned)")
	case err != nil:
		return lineageOf{}, b.refuse(ctx, "writ", node.String(), err)
	case w.Node != node.String():
		return deny(ReasonParentInvalid, "the parent was issued on another node")
	case !w.RevokedAt.IsZero():
		return deny(ReasonParentRevoked, fmt.Sprintf("the parent %s was revoked at %s", parent, w.RevokedAt.Format(time.RFC3339)))
	}
	lin := lineageOf{depth: w.Depth + 1, scope: w.Scope}
	if !now.Before(w.ExpiresAt) {
		if !fromAncestry(ctx) {
			return deny(ReasonParentExpired, "the parent expired at "+w.ExpiresAt.Format(time.RFC3339))
		}
		if !now.Before(w.ExpiresAt.Add(b.cfg.Writ.LineageRetention)) {
			return deny(ReasonParentExpired, fmt.Sprintf("the parent expired at %s, longer than the lineage retention (%s) ago",
				w.ExpiresAt.Format(time.RFC3339), b.cfg.Writ.LineageRetention))
		}
		lin.vouched = true
	}
	if lin.depth > b.cfg.Writ.MaxDepth {
		return deny(ReasonLineageTooDeep, fmt.Sprintf("the writ would be %d deep; writ.max_depth is %d", lin.depth, b.cfg.Writ.MaxDepth))
	}
	if w.Scope != nil {
		rl, _ := b.rules().actions.checkWithin(subject, act, governed, func(r *rule) bool { return r.name != "" && slices.Contains(w.Scope, r.name) })
		if rl == nil {
			return deny(ReasonParentScopeDenied, fmt.Sprintf("the parent %s (rule %q) lets its descendants be issued only under %s, and none of those allows this action",
				parent, w.Rule, scopeString(w.Scope)))
		}
		lin.rule = rl
	}
	return lin, nil
}

func scopeString(scope []string) string {
	if len(scope) == 0 {
		return "no rule"
	}
	return "[" + strings.Join(scope, ", ") + "]"
}

// fromAncestry reports whether the caller says the parent came from the
// process tree (brokerv1.LineageMetadata).
func fromAncestry(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	v := md.Get(brokerv1.LineageMetadata)
	return len(v) == 1 && v[0] == brokerv1.LineageAncestry
}

// checkRevoked refuses to consume a writ that was revoked, itself or with
// an ancestor (writ_revoked). A writ the store no longer records (its
// record lost in a crash, or pruned) is not refused here: the caller
// checks its expiry.
func (b *Broker) checkRevoked(ctx context.Context, caller, jti string) error {
	w, err := b.store.IssuedWrit(ctx, jti)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil
	case err != nil:
		return b.refuse(ctx, "consume", caller, err)
	case !w.RevokedAt.IsZero():
		return b.deny(ctx, "consume", caller, ReasonWritRevoked, codes.FailedPrecondition, "writ "+jti+" was revoked")
	}
	return nil
}

// RevokeWrit revokes a writ and every descendant the broker recorded
// (admin only). In order: the caller is the admin (not_admin); the jti is
// recorded (writ_unknown). The revocation is stored (durably, one
// transaction), audited (writ-revoke, refs jti, descendants, reason) and
// published to node event subscribers, grouped by node, under the same
// lock as their snapshots. Revoking a revoked writ revokes only its
// descendants not yet revoked.
func (a *admin) RevokeWrit(ctx context.Context, req *brokerv1.RevokeWritRequest) (*brokerv1.RevokeWritResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	b := a.b
	reason := strings.TrimSpace(req.GetReason())
	if reason == "" {
		reason = "revoked by an operator"
	}
	b.stateMu.Lock()
	defer b.stateMu.Unlock()
	revoked, err := b.store.RevokeWrit(ctx, req.GetJti(), reason, time.Now())
	if errors.Is(err, store.ErrNotFound) {
		return nil, b.deny(ctx, "admin", req.GetJti(), ReasonWritUnknown, codes.NotFound, "no writ "+req.GetJti()+" is recorded")
	}
	if err != nil {
		return nil, b.refuse(ctx, "admin", req.GetJti(), err)
	}
	descendants := len(revoked)
	if len(revoked) > 0 && revoked[0].JTI == req.GetJti() {
		descendants--
	}
	if err := b.record(ctx, "writ-revoke", identity.AdminID(b.td).String(), "allow", "", map[string]string{
		"jti": req.GetJti(), "descendants": strconv.Itoa(descendants), "revoke_reason": reason}); err != nil {
		// The revocation stands (refusing more, not less); it is not
		// published until it is recorded.
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the revocation is stored but could not be recorded")
	}
	b.log.Info("writ revoked", "jti", req.GetJti(), "descendants", descendants, logReason, reason)
	if err := b.publishRevoked(ctx, revoked); err != nil {
		b.log.Error("revocation not published: subscribers learn it at their next snapshot", "jti", req.GetJti(), "err", err)
	}
	resp := &brokerv1.RevokeWritResponse{}
	for _, w := range revoked {
		resp.RevokedJtis = append(resp.RevokedJtis, w.JTI)
	}
	return resp, nil
}

// publishRevoked publishes one event per node of the revoked writs, each
// repeating the node's current standing (so that a subscriber that does
// not read revoked_jtis applies nothing new). Called with stateMu held.
func (b *Broker) publishRevoked(ctx context.Context, revoked []store.IssuedWrit) error {
	byNode := groupByNode(revoked)
	if len(byNode) == 0 {
		return nil
	}
	nodes, err := b.store.Nodes(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	for _, n := range nodes {
		ws, ok := byNode[n.SPIFFEID]
		if !ok {
			continue
		}
		ev := &brokerv1.NodeEvent{NodeId: n.ID, SpiffeId: n.SPIFFEID, State: string(n.State), Reason: n.StateReason, TimeUnixNano: now.UnixNano()}
		addRevoked(ev, ws)
		b.announce(ctx, ev)
	}
	return nil
}

func groupByNode(ws []store.IssuedWrit) map[string][]store.IssuedWrit {
	out := map[string][]store.IssuedWrit{}
	for _, w := range ws {
		out[w.Node] = append(out[w.Node], w)
	}
	return out
}

func addRevoked(ev *brokerv1.NodeEvent, ws []store.IssuedWrit) {
	for _, w := range ws {
		ev.RevokedJtis = append(ev.RevokedJtis, w.JTI)
		ev.RevokedExpiryUnix = append(ev.RevokedExpiryUnix, w.ExpiresAt.Unix())
	}
}
