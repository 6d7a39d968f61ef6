package broker

import (
	"testing"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
)

// TestResolveNodePrefix: the admin API takes a node as writ node list
// prints it (a shortened ID with "…"), its whole ID, its SPIFFE ID or a
// unique prefix; a prefix two nodes share is refused node_ambiguous and
// never resolved to either (the attack: an operator revoking "abcd…"
// must not revoke whichever node sorts first); an unknown or too short
// prefix is node_unknown.
func TestResolveNodePrefix(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	one := "f7380b73853fc336" + "11111111111111111111111111111111111111111111111111"
	twinA := "abcd0000" + "22222222222222222222222222222222222222222222222222222222"
	twinB := "abcd0000" + "33333333333333333333333333333333333333333333333333333333"
	for _, id := range []string{one, twinA, twinB} {
		b.passedNode(t, id)
	}
	a := &admin{b: b.Broker}
	ctx := b.adminCtx(t)
	for _, name := range []string{one, "spiffe://writ.test/node/" + one, one[:16] + "…", one[:16], one[:4], one[:16] + "...", twinA[:9]} {
		want := one
		if name == twinA[:9] {
			want = twinA
		}
		n, err := a.GetNode(ctx, &brokerv1.GetNodeRequest{NodeId: name})
		if err != nil || n.GetNodeId() != want {
			t.Fatalf("%q: got %q, %v; want %s", name, n.GetNodeId(), err, want)
		}
	}
	for _, name := range []string{"abcd", "abcd0000…"} {
		_, err := a.GetNode(ctx, &brokerv1.GetNodeRequest{NodeId: name})
		wantRefused(t, "ambiguous "+name, err, string(ReasonNodeAmbiguous))
		_, err = a.RevokeNode(ctx, &brokerv1.RevokeNodeRequest{NodeId: name})
		wantRefused(t, "revoke ambiguous "+name, err, string(ReasonNodeAmbiguous))
	}
	for _, id := range []string{twinA, twinB} {
		if n, err := b.store.Node(ctx, id); err != nil || n.State == store.NodeRevoked {
			t.Fatalf("an ambiguous revoke touched %s: %v %v", id, n.State, err)
		}
	}
	for _, name := range []string{"f73", "0000", "F7380B73", "f7380b73853fc337…", ""} {
		_, err := a.GetNode(ctx, &brokerv1.GetNodeRequest{NodeId: name})
		wantRefused(t, "unknown "+name, err, string(attest.ReasonNodeUnknown))
	}
}
