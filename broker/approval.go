package broker

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Reasons of approvals (ADR 30).
const (
	// ReasonApprovalPending: the rule allowing the action requires a
	// person's approval, and none was granted (in the time the request
	// could wait). The refusal's metadata names the approval (approval_id).
	ReasonApprovalPending = "approval_pending"
	// ReasonApprovalDenied: an approver denied this action.
	ReasonApprovalDenied = "approval_denied"
	// ReasonApprovalExpired: the approval was not decided, or not used,
	// before it expired; the next request opens a new one.
	ReasonApprovalExpired = "approval_expired"
	// ReasonApprovalNotPending: only a pending approval can be decided.
	ReasonApprovalNotPending = "approval_not_pending"
	// ReasonApprovalUnknown: no approval has this id.
	ReasonApprovalUnknown = "approval_unknown"
	// ReasonNotApprover: the caller is not among the approval's approvers.
	ReasonNotApprover = "not_approver"
	// ReasonApproverIsRequester: the caller is the approval's subject or
	// node: nobody approves their own request.
	ReasonApproverIsRequester = "approver_is_requester"
	// ReasonApprovalDecisionInvalid: neither approve nor deny, or a reason
	// longer than 1024 bytes or not UTF-8.
	ReasonApprovalDecisionInvalid = "approval_decision_invalid"
	// ReasonApprovalStateInvalid: a list filter that is no state.
	ReasonApprovalStateInvalid = "approval_state_invalid"
)

// MetaApprovalID is the ErrorInfo metadata key of the approval a refusal
// is about (brokerv1.MetadataOf).
const MetaApprovalID = "approval_id"

// Bounds and defaults of approvals.
const (
	DefaultApprovalTTL     = 10 * time.Minute
	MaxApprovalTTL         = 24 * time.Hour
	DefaultMaxApprovalWait = 2 * time.Minute
	MaxApprovalWait        = 10 * time.Minute
	// approvalRetention is how long approvals are kept after they expire.
	approvalRetention = 24 * time.Hour
	// approvalPoll is how often a waiting request reads its approval from
	// the store (a decision made by another replica); a decision made by
	// this one wakes it at once.
	approvalPoll = 250 * time.Millisecond
	// approvalWaitMargin is left of a call's deadline to answer it.
	approvalWaitMargin = time.Second
	maxApprovalReason  = 1024
	// maxPendingApprovals bounds a node's pending approvals.
	maxPendingApprovals = 64
	maxListedApprovals  = 1000
)

// approvalRule is a rule's approval block, compiled.
type approvalRule struct {
	approvers []string // SPIFFE IDs, or "spiffe://td/path/*" prefixes
	ttl       time.Duration
}

// compileApproval checks a rule's approval block: approvers are SPIFFE IDs
// of trust domain td, or prefixes ending in "/*" with a path, none a node's
// (under /node/) or the broker's; default the admin. TTL default 10m,
// within [1s, 24h].
func compileApproval(a *ApprovalConfig, td string) (*approvalRule, error) {
	trust, err := spiffeid.TrustDomainFromString(td)
	if err != nil {
		return nil, fmt.Errorf("approval: trust_domain: %w", err)
	}
	r := &approvalRule{ttl: a.TTL}
	if r.ttl == 0 {
		r.ttl = DefaultApprovalTTL
	}
	if r.ttl < time.Second || r.ttl > MaxApprovalTTL {
		return nil, fmt.Errorf("approval.ttl must be between 1s and %s", MaxApprovalTTL)
	}
	if len(a.Approvers) == 0 {
		r.approvers = []string{identity.AdminID(trust).String()}
		return r, nil
	}
	for _, s := range a.Approvers {
		raw, prefix := strings.CutSuffix(s, "/*")
		id, err := spiffeid.FromString(raw)
		switch {
		case err != nil:
			return nil, fmt.Errorf("approval.approvers: %q: %w", s, err)
		case !id.MemberOf(trust):
			return nil, fmt.Errorf("approval.approvers: %q is not in trust domain %s", s, td)
		case id.Path() == "" || id.Path() == "/node" || strings.HasPrefix(id.Path(), "/node/"):
			return nil, fmt.Errorf("approval.approvers: %q: approvers are people, never a node (or every identity of the trust domain)", s)
		case id == identity.BrokerID(trust):
			return nil, fmt.Errorf("approval.approvers: %q is the broker", s)
		}
		if prefix {
			r.approvers = append(r.approvers, id.String()+"/*")
		} else {
			r.approvers = append(r.approvers, id.String())
		}
	}
	return r, nil
}

// isApprover reports whether id is among approvers (exact, or under a
// "/*" prefix). A node is never one.
func isApprover(approvers []string, id spiffeid.ID) bool {
	if strings.HasPrefix(id.Path(), "/node/") {
		return false
	}
	for _, a := range approvers {
		if pre, ok := strings.CutSuffix(a, "*"); ok && strings.HasSuffix(pre, "/") {
			if strings.HasPrefix(id.String(), pre) {
				return true
			}
		} else if id.String() == a {
			return true
		}
	}
	return false
}

// rulesVersion is "sha256:<hex>" of the canonical (JSON) form of the writ
// rules as configured: it changes when any rule changes, so an approval
// granted under other rules no longer matches.
func (c *Config) rulesVersion() (string, error) {
	raw, err := json.Marshal(c.Writ.Rules)
	if err != nil {
		return "", fmt.Errorf("broker: rules version: %w", err)
	}
	sum := sha256.Sum256(raw)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// approvalNeeded returns the rule (its index) whose approval a writ for
// subject on node to perform act at aud needs, or -1 when none does: when
// any rule that allows the action, and lets its writ name aud, needs no
// approval, the action needs none (rules only ever allow). Of several
// rules requiring approval, the first in writ.rules applies.
func (rs *ruleset) approvalNeeded(subject, node spiffeid.ID, act *artifact.Action, aud string) (int, *approvalRule) {
	if !rs.anyApproval {
		return -1, nil
	}
	first := -1
	for i, r := range rs.aud {
		if aud != node.String() && !r.listed(aud) {
			continue
		}
		if !r.action.allows(subject, act) {
			continue
		}
		if r.action[0].approval == nil {
			return -1, nil
		}
		if first < 0 {
			first = i
		}
	}
	if first < 0 {
		return -1, nil
	}
	return first, rs.aud[first].action[0].approval
}

// errApprovalDecided: the approval was approved while the request waited;
// the request is to be checked again from the start, without waiting.
var errApprovalDecided = errors.New("broker: approval decided while waiting")

// approvalRequest is a writ request that needs an approval.
type approvalRequest struct {
	bind    store.ApprovalBinding
	display string
	rule    int
	appr    *approvalRule
	wait    time.Duration
	jti     string // the writ's, if issued
}

// approvalWait is how long a request may wait for a decision: what it
// asked, at most writ.max_approval_wait, and ending a margin before the
// call's deadline.
func (b *Broker) approvalWait(ctx context.Context, asked uint32) time.Duration {
	wait := min(time.Duration(asked)*time.Second, b.cfg.Writ.MaxApprovalWait)
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl)-approvalWaitMargin)
	}
	return max(wait, 0)
}

// approved finds the approval of r's binding, or opens one, waits for its
// decision up to r.wait, and spends it on r.jti. It returns the spent
// approval's id, or the refusal, audited as writ-deny with the approval's
// id in its refs and in the refusal's metadata:
//
//  1. the binding's latest unused approval, pending, approved or denied;
//     none (or a denial that expired): a new pending one (approval-request
//     audited);
//  2. expired (not decided, or not used, in time): approval_expired, and
//     it is marked so: the next request opens a new one;
//  3. denied: approval_denied;
//  4. approved: spent on the writ, atomically, once (a concurrent request
//     that spent it first: back to 1, a new approval); approved while
//     this request waited: errApprovalDecided, so that RequestWrit checks
//     everything again (the node's standing, its result, the rules) as it
//     stands now before the approval is spent;
//  5. pending: wait for a decision (woken by one made here, or reading
//     the store every approvalPoll for one made by another replica) until
//     r.wait has passed: approval_pending.
func (b *Broker) approved(ctx context.Context, r approvalRequest) (string, error) {
	until := time.Now().Add(r.wait)
	var a store.Approval
	have, waited := false, false
	for retries := 0; ; {
		wake := b.approvalWake.channel()
		now := time.Now()
		var err error
		if have {
			a, err = b.store.Approval(ctx, a.ID)
		} else {
			a, err = b.store.LatestApproval(ctx, r.bind)
			if errors.Is(err, store.ErrNotFound) || (err == nil && a.State == store.ApprovalDenied && !now.Before(a.ExpiresAt)) {
				a, err = b.openApproval(ctx, r, now)
			}
		}
		switch {
		case errors.Is(err, store.ErrApprovalOpen), errors.Is(err, store.ErrNotFound):
			// Opened concurrently by another request, or pruned: look again.
			have = false
			if retries++; retries > 8 {
				return "", b.refuse(ctx, "writ", r.bind.Node, err)
			}
			continue
		case brokerv1.ReasonOf(err) != "":
			return "", err // a refusal of openApproval's, already recorded
		case err != nil:
			return "", b.refuse(ctx, "writ", r.bind.Node, err)
		}
		have = true
		open := a.State == store.ApprovalPending || a.State == store.ApprovalApproved
		switch {
		case !a.UsedAt.IsZero():
			have = false // spent by a concurrent request: this one needs a new approval
			continue
		case a.State == store.ApprovalExpired || open && !now.Before(a.ExpiresAt):
			if err := b.store.ExpireApproval(ctx, a.ID, now); err != nil {
				return "", b.refuse(ctx, "writ", r.bind.Node, err)
			}
			return "", b.denyApproval(ctx, r, a.ID, ReasonApprovalExpired, codes.FailedPrecondition,
				fmt.Sprintf("approval %s expired at %s; request again for a new one", a.ID, a.ExpiresAt.Format(time.RFC3339)))
		case a.State == store.ApprovalDenied:
			return "", b.denyApproval(ctx, r, a.ID, ReasonApprovalDenied, codes.PermissionDenied,
				fmt.Sprintf("approval %s was denied by %s: %s", a.ID, a.DecidedBy, a.Reason))
		case a.State == store.ApprovalApproved && waited:
			return "", errApprovalDecided
		case a.State == store.ApprovalApproved:
			err := b.store.UseApproval(ctx, a.ID, r.jti, now)
			if err == nil {
				return a.ID, nil
			}
			if !errors.Is(err, store.ErrApprovalUnusable) {
				return "", b.refuse(ctx, "writ", r.bind.Node, err)
			}
			continue // read it again: spent concurrently, or expired just now
		case a.State != store.ApprovalPending:
			return "", b.refuse(ctx, "writ", r.bind.Node, fmt.Errorf("broker: approval %s in unknown state %q", a.ID, a.State))
		}
		left := until.Sub(now)
		if left <= 0 {
			return "", b.denyApproval(ctx, r, a.ID, ReasonApprovalPending, codes.FailedPrecondition,
				fmt.Sprintf("approval %s is pending: writ approve %s", a.ID, a.ID))
		}
		t := time.NewTimer(min(left, approvalPoll))
		select {
		case <-wake:
		case <-t.C:
		case <-b.done:
		case <-ctx.Done():
		}
		t.Stop()
		waited = true
		if ctx.Err() != nil || b.stopping() {
			return "", b.denyApproval(context.WithoutCancel(ctx), r, a.ID, ReasonApprovalPending, codes.FailedPrecondition,
				fmt.Sprintf("approval %s is pending: writ approve %s", a.ID, a.ID))
		}
	}
}

// openApproval records a new pending approval for r and audits the
// request (approval-request). A pending approval allows nothing. A node
// with maxPendingApprovals pending is refused too_many_pending: a node
// cannot bury the approvers' list (the bound is checked, then the
// approval stored: concurrent requests may pass it by a few).
func (b *Broker) openApproval(ctx context.Context, r approvalRequest, now time.Time) (store.Approval, error) {
	n, err := b.store.PendingApprovals(ctx, r.bind.Node, now)
	if err != nil {
		return store.Approval{}, err
	}
	if n >= maxPendingApprovals {
		return store.Approval{}, b.deny(ctx, "writ", r.bind.Node, ReasonTooManyPending, codes.ResourceExhausted,
			fmt.Sprintf("the node has %d approvals pending; wait for decisions or their expiry", n))
	}
	id, err := uuid.NewV7()
	if err != nil {
		return store.Approval{}, err
	}
	a := store.Approval{ID: id.String(), State: store.ApprovalPending, ApprovalBinding: r.bind, Display: r.display,
		Rule: r.rule, Approvers: r.appr.approvers, CreatedAt: now, ExpiresAt: now.Add(r.appr.ttl)}
	if err := b.store.PutApproval(ctx, a); err != nil {
		return store.Approval{}, err
	}
	refs := map[string]string{"approval": a.ID, "node": a.Node, "action": a.Digest, "display": a.Display,
		"rule": strconv.Itoa(a.Rule), "audience": a.Audience}
	if err := b.record(ctx, "approval-request", a.Subject, "allow", "", refs); err != nil {
		return store.Approval{}, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the approval request could not be recorded")
	}
	b.log.Info("approval requested", "approval", a.ID, logNode, a.Node, "subject", a.Subject, "action", a.Display,
		"approvers", strings.Join(a.Approvers, ","))
	return a, nil
}

// denyApproval records, logs and returns a writ refusal about approval
// id: its refs and the refusal's metadata name it.
func (b *Broker) denyApproval(ctx context.Context, r approvalRequest, id, reason string, code codes.Code, msg string) error {
	b.log.Warn("writ refused", logNode, r.bind.Node, logReason, reason, "approval", id)
	b.metrics.refusals.WithLabelValues("writ", reason).Inc()
	refs := map[string]string{"approval": id, "action": r.bind.Digest}
	if err := b.record(ctx, "writ-deny", r.bind.Node, "deny", reason, refs); err != nil {
		return brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the refusal could not be recorded")
	}
	return brokerv1.RefuseWith(code, reason, msg, map[string]string{MetaApprovalID: id})
}

// approvalWake wakes the requests waiting for a decision when this broker
// makes one.
type approvalWake struct {
	mu sync.Mutex
	ch chan struct{}
}

// channel is closed at the next decision.
func (w *approvalWake) channel() <-chan struct{} {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch == nil {
		w.ch = make(chan struct{})
	}
	return w.ch
}

func (w *approvalWake) broadcast() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.ch != nil {
		close(w.ch)
		w.ch = nil
	}
}

// stopping reports whether the broker is stopping.
func (b *Broker) stopping() bool {
	select {
	case <-b.done:
		return true
	default:
		return false
	}
}

// checkApproval is RequestWrit's last check: when the rule allowing the
// action requires a person's approval, an approved one matching exactly
// is spent on the writ jti (its id returned), or the request waits for a
// decision; "" when no approval is needed. errApprovalDecided: approved
// while waiting; the caller checks the request again from the start
// (recheckApproved).
func (b *Broker) checkApproval(ctx context.Context, req *brokerv1.WritRequest, sub writSubject, node spiffeid.ID,
	res store.Result, act *artifact.Action, digest, aud string, once bool, jti string) (string, error) {
	rs := b.rules() // the approval is bound to the version of the rules that require it
	i, appr := rs.approvalNeeded(sub.id, node, act, aud)
	if appr == nil {
		return "", nil
	}
	return b.approved(ctx, approvalRequest{
		bind: store.ApprovalBinding{Subject: sub.id.String(), Node: node.String(), Kind: act.Kind, Digest: digest,
			Audience: aud, Once: once, RulesVersion: rs.rulesVersion, Policy: res.Policy},
		display: act.Display(), rule: i, appr: appr, wait: b.approvalWait(ctx, req.GetApprovalWaitSeconds()), jti: jti})
}

// recheckApproved runs a request approved while it waited again from
// check 1 (standing, result, rules as they stand now), without waiting,
// so that the approval is spent only on a request that still passes.
func (b *Broker) recheckApproved(ctx context.Context, req *brokerv1.WritRequest) (*brokerv1.WritResponse, error) {
	again := proto.CloneOf(req)
	again.ApprovalWaitSeconds = 0
	return b.RequestWrit(ctx, again)
}
