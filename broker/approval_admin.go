package broker

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Approval states as the API reports them: the stored state, with
// "expired" for an open approval past its expiry and "used" for an
// approved one spent on a writ.
const (
	approvalStateExpired = "expired"
	approvalStateUsed    = "used"
)

var approvalStates = []string{string(store.ApprovalPending), string(store.ApprovalApproved), string(store.ApprovalDenied),
	approvalStateExpired, approvalStateUsed}

func approvalState(a store.Approval, now time.Time) string {
	switch {
	case !a.UsedAt.IsZero():
		return approvalStateUsed
	case (a.State == store.ApprovalPending || a.State == store.ApprovalApproved) && !now.Before(a.ExpiresAt):
		return approvalStateExpired
	}
	return string(a.State)
}

func approvalInfo(a store.Approval, now time.Time) *brokerv1.Approval {
	unix := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.Unix()
	}
	return &brokerv1.Approval{Id: a.ID, State: approvalState(a, now), Subject: a.Subject, Node: a.Node, Kind: a.Kind,
		Digest: a.Digest, Display: a.Display, Audience: a.Audience, Once: a.Once, RulesVersion: a.RulesVersion,
		Policy: a.Policy, Rule: int32(a.Rule), Approvers: a.Approvers, CreatedUnix: unix(a.CreatedAt),
		ExpiresUnix: unix(a.ExpiresAt), DecidedBy: a.DecidedBy, DecidedUnix: unix(a.DecidedAt), Reason: a.Reason,
		UsedUnix: unix(a.UsedAt), UsedJti: a.UsedJTI}
}

// ListApprovals lists approvals, newest first (at most 1000), in one state
// (as the API reports them) or all: the admin's only.
func (a *admin) ListApprovals(ctx context.Context, req *brokerv1.ListApprovalsRequest) (*brokerv1.ListApprovalsResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	state := req.GetState()
	if state != "" && !slices.Contains(approvalStates, state) {
		return nil, brokerv1.Refuse(codes.InvalidArgument, ReasonApprovalStateInvalid,
			fmt.Sprintf("state %q: want one of %v, or none for all", state, approvalStates))
	}
	all, err := a.b.store.Approvals(ctx, "", maxListedApprovals)
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", "", err)
	}
	now := time.Now()
	resp := &brokerv1.ListApprovalsResponse{}
	for _, ap := range all {
		if state == "" || approvalState(ap, now) == state {
			resp.Approvals = append(resp.Approvals, approvalInfo(ap, now))
		}
	}
	return resp, nil
}

// GetApproval returns one approval to the admin or to one of its
// approvers.
func (a *admin) GetApproval(ctx context.Context, req *brokerv1.GetApprovalRequest) (*brokerv1.Approval, error) {
	id, ap, err := a.approvalFor(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	if id != identity.AdminID(a.b.td) && !isApprover(ap.Approvers, id) {
		return nil, a.denyDecide(ctx, id, ap, ReasonNotApprover, codes.PermissionDenied,
			"only the admin and the approval's approvers may read it")
	}
	return approvalInfo(ap, time.Now()), nil
}

// DecideApproval approves or denies a pending approval. Checks, in order,
// each refusal audited (approval-decide, deny, with the reason code):
//
//  1. the caller presents an X.509-SVID of the trust domain:
//     caller_unauthenticated;
//  2. the decision is approve or deny, its reason at most 1024 bytes of
//     UTF-8: approval_decision_invalid;
//  3. the approval exists: approval_unknown;
//  4. the caller is not the approval's subject or node:
//     approver_is_requester;
//  5. the caller is among the approvers the rule listed when the
//     approval was requested (and not a node): not_approver;
//  6. the approval is pending (approval_not_pending) and has not expired
//     (approval_expired).
//
// The decision is audited (approval-approve, allow; approval-deny, deny
// with approval_denied; refs approval, subject, node, action, note) before
// it is stored, once (a concurrent decision that came first: 6 again);
// requests waiting on this broker are woken.
func (a *admin) DecideApproval(ctx context.Context, req *brokerv1.DecideApprovalRequest) (*brokerv1.Approval, error) {
	var state store.ApprovalState
	switch req.GetDecision() {
	case brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE:
		state = store.ApprovalApproved
	case brokerv1.ApprovalDecision_APPROVAL_DECISION_DENY:
		state = store.ApprovalDenied
	}
	note := req.GetReason()
	id, ap, err := a.approvalFor(ctx, req.GetId(), func(id spiffeid.ID) error { // checks 1-3
		if state == "" || len(note) > maxApprovalReason || !utf8.ValidString(note) {
			return a.b.deny(ctx, "approval", id.String(), ReasonApprovalDecisionInvalid, codes.InvalidArgument,
				fmt.Sprintf("decide approve or deny, with a reason of at most %d bytes of UTF-8", maxApprovalReason))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if id.String() == ap.Subject || id.String() == ap.Node { // check 4
		return nil, a.denyDecide(ctx, id, ap, ReasonApproverIsRequester, codes.PermissionDenied,
			"nobody approves their own request")
	}
	if !isApprover(ap.Approvers, id) { // check 5
		return nil, a.denyDecide(ctx, id, ap, ReasonNotApprover, codes.PermissionDenied,
			fmt.Sprintf("%s is not among the approvers of approval %s", id, ap.ID))
	}
	now := time.Now()
	if err := a.checkPending(ctx, id, ap, now); err != nil { // check 6
		return nil, err
	}
	kind, decision, reason := "approval-approve", "allow", ""
	if state == store.ApprovalDenied {
		kind, decision, reason = "approval-deny", "deny", ReasonApprovalDenied
	}
	refs := map[string]string{"approval": ap.ID, "subject": ap.Subject, "node": ap.Node, "action": ap.Digest, "note": note}
	if err := a.b.record(ctx, kind, id.String(), decision, reason, refs); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the decision could not be recorded")
	}
	err = a.b.store.DecideApproval(ctx, ap.ID, state, id.String(), note, now)
	if errors.Is(err, store.ErrApprovalNotPending) {
		// Decided by someone else since it was read, or expired.
		if ap, err = a.b.store.Approval(ctx, ap.ID); err != nil {
			return nil, a.b.refuse(ctx, "approval", id.String(), err)
		}
		if err := a.checkPending(ctx, id, ap, time.Now()); err != nil {
			return nil, err
		}
		return nil, a.denyDecide(ctx, id, ap, ReasonApprovalNotPending, codes.FailedPrecondition, "approval "+ap.ID+" is not pending")
	}
	if err != nil {
		return nil, a.b.refuse(ctx, "approval", id.String(), err)
	}
	a.b.approvalWake.broadcast()
	a.b.log.Info("approval decided", "approval", ap.ID, "state", string(state), "by", id.String(), "subject", ap.Subject,
		"action", ap.Display)
	if ap, err = a.b.store.Approval(ctx, ap.ID); err != nil {
		return nil, a.b.refuse(ctx, "approval", id.String(), err)
	}
	return approvalInfo(ap, now), nil
}

// approvalFor authenticates the caller (caller_unauthenticated), runs
// more checks on it, and reads approval id (approval_unknown).
func (a *admin) approvalFor(ctx context.Context, id string, checks ...func(spiffeid.ID) error) (spiffeid.ID, store.Approval, error) {
	_, caller, err := a.b.caller(ctx)
	if err != nil {
		return spiffeid.ID{}, store.Approval{}, a.b.deny(ctx, "approval", "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	for _, check := range checks {
		if err := check(caller); err != nil {
			return spiffeid.ID{}, store.Approval{}, err
		}
	}
	ap, err := a.b.store.Approval(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return spiffeid.ID{}, store.Approval{}, a.b.deny(ctx, "approval", caller.String(), ReasonApprovalUnknown, codes.NotFound,
			fmt.Sprintf("no approval %q (writ approvals lists them)", id))
	}
	if err != nil {
		return spiffeid.ID{}, store.Approval{}, a.b.refuse(ctx, "approval", caller.String(), err)
	}
	return caller, ap, nil
}

// checkPending refuses to decide an approval that is not pending
// (approval_not_pending) or has expired (approval_expired).
func (a *admin) checkPending(ctx context.Context, id spiffeid.ID, ap store.Approval, now time.Time) error {
	switch approvalState(ap, now) {
	case string(store.ApprovalPending):
		return nil
	case approvalStateExpired:
		return a.denyDecide(ctx, id, ap, ReasonApprovalExpired, codes.FailedPrecondition,
			fmt.Sprintf("approval %s expired at %s", ap.ID, ap.ExpiresAt.Format(time.RFC3339)))
	}
	return a.denyDecide(ctx, id, ap, ReasonApprovalNotPending, codes.FailedPrecondition,
		fmt.Sprintf("approval %s is %s, not pending", ap.ID, approvalState(ap, now)))
}

// denyDecide records, logs and returns a refused approval call, refs
// naming the approval.
func (a *admin) denyDecide(ctx context.Context, id spiffeid.ID, ap store.Approval, reason string, code codes.Code, msg string) error {
	a.b.log.Warn("approval call refused", "caller", id.String(), logReason, reason, "approval", ap.ID)
	a.b.metrics.refusals.WithLabelValues("approval", reason).Inc()
	refs := map[string]string{"approval": ap.ID, "subject": ap.Subject, "node": ap.Node, "action": ap.Digest}
	if err := a.b.record(ctx, "approval-decide", id.String(), "deny", reason, refs); err != nil {
		return brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the refusal could not be recorded")
	}
	return brokerv1.RefuseWith(code, reason, msg, map[string]string{MetaApprovalID: ap.ID})
}
