package broker

import (
	"testing"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// FuzzDecideApproval: whatever the request (id, decision, reason) and
// whoever the caller, DecideApproval never panics, and succeeds only for a
// valid decision by a listed approver who is not the requester.
func FuzzDecideApproval(f *testing.F) {
	b := newTestBroker(f, f.TempDir(), 1, approvalRules("10m"))
	ctx, node := b.passedNode(f, "n1")
	_, err := b.RequestWrit(ctx, mcpCall(`{"path":"/tmp/a.txt"}`))
	id := brokerv1.MetadataOf(err)[MetaApprovalID]
	if brokerv1.ReasonOf(err) != ReasonApprovalPending || id == "" {
		f.Fatalf("request: %v", err)
	}
	f.Add(id, int32(1), "ok", "/person/alice")
	f.Add(id, int32(2), "no", "/ops/carol")
	f.Add(id, int32(1), "", "/person/bob")
	f.Add(id, int32(1), "", "/node/n1")
	f.Add(id, int32(7), "", "/person/alice")
	f.Add("nope", int32(1), "\xff", "/admin")
	f.Fuzz(func(t *testing.T, id string, decision int32, reason, path string) {
		caller, err := spiffeid.FromPath(b.td, path)
		if err != nil {
			return
		}
		_, err = (&admin{b: b.Broker}).DecideApproval(b.as(t, caller),
			&brokerv1.DecideApprovalRequest{Id: id, Decision: brokerv1.ApprovalDecision(decision), Reason: reason})
		if err != nil {
			if brokerv1.ReasonOf(err) == "" {
				t.Fatalf("a refusal without a reason code: %v", err)
			}
			return
		}
		if decision != 1 && decision != 2 || len(reason) > maxApprovalReason || !utf8.ValidString(reason) ||
			caller == node || !isApprover([]string{alice, "spiffe://writ.test/ops/*"}, caller) {
			t.Fatalf("decided by %s: decision %d, reason %q", caller, decision, reason)
		}
	})
}
