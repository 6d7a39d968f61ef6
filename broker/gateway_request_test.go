package broker

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

const gatewayTestRules = "    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
	"      when: 'action.tool == \"read_file\"'\n      audiences: [spiffe://writ.test/gateway/mcp]\n" +
	"    - subject: spiffe://writ.test/app/*\n      kind: mcp\n      when: 'true'\n      audiences: [spiffe://writ.test/gateway/mcp]\n" +
	"gateways:\n  - id: spiffe://writ.test/gateway/mcp\n    kinds: [mcp]\n"

// issuedSVID is an X.509-SVID for id from the broker's CA, recorded as
// issued to node fp (as node and workload SVID issuance record them).
func (b *testBroker) issuedSVID(t *testing.T, id spiffeid.ID, fp string) *x509.Certificate {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := b.ca.IssueX509SVID(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.store.PutSVID(context.Background(), store.SVID{Serial: fmt.Sprintf("%x", cert.SerialNumber), NodeID: fp,
		SPIFFEID: id.String(), ResultID: "result-" + fp, IssuedAt: time.Now(), NotAfter: cert.NotAfter}); err != nil {
		t.Fatal(err)
	}
	return cert
}

// TestRequestForCaller: a listed gateway gets a single-use writ for its
// caller (sub and cnf the caller's, aud the gateway) when the caller's SVID
// is one the broker issued to a node in good standing and the rules (and
// the caller's entries) allow the call; each attack is refused with its
// reason code and audited.
func TestRequestForCaller(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, gatewayTestRules)
	nodeCtx, nodeID := b.passedNode(t, "n1")
	nodeLeaf := b.issuedSVID(t, nodeID, "n1")
	e := goodEntry()
	e.Actions = []string{"mcp:read_file"}
	b.createEntry(t, e)
	app := spiffeid.RequireFromString(e.GetSpiffeId())
	appLeaf := b.issuedSVID(t, app, "n1")
	gw := spiffeid.RequireFromString("spiffe://writ.test/gateway/mcp")
	gwCtx := b.as(t, gw)

	unrecorded, err := b.ca.IssueX509SVID(nodeID, nodeLeaf.PublicKey, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	foreignKey, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: nodeLeaf.SerialNumber, Subject: pkix.Name{CommonName: "x"}, URIs: nodeLeaf.URIs,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature}
	foreign, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, foreignKey.Public(), foreignKey)
	if err != nil {
		t.Fatal(err)
	}
	req := func(tool string, chain ...[]byte) *brokerv1.WritRequest {
		return &brokerv1.WritRequest{Mcp: &brokerv1.MCPAction{Server: "spiffe://writ.test/mcp/files", Method: "tools/call", Tool: tool,
			Arguments: []byte(`{"path":"/tmp/a"}`)}, Caller: &brokerv1.CallerSubject{Svid: chain}}
	}
	with := func(r *brokerv1.WritRequest, edit func(*brokerv1.WritRequest)) *brokerv1.WritRequest {
		edit(r)
		return r
	}

	for _, c := range []struct {
		name string
		ctx  context.Context
		req  *brokerv1.WritRequest
		sub  string // "" for a refusal
		leaf *x509.Certificate
		why  string
	}{
		{"node caller", gwCtx, req("read_file", nodeLeaf.Raw), nodeID.String(), nodeLeaf, ""},
		{"workload caller", gwCtx, req("read_file", appLeaf.Raw), app.String(), appLeaf, ""},
		{"no rule", gwCtx, req("write_file", nodeLeaf.Raw), "", nil, ReasonActionDenied},
		{"not among the entry's actions", gwCtx, req("write_file", appLeaf.Raw), "", nil, ReasonEntryActionDenied},
		{"an unlisted gateway", b.as(t, spiffeid.RequireFromString("spiffe://writ.test/gateway/other")), req("read_file", nodeLeaf.Raw), "", nil, ReasonGatewayNotAllowed},
		{"the node itself relaying", nodeCtx, req("read_file", nodeLeaf.Raw), "", nil, ReasonGatewayNotAllowed},
		{"a certificate never issued", gwCtx, req("read_file", unrecorded.Raw), "", nil, ReasonCallerSVIDUnknown},
		{"another CA's, same serial", gwCtx, req("read_file", foreign), "", nil, ReasonCallerSVIDInvalid},
		{"no chain", gwCtx, req("read_file"), "", nil, ReasonCallerSVIDInvalid},
		{"another audience", gwCtx, with(req("read_file", nodeLeaf.Raw), func(r *brokerv1.WritRequest) { r.Audience = nodeID.String() }), "", nil, ReasonAudienceDenied},
		{"a parent", gwCtx, with(req("read_file", nodeLeaf.Raw), func(r *brokerv1.WritRequest) { r.Parent = "x" }), "", nil, ReasonParentInvalid},
		{"with a workload", gwCtx, with(req("read_file", nodeLeaf.Raw), func(r *brokerv1.WritRequest) { r.Workload = &brokerv1.WorkloadSubject{} }), "", nil, ReasonActionInvalid},
		{"exec", gwCtx, &brokerv1.WritRequest{Exec: &brokerv1.ExecAction{Argv: []string{"/bin/true"}}, Caller: &brokerv1.CallerSubject{Svid: [][]byte{nodeLeaf.Raw}}}, "", nil, ReasonActionInvalid},
	} {
		t.Run(c.name, func(t *testing.T) {
			resp, err := b.RequestWrit(c.ctx, c.req)
			if c.sub == "" {
				if got := brokerv1.ReasonOf(err); got != c.why {
					t.Fatalf("%v (reason %q), want %s", err, got, c.why)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			claims, err := artifact.VerifySignature(resp.GetWrit(), b.writ.keySet())
			switch {
			case err != nil:
				t.Fatal(err)
			case claims.Subject != c.sub || claims.Audience != gw.String() || !claims.Once || claims.Parent != "":
				t.Fatalf("claims %+v", claims)
			case claims.Cnf.X5TS256 != artifact.Thumbprint(c.leaf) || claims.Att.Node != nodeID.String() || claims.Att.Result != "result-n1":
				t.Fatalf("claims %+v", claims)
			}
		})
	}

	if _, err := b.store.SetNodeState(context.Background(), "n1", store.NodeRevoked, "test", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.RequestWrit(gwCtx, req("read_file", appLeaf.Raw)); brokerv1.ReasonOf(err) != ReasonNodeRevoked {
		t.Fatalf("a revoked node's workload: %v", err)
	}

	issued, denied := 0, map[string]int{}
	for _, en := range b.auditEntries(t) {
		switch {
		case en.Kind == "writ-issue" && en.Refs["gateway"] == gw.String() && en.Refs["node"] == nodeID.String():
			issued++
		case en.Kind == "writ-deny":
			denied[en.Reason]++
		}
	}
	if issued != 2 || denied[ReasonCallerSVIDUnknown] != 1 || denied[ReasonGatewayNotAllowed] != 2 || denied[ReasonNodeRevoked] != 1 {
		t.Fatalf("audited %d issues with refs gateway and node, refusals %v", issued, denied)
	}
}

// TestPermittedTools: a listed gateway learns which tools its caller may
// call: the rules' conditions with the arguments unknown, and the
// caller's entries; an unlisted gateway learns nothing.
func TestPermittedTools(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, gatewayTestRules)
	_, nodeID := b.passedNode(t, "n1")
	nodeLeaf := b.issuedSVID(t, nodeID, "n1")
	e := goodEntry()
	e.Actions = []string{"mcp:search", "exec:sha256:" + fmt.Sprintf("%064x", 1)}
	b.createEntry(t, e)
	appLeaf := b.issuedSVID(t, spiffeid.RequireFromString(e.GetSpiffeId()), "n1")
	gwCtx := b.as(t, spiffeid.RequireFromString("spiffe://writ.test/gateway/mcp"))
	tools := []string{"read_file", "write_file", "search"}
	for _, c := range []struct {
		leaf *x509.Certificate
		want []string
	}{
		{nodeLeaf, []string{"read_file"}},
		{appLeaf, []string{"search"}}, // the rule allows all; the entry lists only search
	} {
		resp, err := b.PermittedTools(gwCtx, &brokerv1.PermittedToolsRequest{Server: "spiffe://writ.test/mcp/files",
			Caller: &brokerv1.CallerSubject{Svid: [][]byte{c.leaf.Raw}}, Tools: tools})
		if err != nil || !slices.Equal(resp.GetTools(), c.want) {
			t.Errorf("%s: %v %v, want %v", c.leaf.URIs[0], resp.GetTools(), err, c.want)
		}
	}
	_, err := b.PermittedTools(b.as(t, spiffeid.RequireFromString("spiffe://writ.test/gateway/other")),
		&brokerv1.PermittedToolsRequest{Server: "s", Caller: &brokerv1.CallerSubject{Svid: [][]byte{nodeLeaf.Raw}}, Tools: tools})
	if brokerv1.ReasonOf(err) != ReasonGatewayNotAllowed {
		t.Fatalf("an unlisted gateway: %v", err)
	}
	_, err = b.PermittedTools(gwCtx, &brokerv1.PermittedToolsRequest{Server: "s", Caller: &brokerv1.CallerSubject{Svid: [][]byte{nodeLeaf.Raw}},
		Tools: make([]string, maxListTools+1)})
	if brokerv1.ReasonOf(err) != ReasonActionInvalid {
		t.Fatalf("too many tools: %v", err)
	}
}
