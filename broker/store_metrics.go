package broker

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/writ-dev/writ/broker/store"
)

// observedStore times every call of the store interface into
// writ_broker_store_seconds{op}, op being the method's name: a bounded
// set, never a node ID or a jti. A method added to store.Store later
// passes through the embedded Store untimed until it is listed here.
type observedStore struct {
	store.Store
	seconds *prometheus.HistogramVec
}

var _ store.Store = observedStore{}

func (o observedStore) observe(op string, start time.Time) {
	o.seconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
}

func (o observedStore) PutEnrollment(ctx context.Context, e store.Enrollment) error {
	defer o.observe("PutEnrollment", time.Now())
	return o.Store.PutEnrollment(ctx, e)
}

func (o observedStore) TakeEnrollment(ctx context.Context, id string, now time.Time) (store.Enrollment, error) {
	defer o.observe("TakeEnrollment", time.Now())
	return o.Store.TakeEnrollment(ctx, id, now)
}

func (o observedStore) PendingEnrollments(ctx context.Context, now time.Time) (int, error) {
	defer o.observe("PendingEnrollments", time.Now())
	return o.Store.PendingEnrollments(ctx, now)
}

func (o observedStore) PruneEnrollments(ctx context.Context, now time.Time) error {
	defer o.observe("PruneEnrollments", time.Now())
	return o.Store.PruneEnrollments(ctx, now)
}

func (o observedStore) PutNode(ctx context.Context, n store.Node) error {
	defer o.observe("PutNode", time.Now())
	return o.Store.PutNode(ctx, n)
}

func (o observedStore) Node(ctx context.Context, id string) (store.Node, error) {
	defer o.observe("Node", time.Now())
	return o.Store.Node(ctx, id)
}

func (o observedStore) Nodes(ctx context.Context) ([]store.Node, error) {
	defer o.observe("Nodes", time.Now())
	return o.Store.Nodes(ctx)
}

func (o observedStore) SetNodeState(ctx context.Context, id string, state store.NodeState, reason string, at time.Time) (bool, error) {
	defer o.observe("SetNodeState", time.Now())
	return o.Store.SetNodeState(ctx, id, state, reason, at)
}

func (o observedStore) NodeStanding(ctx context.Context, id string) (store.Node, store.Result, bool, error) {
	defer o.observe("NodeStanding", time.Now())
	return o.Store.NodeStanding(ctx, id)
}

func (o observedStore) IssueNonce(ctx context.Context, n store.Nonce, keep int) error {
	defer o.observe("IssueNonce", time.Now())
	return o.Store.IssueNonce(ctx, n, keep)
}

func (o observedStore) PutResultStates(ctx context.Context, rs []store.ResultState, at time.Time) ([]bool, []bool, error) {
	defer o.observe("PutResultStates", time.Now())
	return o.Store.PutResultStates(ctx, rs, at)
}

func (o observedStore) PutNonce(ctx context.Context, n store.Nonce) error {
	defer o.observe("PutNonce", time.Now())
	return o.Store.PutNonce(ctx, n)
}

func (o observedStore) ConsumeNonce(ctx context.Context, nodeID string, value []byte, now time.Time) error {
	defer o.observe("ConsumeNonce", time.Now())
	return o.Store.ConsumeNonce(ctx, nodeID, value, now)
}

func (o observedStore) PruneNonces(ctx context.Context, now time.Time) error {
	defer o.observe("PruneNonces", time.Now())
	return o.Store.PruneNonces(ctx, now)
}

func (o observedStore) TrimNonces(ctx context.Context, nodeID string, keep int) error {
	defer o.observe("TrimNonces", time.Now())
	return o.Store.TrimNonces(ctx, nodeID, keep)
}

func (o observedStore) PutResult(ctx context.Context, r store.Result) error {
	defer o.observe("PutResult", time.Now())
	return o.Store.PutResult(ctx, r)
}

func (o observedStore) Result(ctx context.Context, id string) (store.Result, error) {
	defer o.observe("Result", time.Now())
	return o.Store.Result(ctx, id)
}

func (o observedStore) LatestResult(ctx context.Context, nodeID string) (store.Result, error) {
	defer o.observe("LatestResult", time.Now())
	return o.Store.LatestResult(ctx, nodeID)
}

func (o observedStore) LatestVerdict(ctx context.Context, nodeID string) (store.Result, error) {
	defer o.observe("LatestVerdict", time.Now())
	return o.Store.LatestVerdict(ctx, nodeID)
}

func (o observedStore) Results(ctx context.Context, nodeID string, limit int) ([]store.Result, error) {
	defer o.observe("Results", time.Now())
	return o.Store.Results(ctx, nodeID, limit)
}

func (o observedStore) PruneResults(ctx context.Context, before time.Time) error {
	defer o.observe("PruneResults", time.Now())
	return o.Store.PruneResults(ctx, before)
}

func (o observedStore) PutSVID(ctx context.Context, s store.SVID) error {
	defer o.observe("PutSVID", time.Now())
	return o.Store.PutSVID(ctx, s)
}

func (o observedStore) SVIDs(ctx context.Context, nodeID string) ([]store.SVID, error) {
	defer o.observe("SVIDs", time.Now())
	return o.Store.SVIDs(ctx, nodeID)
}

func (o observedStore) SVIDBySerial(ctx context.Context, serial string) (store.SVID, error) {
	defer o.observe("SVIDBySerial", time.Now())
	return o.Store.SVIDBySerial(ctx, serial)
}

func (o observedStore) PutAuditKey(ctx context.Context, k store.AuditKey) error {
	defer o.observe("PutAuditKey", time.Now())
	return o.Store.PutAuditKey(ctx, k)
}

func (o observedStore) AuditKeys(ctx context.Context, nodeID string) ([]store.AuditKey, error) {
	defer o.observe("AuditKeys", time.Now())
	return o.Store.AuditKeys(ctx, nodeID)
}

func (o observedStore) PutAuditAnchor(ctx context.Context, a store.AuditAnchor) error {
	defer o.observe("PutAuditAnchor", time.Now())
	return o.Store.PutAuditAnchor(ctx, a)
}

func (o observedStore) LatestAuditAnchor(ctx context.Context, nodeID string) (store.AuditAnchor, error) {
	defer o.observe("LatestAuditAnchor", time.Now())
	return o.Store.LatestAuditAnchor(ctx, nodeID)
}

func (o observedStore) ConsumeWrit(ctx context.Context, jti string, expires, now time.Time) error {
	defer o.observe("ConsumeWrit", time.Now())
	return o.Store.ConsumeWrit(ctx, jti, expires, now)
}

func (o observedStore) PruneWrits(ctx context.Context, before time.Time) error {
	defer o.observe("PruneWrits", time.Now())
	return o.Store.PruneWrits(ctx, before)
}

func (o observedStore) PutEntry(ctx context.Context, e store.Entry) error {
	defer o.observe("PutEntry", time.Now())
	return o.Store.PutEntry(ctx, e)
}

func (o observedStore) Entry(ctx context.Context, id string) (store.Entry, error) {
	defer o.observe("Entry", time.Now())
	return o.Store.Entry(ctx, id)
}

func (o observedStore) Entries(ctx context.Context) ([]store.Entry, error) {
	defer o.observe("Entries", time.Now())
	return o.Store.Entries(ctx)
}

func (o observedStore) DeleteEntry(ctx context.Context, id string) error {
	defer o.observe("DeleteEntry", time.Now())
	return o.Store.DeleteEntry(ctx, id)
}

func (o observedStore) PutIssuedWrit(ctx context.Context, w store.IssuedWrit) error {
	defer o.observe("PutIssuedWrit", time.Now())
	return o.Store.PutIssuedWrit(ctx, w)
}

func (o observedStore) IssuedWrit(ctx context.Context, jti string) (store.IssuedWrit, error) {
	defer o.observe("IssuedWrit", time.Now())
	return o.Store.IssuedWrit(ctx, jti)
}

func (o observedStore) PruneIssuedWrits(ctx context.Context, before time.Time) error {
	defer o.observe("PruneIssuedWrits", time.Now())
	return o.Store.PruneIssuedWrits(ctx, before)
}

func (o observedStore) RevokeWrit(ctx context.Context, jti, reason string, now time.Time) ([]store.IssuedWrit, error) {
	defer o.observe("RevokeWrit", time.Now())
	return o.Store.RevokeWrit(ctx, jti, reason, now)
}

func (o observedStore) RevokedWrits(ctx context.Context, now time.Time) ([]store.IssuedWrit, error) {
	defer o.observe("RevokedWrits", time.Now())
	return o.Store.RevokedWrits(ctx, now)
}

func (o observedStore) BundleSequence(ctx context.Context, content []byte) (uint64, error) {
	defer o.observe("BundleSequence", time.Now())
	return o.Store.BundleSequence(ctx, content)
}

func (o observedStore) FederatedBundle(ctx context.Context, trustDomain string) (store.FederatedBundle, error) {
	defer o.observe("FederatedBundle", time.Now())
	return o.Store.FederatedBundle(ctx, trustDomain)
}

func (o observedStore) PutFederatedBundle(ctx context.Context, b store.FederatedBundle) error {
	defer o.observe("PutFederatedBundle", time.Now())
	return o.Store.PutFederatedBundle(ctx, b)
}

func (o observedStore) PutApproval(ctx context.Context, a store.Approval) error {
	defer o.observe("PutApproval", time.Now())
	return o.Store.PutApproval(ctx, a)
}

func (o observedStore) Approval(ctx context.Context, id string) (store.Approval, error) {
	defer o.observe("Approval", time.Now())
	return o.Store.Approval(ctx, id)
}

func (o observedStore) LatestApproval(ctx context.Context, b store.ApprovalBinding) (store.Approval, error) {
	defer o.observe("LatestApproval", time.Now())
	return o.Store.LatestApproval(ctx, b)
}

func (o observedStore) PendingApprovals(ctx context.Context, node string, now time.Time) (int, error) {
	defer o.observe("PendingApprovals", time.Now())
	return o.Store.PendingApprovals(ctx, node, now)
}

func (o observedStore) Approvals(ctx context.Context, state store.ApprovalState, limit int) ([]store.Approval, error) {
	defer o.observe("Approvals", time.Now())
	return o.Store.Approvals(ctx, state, limit)
}

func (o observedStore) DecideApproval(ctx context.Context, id string, state store.ApprovalState, by, reason string, at time.Time) error {
	defer o.observe("DecideApproval", time.Now())
	return o.Store.DecideApproval(ctx, id, state, by, reason, at)
}

func (o observedStore) UseApproval(ctx context.Context, id, jti string, at time.Time) error {
	defer o.observe("UseApproval", time.Now())
	return o.Store.UseApproval(ctx, id, jti, at)
}

func (o observedStore) ExpireApproval(ctx context.Context, id string, at time.Time) error {
	defer o.observe("ExpireApproval", time.Now())
	return o.Store.ExpireApproval(ctx, id, at)
}

func (o observedStore) PruneApprovals(ctx context.Context, before time.Time) error {
	defer o.observe("PruneApprovals", time.Now())
	return o.Store.PruneApprovals(ctx, before)
}

// The store's notifications (PostgreSQL LISTEN/NOTIFY, docs/adr/0041) are
// not part of store.Store: they pass through here explicitly, or a broker
// whose store is observed would silently stop sharing node events with
// the other replicas (sharesEvents asserts notifier on b.store).
var _ notifier = observedStore{}

func (o observedStore) Notify(ctx context.Context, channel, payload string) error {
	n, ok := o.Store.(notifier)
	if !ok {
		return store.ErrNoNotify
	}
	return n.Notify(ctx, channel, payload)
}

func (o observedStore) Listen(ctx context.Context, channel string, retry time.Duration, ready func(), fn func(payload string), lost func(error)) error {
	n, ok := o.Store.(notifier)
	if !ok {
		return store.ErrNoNotify
	}
	return n.Listen(ctx, channel, retry, ready, fn, lost)
}
