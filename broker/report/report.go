// Package report builds writ's governance coverage report (`writ report`):
// per trust domain and per node, how many nodes are attested and in good
// standing, how many decisions the verified audit logs record — execs,
// tool calls, HTTP requests and writ issuance, allowed or refused by reason
// — and, per log, whether it verified and how recent the node's checkpoint
// anchored at the broker is.
//
// Its inputs are the broker's store, opened read-only
// (store.OpenSQLiteReadOnly), and audit logs, each verified as
// `writ audit verify` does before anything in it is counted. A log that
// does not verify is reported with its first problem, and what it records
// is not counted: its counts are unknown (null in JSON, "not verified" in
// text), never zero.
package report

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
)

// FormatVersion is the version of the report's JSON document: field names
// and meanings of version 1 do not change; new fields may be added.
const FormatVersion = 1

// Reason codes of a log that is not verified, besides the problem kinds of
// audit.Verify (audit.Problem*), which are reported as they are.
const (
	ReasonLogUnreadable = "log_unreadable"  // the log's files cannot be read
	ReasonNodeUnknown   = "node_unknown"    // a node's log whose node the store does not have, and no --evidence for it
	ReasonNoTrustAnchor = "no_trust_anchor" // a log that is not a node's, and no --key was given
	ReasonDuplicateLog  = "duplicate_log"   // a second log of an origin already counted (a copy): its decisions would count twice
)

// Options say what to read and how to judge it.
type Options struct {
	// Store is the broker's store (read-only is enough).
	Store store.Store
	// Logs are audit log directories: the broker's, nodes', gateways'.
	Logs []string
	// Keys are trusted keys for logs that are not nodes' (the broker's
	// DATA_DIR/audit.pub, gateways'): each log is tried against each, as
	// writ lineage does. Name is how the report names the key (its file).
	Keys []TrustedKey
	// Evidence, by node SPIFFE ID, replaces the evidence the report
	// builds from the store for that node's log (`writ node evidence`).
	Evidence map[string]*audit.Evidence
	// Verify carries AllowUnsignedTail and AllowFileKey, as the flags of
	// writ audit verify set them.
	Verify audit.VerifyOptions
	// Now is the report's time; zero: time.Now().
	Now time.Time
	// Since, when set, counts only decisions recorded at or after it.
	Since time.Time
	// StaleAfter: a node whose newest anchored checkpoint is older (or
	// that has none) is flagged. Zero: 15 minutes.
	StaleAfter time.Duration
	// MaxAttestationAge: a node whose latest passing attestation is older
	// is not in good standing (the broker's writ.max_attestation_age). Zero:
	// not checked.
	MaxAttestationAge time.Duration
}

// TrustedKey is a key a log may be verified against.
type TrustedKey struct {
	Name string
	Opts audit.VerifyOptions // with TrustedKey set
}

// DefaultStaleAfter is Options.StaleAfter's default.
const DefaultStaleAfter = 15 * time.Minute

// Report is the coverage report. Its JSON encoding is `writ report --json`.
type Report struct {
	Version           int        `json:"version"`
	GeneratedAt       time.Time  `json:"generated_at"`
	Since             *time.Time `json:"since,omitempty"`
	StaleAfterSeconds int64      `json:"stale_after_seconds"`
	Summary           Summary    `json:"summary"`
	TrustDomains      []Domain   `json:"trust_domains"`
	Nodes             []Node     `json:"nodes"`
	Logs              []Log      `json:"logs"`
}

// Summary is the whole report in a few numbers.
type Summary struct {
	Standing
	LogsVerified int       `json:"logs_verified"`
	LogsFailed   int       `json:"logs_failed"`
	StaleAnchors int       `json:"stale_anchors"` // nodes (not revoked) whose newest anchor is missing or older than stale_after
	Decisions    Decisions `json:"decisions"`
}

// Standing counts nodes by standing. A node in good standing is attested
// (its latest attestation passed, it is neither stale nor revoked) and that
// attestation is no older than the broker allows.
type Standing struct {
	Nodes             int     `json:"nodes"`
	Enrolled          int     `json:"enrolled"` // never attested
	Attested          int     `json:"attested"`
	GoodStanding      int     `json:"good_standing"`
	Failed            int     `json:"failed"`
	Stale             int     `json:"stale"`
	Revoked           int     `json:"revoked"`
	GoodStandingShare float64 `json:"good_standing_share"` // good_standing / nodes; 0 with no nodes
}

// Domain is one trust domain: its nodes, and the decisions its verified
// logs record (a log belongs to the trust domain of its origin).
type Domain struct {
	TrustDomain string `json:"trust_domain"`
	Standing
	Decisions Decisions `json:"decisions"`
}

// Node is one enrolled node.
type Node struct {
	SPIFFEID     string  `json:"spiffe_id"`
	ID           string  `json:"id"`
	TrustDomain  string  `json:"trust_domain"`
	State        string  `json:"state"`
	StateReason  string  `json:"state_reason,omitempty"`
	GoodStanding bool    `json:"good_standing"`
	LatestResult *Result `json:"latest_result,omitempty"`
	Anchor       *Anchor `json:"anchor,omitempty"` // absent: the broker anchored none of its checkpoints
	AnchorStale  bool    `json:"anchor_stale"`     // no anchor, or older than stale_after
	// Log is the state of the node's own audit log among those given:
	// "verified", "failed" or "not_given".
	Log       string    `json:"log"`
	Decisions Decisions `json:"decisions"`
}

// Result is a node's latest attestation result.
type Result struct {
	ID     string    `json:"id"`
	Time   time.Time `json:"time"`
	Passed bool      `json:"passed"`
	Policy string    `json:"policy"`
	Reason string    `json:"reason,omitempty"` // the first finding of a failed one
}

// Anchor is the newest checkpoint of a node's log anchored at the broker.
type Anchor struct {
	Size       uint64    `json:"size"`
	AnchoredAt time.Time `json:"anchored_at"`
	AgeSeconds int64     `json:"age_seconds"`
}

// Log states of Node.Log.
const (
	LogVerified = "verified"
	LogFailed   = "failed"
	LogNotGiven = "not_given"
)

// Log is one audit log given.
type Log struct {
	Dir string `json:"dir"`
	// Origin is the log's checkpoint origin from key.json (as the log
	// claims it when it did not verify); Role is what the origin names:
	// broker, node, gateway or other.
	Origin      string `json:"origin"`
	Role        string `json:"role"`
	TrustDomain string `json:"trust_domain,omitempty"`
	Node        string `json:"node,omitempty"` // a node's log: its SPIFFE ID
	Verified    bool   `json:"verified"`
	// VerifiedAgainst says what it verified against: "evidence (store)",
	// "evidence (file)" or "key <name>".
	VerifiedAgainst string `json:"verified_against,omitempty"`
	// Problem is why it did not verify: a reason code (audit.Problem* or
	// Reason*), with Detail.
	Problem      string `json:"problem,omitempty"`
	Detail       string `json:"detail,omitempty"`
	Bytes        int64  `json:"bytes"`
	Entries      uint64 `json:"entries"`
	Checkpointed uint64 `json:"checkpointed"`
	// LastCheckpointed is the time of the last entry its newest verified
	// checkpoint covers.
	LastCheckpointed *time.Time `json:"last_checkpointed,omitempty"`
	// Counted is how many of its entries were counted as decisions (in the
	// --since window).
	Counted int `json:"counted"`
}

// Log roles.
const (
	RoleBroker  = "broker"
	RoleNode    = "node"
	RoleGateway = "gateway"
	RoleOther   = "other"
)

// Decisions counts decisions by kind. A nil Tally means no verified log
// that records that kind was given for the scope: the count is unknown
// ("not verified"), not zero.
type Decisions struct {
	Exec *Tally `json:"exec"` // exec-allow, exec-deny, exec-failed: nodes' logs
	MCP  *Tally `json:"mcp"`  // mcp-call: gateways' logs
	HTTP *Tally `json:"http"` // http-request: gateways' logs
	Writ *Tally `json:"writ"` // writ-issue, writ-deny: the broker's log
}

// Tally counts one kind of decision.
type Tally struct {
	Allowed int `json:"allowed"`
	Denied  int `json:"denied"`
	// Failed counts execs that were allowed (counted in Allowed, from
	// their exec-allow entry), then failed to start (exec-failed).
	Failed        int            `json:"failed"`
	Reasons       map[string]int `json:"reasons"`        // refusals by reason code
	FailedReasons map[string]int `json:"failed_reasons"` // failures by reason code
	// Incomplete: a log that would add to this count did not verify.
	Incomplete bool `json:"incomplete,omitempty"`
}

// OK reports whether every log given verified.
func (r *Report) OK() bool { return r.Summary.LogsFailed == 0 }

// Build reads the store and the logs and builds the report.
func Build(ctx context.Context, opts Options) (*Report, error) {
	if opts.Store == nil {
		return nil, errors.New("report: no store")
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	if opts.StaleAfter <= 0 {
		opts.StaleAfter = DefaultStaleAfter
	}
	r := &Report{Version: FormatVersion, GeneratedAt: opts.Now.UTC(), StaleAfterSeconds: int64(opts.StaleAfter / time.Second)}
	if !opts.Since.IsZero() {
		since := opts.Since.UTC()
		r.Since = &since
	}
	nodes, err := readNodes(ctx, opts)
	if err != nil {
		return nil, err
	}
	logs := make([]*readLog, 0, len(opts.Logs))
	counted := map[string]string{} // origin -> the directory of the verified log counted for it
	for _, dir := range opts.Logs {
		l := verifyLog(ctx, dir, nodes, opts)
		if l.Verified {
			if first, ok := counted[l.Origin]; ok {
				l.entries = nil
				l.fail(ReasonDuplicateLog, "%s is also a log of %s: each log is counted once", first, l.Origin)
			} else {
				counted[l.Origin] = dir
			}
		}
		logs = append(logs, l)
	}
	r.assemble(nodes, logs, opts)
	return r, nil
}

// readNodes reads every node's standing, latest result and anchor.
func readNodes(ctx context.Context, opts Options) ([]*Node, error) {
	stored, err := opts.Store.Nodes(ctx)
	if err != nil {
		return nil, fmt.Errorf("report: %w", err)
	}
	out := make([]*Node, 0, len(stored))
	for _, sn := range stored {
		n := &Node{SPIFFEID: sn.SPIFFEID, ID: sn.ID, State: string(sn.State), StateReason: sn.StateReason, Log: LogNotGiven}
		if id, err := spiffeid.FromString(sn.SPIFFEID); err == nil {
			n.TrustDomain = id.TrustDomain().Name()
		}
		res, err := opts.Store.LatestVerdict(ctx, sn.ID)
		switch {
		case err == nil:
			n.LatestResult = &Result{ID: res.ID, Time: res.Time, Passed: res.Passed, Policy: res.Policy}
			if len(res.Findings) > 0 {
				n.LatestResult.Reason = string(res.Findings[0].Reason)
			}
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("report: node %s: %w", sn.ID, err)
		}
		n.GoodStanding = sn.State == store.NodeAttested && n.LatestResult != nil && n.LatestResult.Passed &&
			(opts.MaxAttestationAge <= 0 || opts.Now.Sub(n.LatestResult.Time) <= opts.MaxAttestationAge)
		a, err := opts.Store.LatestAuditAnchor(ctx, sn.ID)
		switch {
		case err == nil:
			n.Anchor = &Anchor{Size: a.Size, AnchoredAt: a.AnchoredAt, AgeSeconds: int64(opts.Now.Sub(a.AnchoredAt) / time.Second)}
		case !errors.Is(err, store.ErrNotFound):
			return nil, fmt.Errorf("report: node %s: %w", sn.ID, err)
		}
		n.AnchorStale = n.Anchor == nil || opts.Now.Sub(n.Anchor.AnchoredAt) > opts.StaleAfter
		out = append(out, n)
	}
	return out, nil
}

// assemble counts the nodes' standing and the verified logs' decisions
// into the report's scopes: all, each trust domain, each node.
func (r *Report) assemble(nodes []*Node, logs []*readLog, opts Options) {
	byID := make(map[string]*Node, len(nodes))
	domains := map[string]*Domain{}
	domain := func(td string) *Domain {
		if td == "" {
			td = "-"
		}
		d := domains[td]
		if d == nil {
			d = &Domain{TrustDomain: td}
			domains[td] = d
		}
		return d
	}
	for _, n := range nodes {
		byID[n.SPIFFEID] = n
		r.Summary.add(n)
		domain(n.TrustDomain).add(n)
		if n.AnchorStale && n.State != string(store.NodeRevoked) {
			r.Summary.StaleAnchors++
		}
	}
	for _, l := range logs {
		if l.Verified {
			r.Summary.LogsVerified++
		} else {
			r.Summary.LogsFailed++
		}
		if n := byID[l.Node]; n != nil && l.Role == RoleNode && n.Log != LogVerified {
			n.Log = LogFailed
			if l.Verified {
				n.Log = LogVerified
			}
		}
	}
	// Which counts are known: a kind is known for a scope once a verified
	// log of the role that records it was given (verified logs first);
	// incomplete when another such log failed.
	for _, verified := range []bool{true, false} {
		for _, l := range logs {
			if l.Verified != verified {
				continue
			}
			d := domain(l.TrustDomain)
			for _, kind := range l.kinds() {
				r.Summary.Decisions.mark(kind, verified)
				d.Decisions.mark(kind, verified)
				for _, n := range nodes {
					// A node's own log speaks for it; the broker's and
					// gateways' logs for every node of their trust domain.
					if (l.Role == RoleNode && n.SPIFFEID == l.Node) || (l.Role != RoleNode && n.TrustDomain == l.TrustDomain) {
						n.Decisions.mark(kind, verified)
					}
				}
			}
		}
	}
	for _, l := range logs {
		if !l.Verified {
			continue
		}
		d := domain(l.TrustDomain)
		for _, e := range l.entries {
			kind, ok := kindOf[e.Kind]
			if !ok || (!opts.Since.IsZero() && e.Time.Before(opts.Since)) {
				continue
			}
			l.Counted++
			r.Summary.Decisions.count(kind, e)
			d.Decisions.count(kind, e)
			if n := byID[nodeOf(l, e)]; n != nil {
				n.Decisions.count(kind, e)
			}
		}
	}
	for _, n := range nodes {
		r.Nodes = append(r.Nodes, *n)
	}
	for _, l := range logs {
		r.Logs = append(r.Logs, l.Log)
	}
	for _, td := range slices.Sorted(maps.Keys(domains)) {
		d := domains[td]
		d.share()
		r.TrustDomains = append(r.TrustDomains, *d)
	}
	r.Summary.share()
	if r.Nodes == nil {
		r.Nodes = []Node{}
	}
	if r.Logs == nil {
		r.Logs = []Log{}
	}
	if r.TrustDomains == nil {
		r.TrustDomains = []Domain{}
	}
}

func (s *Standing) add(n *Node) {
	s.Nodes++
	switch store.NodeState(n.State) {
	case store.NodeEnrolled:
		s.Enrolled++
	case store.NodeAttested:
		s.Attested++
	case store.NodeFailed:
		s.Failed++
	case store.NodeStale:
		s.Stale++
	case store.NodeRevoked:
		s.Revoked++
	}
	if n.GoodStanding {
		s.GoodStanding++
	}
}

func (s *Standing) share() {
	if s.Nodes > 0 {
		s.GoodStandingShare = float64(s.GoodStanding) / float64(s.Nodes)
	}
}

// Kinds of decision the report counts.
const (
	kindExec = "exec"
	kindMCP  = "mcp"
	kindHTTP = "http"
	kindWrit = "writ"
)

// kindOf maps the audit entry kinds counted to their kind of decision.
var kindOf = map[string]string{
	"exec-allow": kindExec, "exec-deny": kindExec, "exec-failed": kindExec,
	"mcp-call":     kindMCP,
	"http-request": kindHTTP,
	"writ-issue":   kindWrit, "writ-deny": kindWrit,
}

// kinds are the kinds of decision the log speaks for: those a log of its
// role records, and any other it holds (a gateway whose origin the report
// does not know still has its requests counted).
func (l *readLog) kinds() []string {
	kinds := slices.Clone(roleKinds[l.Role])
	for _, e := range l.entries {
		if k, ok := kindOf[e.Kind]; ok && !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	return kinds
}

// roleKinds are the kinds of decision a log of each role records.
var roleKinds = map[string][]string{
	RoleNode:    {kindExec},
	RoleBroker:  {kindWrit},
	RoleGateway: {kindMCP, kindHTTP},
}

func (d *Decisions) tally(kind string) **Tally {
	switch kind {
	case kindExec:
		return &d.Exec
	case kindMCP:
		return &d.MCP
	case kindHTTP:
		return &d.HTTP
	default:
		return &d.Writ
	}
}

// mark records that a log recording kind was given: verified, the count is
// known; not, a known count is incomplete (an unknown one stays unknown).
func (d *Decisions) mark(kind string, verified bool) {
	t := d.tally(kind)
	switch {
	case verified && *t == nil:
		*t = &Tally{Reasons: map[string]int{}, FailedReasons: map[string]int{}}
	case !verified && *t != nil:
		(*t).Incomplete = true
	}
}

// count adds one decision.
func (d *Decisions) count(kind string, e audit.Entry) {
	t := *d.tally(kind)
	if t == nil {
		return
	}
	switch {
	case e.Kind == "exec-failed": // its exec-allow was counted
		t.Failed++
		t.FailedReasons[reasonOf(e)]++
	case e.Decision == audit.DecisionAllow:
		t.Allowed++
	default:
		t.Denied++
		t.Reasons[reasonOf(e)]++
	}
}

func reasonOf(e audit.Entry) string {
	if e.Reason == "" {
		return "unspecified"
	}
	return e.Reason
}

// nodeOf is the node a decision concerns: the node of a node's log; else
// the entry's node ref (a workload's writ) or its subject when that is a
// node.
func nodeOf(l *readLog, e audit.Entry) string {
	if l.Role == RoleNode {
		return l.Node
	}
	if n := e.Refs["node"]; n != "" {
		return n
	}
	if id, err := spiffeid.FromString(e.Subject); err == nil && strings.HasPrefix(id.Path(), "/node/") {
		return e.Subject
	}
	return ""
}
