// Package store keeps the broker's state: enrolled nodes, pending
// enrollments, attestation nonces, attestation results and issued SVIDs.
// One interface, implemented once (DB) for an embedded SQLite file and for
// PostgreSQL (docs/adr/0038); anything that must hold across broker
// replicas (single-use nonces) lives here, never only in memory.
package store

import (
	"context"
	"errors"
	"time"

	"github.com/writ-dev/writ/attest"
)

// Errors callers branch on.
var (
	ErrNotFound      = errors.New("store: not found")
	ErrNonceUnknown  = errors.New("store: nonce was never issued to this node")
	ErrNonceReplayed = errors.New("store: nonce was already used")
	ErrNonceExpired  = errors.New("store: nonce expired")
	ErrWritUsed      = errors.New("store: single-use writ was already used")
	ErrRevoked       = errors.New("store: node is revoked")
	ErrParentRevoked = errors.New("store: the parent writ is revoked")
	// ErrSequenceBackwards: a federated bundle whose spiffe_sequence is
	// lower than the stored one's (or absent where the stored one has one).
	ErrSequenceBackwards = errors.New("store: the bundle's spiffe_sequence goes backwards")
	// ErrBusy: the database could not take the write now (SQLite: the
	// file stayed locked past the wait, SQLITE_BUSY or SQLITE_LOCKED;
	// PostgreSQL: a serialization failure, a deadlock, a lock timeout,
	// too many connections). Nothing was written; the caller may retry
	// later.
	ErrBusy = errors.New("store: busy")
)

// Node is an enrolled node: a TPM whose EK the broker trusts and whose AK it
// has bound to that EK by credential activation.
type Node struct {
	ID         string // hex sha256 of the EK public key DER
	SPIFFEID   string
	EKPublic   []byte // PKIX DER
	EKCert     []byte // DER; empty when trusted by allow list
	AKPublic   []byte // TPMT_PUBLIC
	EnrolledAt time.Time

	// Standing, kept by SetNodeState; PutNode leaves it alone.
	State          NodeState
	StateReason    string
	StateChangedAt time.Time
}

// NodeState is a node's standing.
type NodeState string

// Node states.
const (
	NodeEnrolled NodeState = "enrolled" // enrolled, never attested
	NodeAttested NodeState = "attested" // latest attestation passed
	NodeFailed   NodeState = "failed"   // latest attestation failed
	NodeStale    NodeState = "stale"    // stopped attesting
	NodeRevoked  NodeState = "revoked"  // revoked by an operator: final
)

// Enrollment is an enrollment waiting for the TPM's answer to its challenge.
type Enrollment struct {
	ID        string
	Node      Node   // the node it will enroll
	Secret    []byte // the answer a genuine TPM gives
	ExpiresAt time.Time
}

// Nonce is an attestation challenge issued to one node, good for one use.
type Nonce struct {
	Value     []byte
	NodeID    string
	ExpiresAt time.Time
}

// Result is the record of one attestation, passed or failed.
type Result struct {
	ID        string
	NodeID    string
	Time      time.Time
	Passed    bool
	Findings  []attest.Finding // why it failed; empty when it passed
	PCRDigest string           // "sha256:<hex>" of the quoted PCRs; empty if the quote did not verify
	Sel       []int            // the boot PCR selection PCRDigest covers, ascending; nil in results of older brokers
	Policy    string           // id@version
	Claims    attest.Claims
	Evidence  []byte // the raw evidence as received (JSON), for dry runs and offline analysis
}

// SVID records an X.509-SVID the broker issued.
type SVID struct {
	Serial   string // hex
	NodeID   string
	SPIFFEID string
	ResultID string // the passing result it was issued on
	IssuedAt time.Time
	NotAfter time.Time
}

// AuditKey is a node's audit key (the PCR-bound key that signs its audit
// log's checkpoints) as the broker checked it: certified by the node's AK
// over the nonce of a passing attestation, bound to the boot PCR values that
// attestation's quote reported.
type AuditKey struct {
	NodeID    string
	PublicKey []byte // PKIX DER
	ResultID  string // the passing result
	Nonce     []byte // that attestation's nonce: the certification's qualifying data
	PCRValues map[int][]byte
	CreatedAt time.Time
}

// AuditAnchor is a checkpoint of a node's audit log that the broker checked
// (signed by a recorded audit key, consistent with the previous anchor).
type AuditAnchor struct {
	NodeID     string
	Size       uint64
	Root       []byte
	Checkpoint []byte // the signed note
	ResultID   string // the attestation it came with
	AnchoredAt time.Time
}

// Store is the broker's persistent state. Implementations are safe for
// concurrent use.
type Store interface {
	// PutEnrollment records a pending enrollment.
	PutEnrollment(ctx context.Context, e Enrollment) error
	// TakeEnrollment removes and returns a pending enrollment: each can be
	// answered once. Missing or expired (at now): ErrNotFound.
	TakeEnrollment(ctx context.Context, id string, now time.Time) (Enrollment, error)
	// PendingEnrollments counts enrollments not expired at now.
	PendingEnrollments(ctx context.Context, now time.Time) (int, error)
	// PruneEnrollments deletes enrollments that expired before now.
	PruneEnrollments(ctx context.Context, now time.Time) error

	// PutNode enrolls a node, replacing an earlier enrollment of the same
	// node (a new AK).
	PutNode(ctx context.Context, n Node) error
	// Node returns one node, or ErrNotFound.
	Node(ctx context.Context, id string) (Node, error)
	// NodeStanding returns a node and its latest result without the
	// evidence (LatestVerdict), read together; found is false when the
	// node never attested. ErrNotFound when the node is not enrolled.
	// The result's Findings and Claims may be shared with other callers
	// (decoded once per result): read them, never change them.
	NodeStanding(ctx context.Context, id string) (n Node, latest Result, found bool, err error)
	// Nodes returns all nodes ordered by ID.
	Nodes(ctx context.Context) ([]Node, error)
	// SetNodeState changes a node's standing and reports whether it
	// changed. A revoked node stays revoked: ErrRevoked.
	SetNodeState(ctx context.Context, id string, state NodeState, reason string, at time.Time) (bool, error)

	// PutNonce records an issued nonce.
	PutNonce(ctx context.Context, n Nonce) error
	// ConsumeNonce marks a nonce of nodeID used, atomically, once. It fails
	// with ErrNonceUnknown, ErrNonceReplayed or ErrNonceExpired.
	ConsumeNonce(ctx context.Context, nodeID string, value []byte, now time.Time) error
	// IssueNonce is PutNonce then TrimNonces(n.NodeID, keep), atomically.
	IssueNonce(ctx context.Context, n Nonce, keep int) error
	// PruneNonces deletes nonces that expired before now.
	PruneNonces(ctx context.Context, now time.Time) error
	// TrimNonces keeps a node's keep most recently issued nonces and
	// deletes the others.
	TrimNonces(ctx context.Context, nodeID string, keep int) error

	// PutResult records an attestation result.
	PutResult(ctx context.Context, r Result) error
	// PutResultStates is PutResult then SetNodeState(r.NodeID, state,
	// reason, at) for several results, committed together, in order (one
	// flush for all: the broker batches the results that wait for each
	// other). changed[i] reports whether the i-th changed its node's
	// standing; revoked[i] that its node is revoked (its result stored,
	// ErrRevoked for that one alone). An error commits none of them.
	PutResultStates(ctx context.Context, rs []ResultState, at time.Time) (changed, revoked []bool, err error)
	// Result returns one result, or ErrNotFound.
	Result(ctx context.Context, id string) (Result, error)
	// LatestResult returns a node's most recent result, or ErrNotFound.
	LatestResult(ctx context.Context, nodeID string) (Result, error)
	// LatestVerdict is LatestResult without the result's evidence
	// (Evidence nil): what a node's standing needs on every request.
	LatestVerdict(ctx context.Context, nodeID string) (Result, error)
	// Results returns a node's results, newest first, at most limit.
	Results(ctx context.Context, nodeID string, limit int) ([]Result, error)
	// PruneResults deletes results recorded before before, except each
	// node's latest, with the records of SVIDs that expired before before;
	// a result an unexpired SVID was issued on is kept.
	PruneResults(ctx context.Context, before time.Time) error

	// PutSVID records an issued SVID.
	PutSVID(ctx context.Context, s SVID) error
	// SVIDs returns the SVIDs issued to a node, newest first.
	SVIDs(ctx context.Context, nodeID string) ([]SVID, error)
	// SVIDBySerial returns the SVID issued with that serial (hex), or
	// ErrNotFound.
	SVIDBySerial(ctx context.Context, serial string) (SVID, error)

	// PutAuditKey records a node's audit key once (a second record of the
	// same key is ignored).
	PutAuditKey(ctx context.Context, k AuditKey) error
	// AuditKeys returns a node's audit keys, oldest first.
	AuditKeys(ctx context.Context, nodeID string) ([]AuditKey, error)
	// PutAuditAnchor records an anchored checkpoint of a node's log (a
	// second one of the same size is ignored).
	PutAuditAnchor(ctx context.Context, a AuditAnchor) error
	// LatestAuditAnchor returns the largest checkpoint anchored for a node,
	// or ErrNotFound.
	LatestAuditAnchor(ctx context.Context, nodeID string) (AuditAnchor, error)

	// ConsumeWrit marks a single-use writ used, atomically, once: a second
	// call for the same jti fails with ErrWritUsed. The record is kept
	// until PruneWrits removes it.
	ConsumeWrit(ctx context.Context, jti string, expires, now time.Time) error
	// PruneWrits forgets used writs that expired before before. Callers
	// pass now minus the largest clock skew any verifier allows: until
	// then a verifier still accepts the writ, and only the record refuses
	// a second use.
	PruneWrits(ctx context.Context, before time.Time) error

	// PutEntry records a new registration entry.
	PutEntry(ctx context.Context, e Entry) error
	// Entry returns one entry, or ErrNotFound.
	Entry(ctx context.Context, id string) (Entry, error)
	// Entries returns all entries, oldest first.
	Entries(ctx context.Context) ([]Entry, error)
	// DeleteEntry deletes one entry, or fails with ErrNotFound.
	DeleteEntry(ctx context.Context, id string) error

	// PutIssuedWrit records a writ the broker issued.
	PutIssuedWrit(ctx context.Context, w IssuedWrit) error
	// IssuedWrit returns an issued writ's record, or ErrNotFound.
	IssuedWrit(ctx context.Context, jti string) (IssuedWrit, error)
	// PruneIssuedWrits forgets issued writs that expired before before
	// (the broker passes now minus the lineage retention: a governed
	// process may still name an expired writ as parent through its agent
	// until then, docs/adr/0031).
	PruneIssuedWrits(ctx context.Context, before time.Time) error
	// RevokeWrit revokes a writ and all its recorded descendants, and
	// returns those it newly revoked; ErrNotFound for an unknown jti.
	RevokeWrit(ctx context.Context, jti, reason string, now time.Time) ([]IssuedWrit, error)
	// RevokedWrits returns the revoked writs not expired at now.
	RevokedWrits(ctx context.Context, now time.Time) ([]IssuedWrit, error)

	// BundleSequence returns the trust bundle's sequence number for content
	// (a digest of the bundle's content): the stored number when content
	// is what it numbers, else that number plus one (1 at first), stored
	// with content. Atomic across broker replicas.
	BundleSequence(ctx context.Context, content []byte) (uint64, error)

	// FederatedBundle returns the stored bundle of a federated trust
	// domain, or ErrNotFound.
	FederatedBundle(ctx context.Context, trustDomain string) (FederatedBundle, error)
	// PutFederatedBundle stores a federated domain's bundle, replacing the
	// stored one, atomically: ErrSequenceBackwards (nothing stored) when
	// the stored one has a sequence and b has a lower one or none.
	PutFederatedBundle(ctx context.Context, b FederatedBundle) error

	// PutApproval records a new approval; ErrApprovalOpen when one with
	// the same binding is open (pending, or approved and unused).
	PutApproval(ctx context.Context, a Approval) error
	// Approval returns one approval, or ErrNotFound.
	Approval(ctx context.Context, id string) (Approval, error)
	// LatestApproval returns the newest unused approval of a binding that
	// is pending, approved or denied, or ErrNotFound.
	LatestApproval(ctx context.Context, b ApprovalBinding) (Approval, error)
	// PendingApprovals counts a node's pending approvals not expired at
	// now.
	PendingApprovals(ctx context.Context, node string, now time.Time) (int, error)
	// Approvals returns approvals in state (all when empty), newest
	// first, at most limit.
	Approvals(ctx context.Context, state ApprovalState, limit int) ([]Approval, error)
	// DecideApproval approves or denies a pending, unexpired approval,
	// once; else ErrApprovalNotPending.
	DecideApproval(ctx context.Context, id string, state ApprovalState, by, reason string, at time.Time) error
	// UseApproval spends an approved, unused, unexpired approval on writ
	// jti, atomically, once across replicas; else ErrApprovalUnusable.
	UseApproval(ctx context.Context, id, jti string, at time.Time) error
	// ExpireApproval marks an open approval expired at at as expired.
	ExpireApproval(ctx context.Context, id string, at time.Time) error
	// PruneApprovals deletes approvals that expired before before.
	PruneApprovals(ctx context.Context, before time.Time) error

	// PutReplicaKeys replaces the public keys replica publishes with
	// keys, each kept until notAfter unless published again, and forgets
	// every replica's keys that expired before notAfter's publication
	// (now).
	PutReplicaKeys(ctx context.Context, replica string, keys []ReplicaKey, notAfter, now time.Time) error
	// ReplicaKeys returns the published keys not expired at now, ordered
	// by replica, kind and key.
	ReplicaKeys(ctx context.Context, now time.Time) ([]ReplicaKey, error)

	Close() error
}

// ReplicaKey is a public key a broker replica publishes for the others to
// carry in their trust bundles (docs/adr/0041).
type ReplicaKey struct {
	Replica  string
	Kind     ReplicaKeyKind
	Key      []byte // X.509 certificate DER (x509-root) or PKIX public key DER
	NotAfter time.Time
}

// ReplicaKeyKind says what a replica key is for.
type ReplicaKeyKind string

// Kinds of replica keys.
const (
	ReplicaX509Root ReplicaKeyKind = "x509-root" // a root of its CA: trusted for X.509-SVIDs
	ReplicaWritKey  ReplicaKeyKind = "writ"      // its writ signing key
	ReplicaJWTKey   ReplicaKeyKind = "jwt-svid"  // its JWT-SVID signing key
)

// FederatedBundle is the last good bundle of a federated trust domain.
type FederatedBundle struct {
	TrustDomain string
	Bundle      []byte  // the SPIFFE bundle document
	Sequence    *uint64 // its spiffe_sequence; nil: none
	FetchedAt   time.Time
}

// IssuedWrit records a writ the broker signed.
type IssuedWrit struct {
	JTI       string
	Subject   string // SPIFFE ID: the writ's sub (the node, or a workload of it)
	Node      string // SPIFFE ID of the node it was issued on
	IssuedAt  time.Time
	ExpiresAt time.Time
	Parent    string // the parent writ's jti; "" for a root
	Rule      string // the name of the rule it was issued under ("" if unnamed)
	// Scope is the names of the rules its descendants may be issued
	// under: nil for any, empty for none (docs/adr/0031).
	Scope        []string
	Depth        int       // 0 for a root, the parent's depth + 1 otherwise
	RevokedAt    time.Time // zero unless revoked (with it, all its descendants)
	RevokeReason string
}

// ResultState is one attestation result and the standing it gives its
// node (PutResultStates).
type ResultState struct {
	Result Result
	State  NodeState
	Reason string
}
