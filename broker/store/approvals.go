package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"time"

	sqlite3 "modernc.org/sqlite/lib"
)

// Errors of approvals callers branch on.
var (
	// ErrApprovalOpen: an approval with the same binding is already open
	// (pending, or approved and unused).
	ErrApprovalOpen = errors.New("store: an open approval with this binding exists")
	// ErrApprovalNotPending: the approval was decided already, or expired.
	ErrApprovalNotPending = errors.New("store: approval is not pending")
	// ErrApprovalUnusable: the approval is not approved, was used, or
	// expired.
	ErrApprovalUnusable = errors.New("store: approval is not approved, was used or expired")
)

// ApprovalState is where an approval stands. An approved approval that
// was spent on a writ keeps its state and has UsedAt set.
type ApprovalState string

// Approval states.
const (
	ApprovalPending  ApprovalState = "pending"
	ApprovalApproved ApprovalState = "approved"
	ApprovalDenied   ApprovalState = "denied"
	ApprovalExpired  ApprovalState = "expired"
)

// ApprovalBinding is what an approval approves: exactly one action
// (its digest) for one subject on one node, for one audience, single use
// or not, under one version of the writ rules and one node policy.
type ApprovalBinding struct {
	Subject      string // SPIFFE ID: the writ's sub
	Node         string // SPIFFE ID of the node requesting
	Kind         string // exec, http, mcp
	Digest       string // sha256:… of the canonical action
	Audience     string
	Once         bool
	RulesVersion string // sha256:… of the writ rules
	Policy       string // the node's appraisal policy id@version
}

// Approval is a request for a person's approval and its outcome.
type Approval struct {
	ID    string
	State ApprovalState
	ApprovalBinding
	Display   string   // the action, for people
	Rule      int      // index of the rule in writ.rules that requires it
	Approvers []string // SPIFFE IDs or "/*" prefixes, from the rule
	CreatedAt time.Time
	ExpiresAt time.Time
	DecidedBy string // the approver's SPIFFE ID
	DecidedAt time.Time
	Reason    string
	UsedAt    time.Time
	UsedJTI   string // the writ it was spent on
}

const approvalColumns = `id, state, subject, node, kind, digest, display, audience, once, rules_version, policy, rule,
	approvers, created_at, expires_at, decided_by, decided_at, reason, used_at, used_jti`

// bindingWhere selects the approvals of one binding.
const bindingWhere = `digest = ? AND subject = ? AND node = ? AND kind = ? AND audience = ? AND once = ?
	AND rules_version = ? AND policy = ?`

func bindingArgs(b ApprovalBinding) []any {
	return []any{b.Digest, b.Subject, b.Node, b.Kind, b.Audience, b.Once, b.RulesVersion, b.Policy}
}

// PutApproval records a new approval. When an open one (pending, or
// approved and unused) with the same binding exists: ErrApprovalOpen.
func (s *DB) PutApproval(ctx context.Context, a Approval) error {
	if a.ExpiresAt.IsZero() || a.CreatedAt.IsZero() {
		return errors.New("store: put approval: no creation or expiry time")
	}
	approvers, err := json.Marshal(nonNil(a.Approvers))
	if err != nil {
		return wrap("put approval", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO approvals (`+approvalColumns+`)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		a.ID, string(a.State), a.Subject, a.Node, a.Kind, a.Digest, a.Display, a.Audience, a.Once, a.RulesVersion, a.Policy, a.Rule,
		string(approvers), nanos(a.CreatedAt), nanos(a.ExpiresAt), a.DecidedBy, nanos(a.DecidedAt), a.Reason, nanos(a.UsedAt), a.UsedJTI)
	if violates(err, sqlite3.SQLITE_CONSTRAINT_UNIQUE, "approvals_open") {
		return ErrApprovalOpen
	}
	if err != nil {
		return wrap("put approval", err)
	}
	return nil
}

// Approval returns one approval, or ErrNotFound.
func (s *DB) Approval(ctx context.Context, id string) (Approval, error) {
	a, err := scanApproval(s.db.QueryRowContext(ctx, `SELECT `+approvalColumns+` FROM approvals WHERE id = ?`, id))
	if absent(err) {
		return Approval{}, ErrNotFound
	}
	if err != nil {
		return Approval{}, wrap("approval", err)
	}
	return a, nil
}

// LatestApproval returns the newest unused approval of a binding that is
// pending, approved or denied (expired or not: the caller judges), or
// ErrNotFound.
func (s *DB) LatestApproval(ctx context.Context, b ApprovalBinding) (Approval, error) {
	a, err := scanApproval(s.db.QueryRowContext(ctx, `SELECT `+approvalColumns+` FROM approvals
		WHERE `+bindingWhere+` AND used_at IS NULL AND state IN ('pending', 'approved', 'denied')
		ORDER BY created_at DESC, id DESC LIMIT 1`, bindingArgs(b)...))
	if absent(err) {
		return Approval{}, ErrNotFound
	}
	if err != nil {
		return Approval{}, wrap("latest approval", err)
	}
	return a, nil
}

// PendingApprovals counts a node's pending approvals not expired at now.
func (s *DB) PendingApprovals(ctx context.Context, node string, now time.Time) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM approvals WHERE node = ? AND state = 'pending' AND expires_at > ?`,
		node, nanos(now)).Scan(&n); err != nil {
		return 0, wrap("pending approvals", err)
	}
	return n, nil
}

// Approvals returns approvals in state (all when empty), newest first, at
// most limit.
func (s *DB) Approvals(ctx context.Context, state ApprovalState, limit int) ([]Approval, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+approvalColumns+` FROM approvals
		WHERE (CAST(? AS TEXT) = '' OR state = ?) ORDER BY created_at DESC, id DESC LIMIT ?`, string(state), string(state), max(limit, 0))
	if err != nil {
		return nil, wrap("approvals", err)
	}
	return collect(rows, scanApproval, "approvals")
}

// DecideApproval approves or denies (state) a pending approval that has
// not expired at at, once, recording who decided and why. An approval
// decided already, expired or missing: ErrApprovalNotPending.
func (s *DB) DecideApproval(ctx context.Context, id string, state ApprovalState, by, reason string, at time.Time) error {
	if state != ApprovalApproved && state != ApprovalDenied {
		return errors.New("store: decide approval: the decision is approved or denied")
	}
	if !validText(id) {
		return ErrApprovalNotPending
	}
	return s.updateOne(ctx, "decide approval", ErrApprovalNotPending, `UPDATE approvals
		SET state = ?, decided_by = ?, decided_at = ?, reason = ?
		WHERE id = ? AND state = 'pending' AND expires_at > ?`,
		string(state), by, nanos(at), reason, id, nanos(at))
}

// UseApproval spends an approved, unused approval that has not expired at
// at on the writ jti, atomically, once: across goroutines and broker
// replicas exactly one caller succeeds; the others get
// ErrApprovalUnusable.
func (s *DB) UseApproval(ctx context.Context, id, jti string, at time.Time) error {
	if !validText(id) {
		return ErrApprovalUnusable
	}
	return s.updateOne(ctx, "use approval", ErrApprovalUnusable, `UPDATE approvals SET used_at = ?, used_jti = ?
		WHERE id = ? AND state = 'approved' AND used_at IS NULL AND expires_at > ?`,
		nanos(at), jti, id, nanos(at))
}

// ExpireApproval marks an open approval that expired at at as expired, so
// that a new request with its binding opens a new one. Anything else is
// left alone.
func (s *DB) ExpireApproval(ctx context.Context, id string, at time.Time) error {
	if !validText(id) {
		return nil
	}
	_, err := s.db.ExecContext(ctx, `UPDATE approvals SET state = 'expired'
		WHERE id = ? AND state IN ('pending', 'approved') AND used_at IS NULL AND expires_at <= ?`, id, nanos(at))
	if err != nil {
		return wrap("expire approval", err)
	}
	return nil
}

// PruneApprovals deletes approvals that expired before before, used or
// not (the audit log keeps their record).
func (s *DB) PruneApprovals(ctx context.Context, before time.Time) error {
	return s.deleteExpired(ctx, "prune approvals", `DELETE FROM approvals WHERE expires_at < ?`, before)
}

// updateOne runs an UPDATE that must change exactly one row, else fails
// with none.
func (s *DB) updateOne(ctx context.Context, op string, none error, query string, args ...any) error {
	n, err := s.affected(ctx, op, query, args...)
	if err != nil {
		return err
	}
	if n != 1 {
		return none
	}
	return nil
}

func scanApproval(row scanner) (Approval, error) {
	var (
		a                                    Approval
		state, approvers                     string
		created, expires, decided, usedAtRaw sql.NullInt64
	)
	if err := row.Scan(&a.ID, &state, &a.Subject, &a.Node, &a.Kind, &a.Digest, &a.Display, &a.Audience, &a.Once,
		&a.RulesVersion, &a.Policy, &a.Rule, &approvers, &created, &expires, &a.DecidedBy, &decided, &a.Reason,
		&usedAtRaw, &a.UsedJTI); err != nil {
		return Approval{}, err
	}
	if err := json.Unmarshal([]byte(approvers), &a.Approvers); err != nil {
		return Approval{}, err
	}
	a.State = ApprovalState(state)
	a.CreatedAt, a.ExpiresAt, a.DecidedAt, a.UsedAt = fromNanos(created), fromNanos(expires), fromNanos(decided), fromNanos(usedAtRaw)
	return a, nil
}
