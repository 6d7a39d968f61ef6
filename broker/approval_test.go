package broker

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

const (
	alice = "spiffe://writ.test/person/alice"
	bob   = "spiffe://writ.test/person/bob"
	carol = "spiffe://writ.test/ops/carol"
)

// approvalRules: nodes run anything (no approval); calls of the files
// server's read_file tool at the gateway need alice's or an ops person's
// approval, standing ttl; workloads under /app/ run anything with the
// approval of any workload under /app/ (so a subject is among its own
// approvers, which must not let it approve itself).
func approvalRules(ttl string) string {
	return defaultRules +
		"    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
		"      when: 'action.server == \"" + kindsServer + "\" && action.tool == \"read_file\"'\n" +
		"      audiences: [\"" + kindsGateway + "\"]\n" +
		"      approval:\n        approvers: [\"" + alice + "\", \"spiffe://writ.test/ops/*\"]\n        ttl: " + ttl + "\n" +
		"    - subject: spiffe://writ.test/app/*\n      kind: exec\n      executables: [any]\n" +
		"      approval:\n        approvers: [\"spiffe://writ.test/app/*\"]\n"
}

// startApprovalBroker starts a broker with approvalRules over real mTLS
// in dir, with node n1 (and n2) attested when fresh.
func startApprovalBroker(t *testing.T, dir, rules string, fresh bool) *testBroker {
	t.Helper()
	b := newTestBroker(t, dir, 1, rules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	if fresh {
		b.passedNode(t, "n1")
		b.passedNode(t, "n2")
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	return b
}

// adminClientAs connects to the started broker's Admin API as id (an SVID
// from the broker's CA) over real mTLS.
func (b *testBroker) adminClientAs(t *testing.T, id string) brokerv1.AdminClient {
	t.Helper()
	sid := spiffeid.RequireFromString(id)
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := b.ca.IssueX509SVID(sid, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, b.ca.Bundle(), tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return brokerv1.NewAdminClient(conn)
}

func mcpCall(args string) *brokerv1.WritRequest {
	return &brokerv1.WritRequest{Mcp: mcpReq(args), Audience: kindsGateway, Once: true}
}

// pendingID checks that err is approval_pending and returns the approval
// it names.
func pendingID(t *testing.T, what string, err error) string {
	t.Helper()
	return refusedApproval(t, what, err, ReasonApprovalPending)
}

// refusedApproval checks that err is a refusal with reason naming an
// approval in its metadata and returns that id.
func refusedApproval(t *testing.T, what string, err error, reason string) string {
	t.Helper()
	wantRefused(t, what, err, reason)
	id := brokerv1.MetadataOf(err)[MetaApprovalID]
	if id == "" {
		t.Fatalf("%s: %v names no approval", what, err)
	}
	if reason == ReasonApprovalPending && !strings.Contains(err.Error(), "writ approve "+id) {
		t.Fatalf("%s: %v does not say how to approve", what, err)
	}
	return id
}

func decide(c brokerv1.AdminClient, id string, approve bool, reason string) (*brokerv1.Approval, error) {
	d := brokerv1.ApprovalDecision_APPROVAL_DECISION_DENY
	if approve {
		d = brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return c.DecideApproval(ctx, &brokerv1.DecideApprovalRequest{Id: id, Decision: d, Reason: reason})
}

func findAudit(es []audit.Entry, f func(audit.Entry) bool) bool {
	for _, e := range es {
		if f(e) {
			return true
		}
	}
	return false
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestApprovalPendingApproveUse: over real mTLS, a tool call whose rule
// requires approval is refused approval_pending with the approval's id
// (asking again names the same one; audited approval-request); another
// argument is another approval, which the first one's approval does not
// cover; approved, the call gets its writ, bound to the approved digest,
// its issue audited with the approval; used once: the same call again
// needs a new approval. A rule without approval is unaffected.
func TestApprovalPendingApproveUse(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("10m"), true)
	ctx := testCtx(t)
	n1, n2 := b.nodeClient(t, "n1"), b.nodeClient(t, "n2")
	const argsA, argsB = `{"path":"/tmp/a.txt"}`, `{"path":"/tmp/b.txt"}`

	if _, err := n1.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil {
		t.Fatalf("an exec rule without approval: %v", err)
	}
	_, err := n1.c.RequestWrit(ctx, mcpCall(argsA))
	x := pendingID(t, "first request", err)
	_, err = n1.c.RequestWrit(ctx, mcpCall(argsA))
	if again := pendingID(t, "asked again", err); again != x {
		t.Fatalf("asking again opened approval %s, want the pending %s", again, x)
	}
	digestA, err := requestDigest(mcpCall(argsA))
	if err != nil {
		t.Fatal(err)
	}
	if !findAudit(b.auditEntries(t), func(e audit.Entry) bool {
		return e.Kind == "approval-request" && e.Subject == n1.id.String() && e.Refs["approval"] == x && e.Refs["action"] == digestA
	}) {
		t.Fatal("the approval request was not audited")
	}
	admin := b.adminClientAs(t, identity.AdminID(b.td).String())
	list, err := admin.ListApprovals(ctx, &brokerv1.ListApprovalsRequest{State: "pending"})
	if err != nil || len(list.GetApprovals()) != 1 {
		t.Fatalf("pending approvals: %v %v", list, err)
	}
	if a := list.GetApprovals()[0]; a.GetId() != x || a.GetSubject() != n1.id.String() || a.GetDigest() != digestA ||
		a.GetAudience() != kindsGateway || !a.GetOnce() || a.GetRulesVersion() != b.rules().rulesVersion || a.GetRule() != 1 {
		t.Fatalf("listed %+v", a)
	}

	_, err = n1.c.RequestWrit(ctx, mcpCall(argsB))
	y := pendingID(t, "other arguments", err)
	if y == x {
		t.Fatal("other arguments share the approval")
	}
	_, err = n2.c.RequestWrit(ctx, mcpCall(argsA))
	if z := pendingID(t, "another node", err); z == x || z == y {
		t.Fatal("another node shares the approval")
	}
	_, err = n1.c.RequestWrit(ctx, &brokerv1.WritRequest{Mcp: mcpReq(argsA), Audience: kindsGateway}) // not single use
	if z := pendingID(t, "multi-use", err); z == x {
		t.Fatal("a multi-use writ shares the single-use writ's approval")
	}

	got, err := decide(b.adminClientAs(t, alice), x, true, "looks fine")
	if err != nil || got.GetState() != "approved" || got.GetDecidedBy() != alice || got.GetReason() != "looks fine" {
		t.Fatalf("approve: %+v %v", got, err)
	}
	_, err = n1.c.RequestWrit(ctx, mcpCall(argsB))
	if again := pendingID(t, "other arguments after the approval", err); again != y {
		t.Fatalf("other arguments: approval %s, want still %s", again, y)
	}
	resp, err := n1.c.RequestWrit(ctx, mcpCall(argsA))
	if err != nil {
		t.Fatalf("approved call: %v", err)
	}
	claims, err := artifact.Verify(resp.GetWrit(), artifact.VerifyOptions{Keys: b.writ.keySet(), Audience: kindsGateway,
		SVID: n1.leaf, Action: digestA, Kind: artifact.KindMCP, PCRs: "sha256:" + strings.Repeat("11", 32),
		Consume: func(string, time.Time) error { return nil }})
	if err != nil {
		t.Fatalf("the approved writ does not verify for the approved call: %v", err)
	}
	if !findAudit(b.auditEntries(t), func(e audit.Entry) bool {
		return e.Kind == "writ-issue" && e.Refs["jti"] == claims.ID && e.Refs["approval"] == x
	}) {
		t.Fatal("the writ's issue was not audited with its approval")
	}
	got, err = admin.GetApproval(ctx, &brokerv1.GetApprovalRequest{Id: x})
	if err != nil || got.GetState() != "used" || got.GetUsedJti() != claims.ID {
		t.Fatalf("after use: %+v %v", got, err)
	}

	_, err = n1.c.RequestWrit(ctx, mcpCall(argsA))
	if again := pendingID(t, "the same call again", err); again == x {
		t.Fatal("an approval was used twice")
	}
}

// requestDigest is the action digest of a writ request.
func requestDigest(req *brokerv1.WritRequest) (string, error) {
	act, err := requestAction(req)
	if err != nil {
		return "", err
	}
	return act.Digest()
}

// TestApprovalDecideRefused: only a listed approver who is not the
// requester decides, once, a pending approval; every refusal carries its
// reason code and is audited (approval-decide, deny). Reading is for the
// admin and the approvers, listing for the admin.
func TestApprovalDecideRefused(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("10m"), true)
	ctx := testCtx(t)
	n1 := b.nodeClient(t, "n1")
	_, err := n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	x := pendingID(t, "request", err)

	// A workload of n1 whose rule lists every /app/ workload as approver.
	entry := b.createEntry(t, goodEntry())
	svid := n1.workloadSVID(t, ctx, entry)
	_, err = n1.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(),
		Workload: &brokerv1.WorkloadSubject{EntryId: entry, Selectors: observed(), Svid: svid}})
	w := pendingID(t, "workload request", err)

	admin := identity.AdminID(b.td).String()
	for _, c := range []struct {
		name, caller, id, reason string
		decision                 brokerv1.ApprovalDecision
		note                     string
	}{
		{"the requesting node", n1.id.String(), x, ReasonApproverIsRequester, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
		{"another node", "spiffe://writ.test/node/n2", x, ReasonNotApprover, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
		{"the admin, not listed", admin, x, ReasonNotApprover, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
		{"a person not listed", bob, x, ReasonNotApprover, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
		{"the subject, listed by prefix", goodEntry().GetSpiffeId(), w, ReasonApproverIsRequester, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
		{"the subject's node", n1.id.String(), w, ReasonApproverIsRequester, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
		{"no decision", alice, x, ReasonApprovalDecisionInvalid, brokerv1.ApprovalDecision_APPROVAL_DECISION_UNSPECIFIED, ""},
		{"reason too long", alice, x, ReasonApprovalDecisionInvalid, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, strings.Repeat("x", 1025)},
		{"unknown approval", alice, "0190-nope", ReasonApprovalUnknown, brokerv1.ApprovalDecision_APPROVAL_DECISION_APPROVE, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			before := len(b.auditEntries(t))
			_, err := b.adminClientAs(t, c.caller).DecideApproval(ctx, &brokerv1.DecideApprovalRequest{Id: c.id, Decision: c.decision, Reason: c.note})
			wantRefused(t, c.name, err, c.reason)
			es := b.auditEntries(t)
			if len(es) != before+1 || es[before].Kind != "approval-decide" || es[before].Decision != "deny" ||
				es[before].Reason != c.reason || es[before].Subject != c.caller {
				t.Fatalf("refusal not audited as approval-decide %s by %s: %+v", c.reason, c.caller, es[before:])
			}
		})
	}
	if a, err := b.store.Approval(ctx, x); err != nil || a.State != store.ApprovalPending {
		t.Fatalf("after the refused decisions: %+v %v", a, err)
	}

	// Reading: the admin and an approver; not someone else. Listing: the admin.
	if _, err := b.adminClientAs(t, carol).GetApproval(ctx, &brokerv1.GetApprovalRequest{Id: x}); err != nil {
		t.Fatalf("an approver reads: %v", err)
	}
	if _, err := b.adminClientAs(t, admin).GetApproval(ctx, &brokerv1.GetApprovalRequest{Id: x}); err != nil {
		t.Fatalf("the admin reads: %v", err)
	}
	_, err = b.adminClientAs(t, bob).GetApproval(ctx, &brokerv1.GetApprovalRequest{Id: x})
	wantRefused(t, "bob reads", err, ReasonNotApprover)
	_, err = b.adminClientAs(t, alice).ListApprovals(ctx, &brokerv1.ListApprovalsRequest{})
	wantRefused(t, "alice lists", err, ReasonNotAdmin)
	_, err = b.adminClientAs(t, admin).ListApprovals(ctx, &brokerv1.ListApprovalsRequest{State: "bogus"})
	wantRefused(t, "list by a bogus state", err, ReasonApprovalStateInvalid)

	// carol, an approver by prefix, decides; then nobody decides again.
	if _, err := decide(b.adminClientAs(t, carol), x, false, "not today"); err != nil {
		t.Fatal(err)
	}
	if !findAudit(b.auditEntries(t), func(e audit.Entry) bool {
		return e.Kind == "approval-deny" && e.Subject == carol && e.Refs["approval"] == x && e.Refs["note"] == "not today"
	}) {
		t.Fatal("the denial was not audited")
	}
	for _, who := range []string{carol, alice} {
		_, err := decide(b.adminClientAs(t, who), x, true, "")
		wantRefused(t, "deciding again", err, ReasonApprovalNotPending)
	}
	_, err = n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	if id := refusedApproval(t, "denied call", err, ReasonApprovalDenied); id != x {
		t.Fatalf("denied by %s, want %s", id, x)
	}
	if !findAudit(b.auditEntries(t), func(e audit.Entry) bool {
		return e.Kind == "writ-deny" && e.Reason == ReasonApprovalDenied && e.Refs["approval"] == x
	}) {
		t.Fatal("the refusal was not audited with its approval")
	}

	// Another workload under /app/ may approve the workload's request.
	if _, err := decide(b.adminClientAs(t, "spiffe://writ.test/app/reviewer"), w, true, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := n1.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(),
		Workload: &brokerv1.WorkloadSubject{EntryId: entry, Selectors: observed(), Svid: svid}}); err != nil {
		t.Fatalf("approved workload request: %v", err)
	}
}

// TestApprovalExpiry: an approval not decided before it expires cannot be
// decided (approval_expired), nor one approved but not used in time be
// used; the request is refused approval_expired once, and the next one
// opens a new approval.
func TestApprovalExpiry(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("1s"), true)
	ctx := testCtx(t)
	n1 := b.nodeClient(t, "n1")
	_, err := n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	x := pendingID(t, "request a", err)
	_, err = n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/b.txt"}`))
	y := pendingID(t, "request b", err)
	if _, err := decide(b.adminClientAs(t, alice), y, true, ""); err != nil {
		t.Fatal(err)
	}
	admin := b.adminClientAs(t, identity.AdminID(b.td).String())
	for _, id := range []string{x, y} {
		for {
			a, err := admin.GetApproval(ctx, &brokerv1.GetApprovalRequest{Id: id})
			if err != nil {
				t.Fatal(err)
			}
			if a.GetState() == "expired" {
				break
			}
			select {
			case <-ctx.Done():
				t.Fatalf("approval %s did not expire: %+v", id, a)
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	_, err = decide(b.adminClientAs(t, alice), x, true, "")
	wantRefused(t, "deciding an expired approval", err, ReasonApprovalExpired)

	for args, id := range map[string]string{`{"path":"/tmp/a.txt"}`: x, `{"path":"/tmp/b.txt"}`: y} {
		_, err = n1.c.RequestWrit(ctx, mcpCall(args))
		if got := refusedApproval(t, "expired "+args, err, ReasonApprovalExpired); got != id {
			t.Fatalf("%s: expired approval %s, want %s", args, got, id)
		}
		_, err = n1.c.RequestWrit(ctx, mcpCall(args))
		if got := pendingID(t, "after expiry "+args, err); got == id {
			t.Fatalf("%s: the expired approval %s is pending again", args, id)
		}
	}
}

// TestApprovalRulesVersion: an approval is bound to the rules it was
// requested under. With other rules loaded it does not match (a new
// approval is requested); with the same rules again it does.
func TestApprovalRulesVersion(t *testing.T) {
	dir := t.TempDir()
	rules := approvalRules("10m")
	b := startApprovalBroker(t, dir, rules, true)
	ctx := testCtx(t)
	_, err := b.nodeClient(t, "n1").c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	x := pendingID(t, "request", err)
	if _, err := decide(b.adminClientAs(t, alice), x, true, ""); err != nil {
		t.Fatal(err)
	}
	b.stop(t)

	b = startApprovalBroker(t, dir, rules+"    - subject: spiffe://writ.test/node/n9\n      kind: exec\n      executables: [any]\n", false)
	_, err = b.nodeClient(t, "n1").c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	if y := pendingID(t, "under other rules", err); y == x {
		t.Fatal("an approval granted under other rules matched")
	}
	b.stop(t)

	b = startApprovalBroker(t, dir, rules, false)
	if _, err := b.nodeClient(t, "n1").c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`)); err != nil {
		t.Fatalf("under the same rules again: %v", err)
	}
}

// TestApprovalConcurrentUse: requests racing for one approval: exactly one
// gets a writ; the others need a new approval.
func TestApprovalConcurrentUse(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("10m"), true)
	ctx := testCtx(t)
	n1 := b.nodeClient(t, "n1")
	_, err := n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	x := pendingID(t, "request", err)
	if _, err := decide(b.adminClientAs(t, alice), x, true, ""); err != nil {
		t.Fatal(err)
	}
	const n = 6
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { _, errs[i] = n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`)) })
	}
	wg.Wait()
	issued := 0
	for _, err := range errs {
		if err == nil {
			issued++
			continue
		}
		if id := pendingID(t, "a racing request", err); id == x {
			t.Fatal("a racing request was told the used approval is pending")
		}
	}
	if issued != 1 {
		t.Fatalf("%d writs issued on one approval, want 1", issued)
	}
}

// TestApprovalWaitReleased: a request that waits at the broker is
// released by a decision made through the API while it waits, and, with
// no wake-up (a decision another replica stored), by reading the store;
// a denial releases it refused.
func TestApprovalWaitReleased(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("10m"), true)
	ctx := testCtx(t)
	n1 := b.nodeClient(t, "n1")
	admin := b.adminClientAs(t, identity.AdminID(b.td).String())
	waitPending := func(digest string) string {
		for {
			list, err := admin.ListApprovals(ctx, &brokerv1.ListApprovalsRequest{State: "pending"})
			if err != nil {
				t.Fatal(err)
			}
			for _, a := range list.GetApprovals() {
				if a.GetDigest() == digest {
					return a.GetId()
				}
			}
			select {
			case <-ctx.Done():
				t.Fatal("no pending approval appeared")
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	for _, c := range []struct {
		name   string
		args   string
		decide func(id string) error
		reason string
	}{
		{"approved through the API", `{"path":"/tmp/a.txt"}`, func(id string) error {
			_, err := decide(b.adminClientAs(t, alice), id, true, "")
			return err
		}, ""},
		{"approved by another replica", `{"path":"/tmp/b.txt"}`, func(id string) error {
			return b.store.DecideApproval(ctx, id, store.ApprovalApproved, alice, "", time.Now())
		}, ""},
		{"denied through the API", `{"path":"/tmp/c.txt"}`, func(id string) error {
			_, err := decide(b.adminClientAs(t, carol), id, false, "no")
			return err
		}, ReasonApprovalDenied},
	} {
		t.Run(c.name, func(t *testing.T) {
			req := mcpCall(c.args)
			req.ApprovalWaitSeconds = 600 // capped by the call's deadline
			done := make(chan error, 1)
			go func() {
				_, err := n1.c.RequestWrit(ctx, req)
				done <- err
			}()
			digest, err := requestDigest(req)
			if err != nil {
				t.Fatal(err)
			}
			id := waitPending(digest)
			if err := c.decide(id); err != nil {
				t.Fatal(err)
			}
			err = <-done
			if c.reason == "" && err != nil {
				t.Fatalf("the waiting request: %v", err)
			}
			if c.reason != "" {
				if got := refusedApproval(t, "the waiting request", err, c.reason); got != id {
					t.Fatalf("refused about %s, want %s", got, id)
				}
			}
		})
	}
}

// TestApprovalConfig: approvers are people of the trust domain: never a
// node, the broker, another trust domain or everyone; the default is the
// admin; the TTL is bounded.
func TestApprovalConfig(t *testing.T) {
	r, err := compileApproval(&ApprovalConfig{}, "writ.test")
	if err != nil || len(r.approvers) != 1 || r.approvers[0] != "spiffe://writ.test/admin" || r.ttl != DefaultApprovalTTL {
		t.Fatalf("defaults: %+v %v", r, err)
	}
	for _, bad := range []ApprovalConfig{
		{Approvers: []string{"spiffe://writ.test/node/n1"}},
		{Approvers: []string{"spiffe://writ.test/node/*"}},
		{Approvers: []string{"spiffe://writ.test/*"}},
		{Approvers: []string{"spiffe://other.test/person/alice"}},
		{Approvers: []string{"spiffe://writ.test/broker"}},
		{Approvers: []string{"alice"}},
		{TTL: 25 * time.Hour},
		{TTL: time.Millisecond},
	} {
		if _, err := compileApproval(&bad, "writ.test"); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	r, err = compileApproval(&ApprovalConfig{Approvers: []string{alice, "spiffe://writ.test/ops/*"}}, "writ.test")
	if err != nil {
		t.Fatal(err)
	}
	for id, want := range map[string]bool{alice: true, bob: false, carol: true, "spiffe://writ.test/ops": false,
		"spiffe://writ.test/opsx/eve": false, "spiffe://writ.test/node/n1": false} {
		if got := isApprover(r.approvers, spiffeid.RequireFromString(id)); got != want {
			t.Errorf("%s approver: %v, want %v", id, got, want)
		}
	}
}

// TestApprovalPendingBound: a node cannot bury the approvers under
// pending approvals: beyond maxPendingApprovals it is refused
// too_many_pending (audited), without a new approval; another node is
// not affected.
func TestApprovalPendingBound(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("10m"), true)
	ctx := testCtx(t)
	n1, n2 := b.nodeClient(t, "n1"), b.nodeClient(t, "n2")
	for i := range maxPendingApprovals {
		_, err := n1.c.RequestWrit(ctx, mcpCall(fmt.Sprintf(`{"path":"/tmp/%d"}`, i)))
		pendingID(t, "request", err)
	}
	_, err := n1.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/one-more"}`))
	wantRefused(t, "one more", err, ReasonTooManyPending)
	if es := b.auditEntries(t); es[len(es)-1].Kind != "writ-deny" || es[len(es)-1].Reason != ReasonTooManyPending {
		t.Fatalf("not audited: %+v", es[len(es)-1])
	}
	if n, err := b.store.PendingApprovals(ctx, n1.id.String(), time.Now()); err != nil || n != maxPendingApprovals {
		t.Fatalf("pending approvals %d %v, want %d", n, err, maxPendingApprovals)
	}
	_, err = n2.c.RequestWrit(ctx, mcpCall(`{"path":"/tmp/one-more"}`))
	pendingID(t, "another node", err)
}

// TestApprovalWaitRechecks: a request approved while it waited is checked
// again as things stand then: its node, revoked meanwhile, gets no writ,
// and the approval is not spent.
func TestApprovalWaitRechecks(t *testing.T) {
	b := startApprovalBroker(t, t.TempDir(), approvalRules("10m"), true)
	ctx := testCtx(t)
	n1 := b.nodeClient(t, "n1")
	req := mcpCall(`{"path":"/tmp/a.txt"}`)
	req.ApprovalWaitSeconds = 600
	done := make(chan error, 1)
	go func() {
		_, err := n1.c.RequestWrit(ctx, req)
		done <- err
	}()
	admin := b.adminClientAs(t, identity.AdminID(b.td).String())
	var id string
	for id == "" {
		list, err := admin.ListApprovals(ctx, &brokerv1.ListApprovalsRequest{State: "pending"})
		if err != nil {
			t.Fatal(err)
		}
		if len(list.GetApprovals()) == 1 {
			id = list.GetApprovals()[0].GetId()
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("no pending approval appeared")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if _, err := admin.RevokeNode(ctx, &brokerv1.RevokeNodeRequest{NodeId: "n1", Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := decide(b.adminClientAs(t, alice), id, true, ""); err != nil {
		t.Fatal(err)
	}
	wantRefused(t, "the waiting request of a node revoked meanwhile", <-done, ReasonNodeRevoked)
	if a, err := admin.GetApproval(ctx, &brokerv1.GetApprovalRequest{Id: id}); err != nil || a.GetState() != "approved" {
		t.Fatalf("the approval: %+v %v, want approved and unused", a, err)
	}
}
