package broker

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/metadata"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// hopRules: an exec writ (rule agent) may have descendants only under
// rules tool (tool "search") and fetch; a tool call's only under fetch
// (its scope is [tool fetch] ∩ [fetch]); an http writ's none. Rule
// anytool allows any tool call, but agent does not list it.
const hopRules = `    - name: agent
      subject: spiffe://writ.test/node/*
      kind: exec
      executables: [any]
      children: [tool, fetch]
    - name: anytool
      subject: spiffe://writ.test/node/*
      kind: mcp
      when: "true"
      children: []
    - name: tool
      subject: spiffe://writ.test/node/*
      kind: mcp
      when: 'action.tool == "search"'
      children: [fetch]
    - name: fetch
      subject: spiffe://writ.test/node/*
      kind: http
      when: "true"
      children: []
`

func toolReq(tool string) *brokerv1.MCPAction {
	return &brokerv1.MCPAction{Server: "spiffe://writ.test/mcp/search", Method: "tools/call", Tool: tool, Arguments: []byte(`{"q":"x"}`)}
}

func issue(t *testing.T, b *testBroker, ctx context.Context, req *brokerv1.WritRequest) string {
	t.Helper()
	resp, err := b.RequestWrit(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetJti()
}

// TestRequestWritNarrowing: a descendant is issued only under a rule its
// ancestors' scopes list; the rule chosen is the first within the scope
// (not the first that allows), and the scope is stored with the writ.
func TestRequestWritNarrowing(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, hopRules)
	ctx, _ := b.passedNode(t, "aaaa")
	exec := issue(t, b, ctx, &brokerv1.WritRequest{Exec: execReq()})
	call := issue(t, b, ctx, &brokerv1.WritRequest{Mcp: toolReq("search"), Parent: exec})
	w, err := b.store.IssuedWrit(context.Background(), call)
	if err != nil || w.Rule != "tool" || !slices.Equal(w.Scope, []string{"fetch"}) || w.Depth != 1 || w.Parent != exec {
		t.Fatalf("tool call: %+v, %v; want rule tool (anytool comes first but is not in the scope), scope [fetch], depth 1", w, err)
	}
	fetch := issue(t, b, ctx, &brokerv1.WritRequest{Http: httpReq(), Parent: call})

	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Mcp: toolReq("delete"), Parent: exec})
	wantRefused(t, "a tool call only a rule outside the scope allows", err, ReasonParentScopeDenied)
	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: exec})
	wantRefused(t, "a sub-agent exec under a writ whose scope lists only tool", err, ReasonParentScopeDenied)
	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Mcp: toolReq("search"), Parent: call})
	wantRefused(t, "a tool call under a tool call: the scope narrowed to [fetch]", err, ReasonParentScopeDenied)
	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Http: httpReq(), Parent: fetch})
	wantRefused(t, "anything under a writ whose scope is []", err, ReasonParentScopeDenied)
}

// TestRequestWritDepth: writ.max_depth bounds the chain of parents.
func TestRequestWritDepth(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules+"  max_depth: 2\n")
	ctx, _ := b.passedNode(t, "aaaa")
	parent := ""
	for depth := 0; depth <= 2; depth++ {
		parent = issue(t, b, ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: parent})
	}
	_, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: parent})
	wantRefused(t, "a writ 3 deep with max_depth 2", err, ReasonLineageTooDeep)
}

// TestRequestWritExpiredParentFromAncestry: an expired parent is accepted
// only when the node agent names it from the caller's ancestry, within
// the lineage retention, not revoked, and issued on the same node.
func TestRequestWritExpiredParentFromAncestry(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctxA, sid := b.passedNode(t, "aaaa")
	ctxB, sidB := b.passedNode(t, "bbbb")
	put := func(jti, node string, expired time.Duration) {
		t.Helper()
		if err := b.store.PutIssuedWrit(context.Background(), store.IssuedWrit{JTI: jti, Subject: node, Node: node,
			IssuedAt: time.Now().Add(-expired - time.Minute), ExpiresAt: time.Now().Add(-expired)}); err != nil {
			t.Fatal(err)
		}
	}
	put("recent", sid.String(), time.Minute)
	put("old", sid.String(), DefaultLineageRetain+time.Minute)
	put("revoked", sid.String(), time.Minute)
	put("other-node", sidB.String(), time.Minute)
	if _, err := b.store.RevokeWrit(context.Background(), "revoked", "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	vouch := func(ctx context.Context) context.Context {
		return metadata.NewIncomingContext(ctx, metadata.Pairs(brokerv1.LineageMetadata, brokerv1.LineageAncestry))
	}

	_, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Parent: "recent"})
	wantRefused(t, "an expired parent named by the caller", err, ReasonParentExpired)
	_, err = b.RequestWrit(metadata.NewIncomingContext(ctxA, metadata.Pairs(brokerv1.LineageMetadata, "yes")),
		&brokerv1.WritRequest{Exec: execReq(), Parent: "recent"})
	wantRefused(t, "another metadata value", err, ReasonParentExpired)
	_, err = b.RequestWrit(vouch(ctxA), &brokerv1.WritRequest{Exec: execReq(), Parent: "old"})
	wantRefused(t, "expired longer than the retention ago", err, ReasonParentExpired)
	_, err = b.RequestWrit(vouch(ctxA), &brokerv1.WritRequest{Exec: execReq(), Parent: "revoked"})
	wantRefused(t, "a revoked expired parent", err, ReasonParentRevoked)
	_, err = b.RequestWrit(vouch(ctxA), &brokerv1.WritRequest{Exec: execReq(), Parent: "other-node"})
	wantRefused(t, "another node's expired writ", err, ReasonParentInvalid)
	_, err = b.RequestWrit(vouch(ctxB), &brokerv1.WritRequest{Exec: execReq(), Parent: "recent"})
	wantRefused(t, "node b vouching for node a's writ", err, ReasonParentInvalid)

	child := issue(t, b, vouch(ctxA), &brokerv1.WritRequest{Exec: execReq(), Parent: "recent"})
	if w, err := b.store.IssuedWrit(context.Background(), child); err != nil || w.Parent != "recent" || w.Depth != 1 {
		t.Fatalf("child of a vouched expired parent: %+v, %v", w, err)
	}
}

// TestRevokeWritCascade: revoking a writ refuses its descendants' use at
// the broker (writ_revoked) and any new descendant (parent_revoked), is
// audited, and only the admin may do it.
func TestRevokeWritCascade(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules+
		"      audiences: [\"spiffe://writ.test/gateway/*\"]\n")
	ctx, sid := b.passedNode(t, "aaaa")
	const gw = "spiffe://writ.test/gateway/mcp"
	root := issue(t, b, ctx, &brokerv1.WritRequest{Exec: execReq()})
	childResp, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: root, Audience: gw, Once: true})
	if err != nil {
		t.Fatal(err)
	}
	grandchild := issue(t, b, ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: childResp.GetJti()})
	sibling := issue(t, b, ctx, &brokerv1.WritRequest{Exec: execReq()})
	a := &admin{b: b.Broker}

	_, err = a.RevokeWrit(ctx, &brokerv1.RevokeWritRequest{Jti: root})
	wantRefused(t, "a node revoking a writ", err, ReasonNotAdmin)
	_, err = a.RevokeWrit(b.as(t, identity.AdminID(b.td)), &brokerv1.RevokeWritRequest{Jti: "made-up"})
	wantRefused(t, "an unknown jti", err, ReasonWritUnknown)
	if w, _ := b.store.IssuedWrit(context.Background(), root); !w.RevokedAt.IsZero() {
		t.Fatal("revoked by a refused call")
	}

	resp, err := a.RevokeWrit(b.as(t, identity.AdminID(b.td)), &brokerv1.RevokeWritRequest{Jti: root, Reason: "agent compromised"})
	if err != nil {
		t.Fatal(err)
	}
	got := slices.Sorted(slices.Values(resp.GetRevokedJtis()))
	want := slices.Sorted(slices.Values([]string{root, childResp.GetJti(), grandchild}))
	if !slices.Equal(got, want) {
		t.Fatalf("revoked %v, want %v", got, want)
	}
	_, err = b.ConsumeWrit(b.as(t, spiffeid.RequireFromString(gw)), &brokerv1.ConsumeWritRequest{Writ: childResp.GetWrit()})
	wantRefused(t, "consuming a revoked writ's child", err, ReasonWritRevoked)
	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: grandchild})
	wantRefused(t, "a new descendant of a revoked writ", err, ReasonParentRevoked)
	if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(), Parent: sibling}); err != nil {
		t.Fatalf("an unrelated writ's child: %v", err)
	}
	entries := b.auditEntries(t)
	var found bool
	for _, e := range entries {
		if e.Kind == "writ-revoke" && e.Refs["jti"] == root && e.Refs["descendants"] == "2" && e.Refs["revoke_reason"] == "agent compromised" {
			found = true
		}
	}
	if !found {
		t.Fatal("no writ-revoke entry with jti, descendants 2 and the reason")
	}

	// The snapshot a new subscriber gets lists them, on their node's
	// event, with their expiry.
	snap, _, cancel, err := b.snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer cancel()
	var listed []string
	for _, ev := range snap {
		if len(ev.GetRevokedJtis()) != len(ev.GetRevokedExpiryUnix()) {
			t.Fatalf("snapshot event with %d jtis and %d expiries", len(ev.GetRevokedJtis()), len(ev.GetRevokedExpiryUnix()))
		}
		if len(ev.GetRevokedJtis()) > 0 && (ev.GetSpiffeId() != sid.String() || ev.GetState() != string(store.NodeAttested)) {
			t.Fatalf("revocations on %+v; want node %s, its state attested", ev, sid)
		}
		listed = append(listed, ev.GetRevokedJtis()...)
		for _, exp := range ev.GetRevokedExpiryUnix() {
			if exp <= time.Now().Unix() {
				t.Fatalf("expiry %d in the past", exp)
			}
		}
	}
	if slices.Sort(listed); !slices.Equal(listed, want) {
		t.Fatalf("snapshot lists %v, want %v", listed, want)
	}
}

// TestRuleNamesValidated: a name given twice, children naming no rule, a
// negative max_depth and a retention beyond 7 days are configuration
// errors.
func TestRuleNamesValidated(t *testing.T) {
	for name, rules := range map[string]string{
		"duplicate name": "    - name: a\n      subject: spiffe://writ.test/node/*\n      kind: exec\n      executables: [any]\n" +
			"    - name: a\n      subject: spiffe://writ.test/node/*\n      kind: mcp\n      when: \"true\"\n",
		"unknown child":  "    - name: a\n      subject: spiffe://writ.test/node/*\n      kind: exec\n      executables: [any]\n      children: [b]\n",
		"negative depth": defaultRules + "  max_depth: -1\n",
		"long retention": defaultRules + "  lineage_retention: 200h\n",
	} {
		if _, err := LoadConfig(writeTestConfig(t, t.TempDir(), 1, rules), false); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadConfig(writeTestConfig(t, t.TempDir(), 1, hopRules), false); err != nil {
		t.Fatalf("valid names and children: %v", err)
	}
}
