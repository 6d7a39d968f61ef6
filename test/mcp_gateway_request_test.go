package test

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/jsonrpc"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/mcpgate"
)

// brokerAs is a broker client authenticated (mTLS) as svid.
func (e *mcpEnv) brokerAs(t testing.TB, svid *x509svid.SVID) brokerv1.BrokerClient {
	t.Helper()
	conf := tlsconfig.MTLSClientConfig(svid, e.bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(e.b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return brokerv1.NewBrokerClient(conn)
}

// workloadSVID creates an entry for id on the node (allowing actions) and
// has the broker issue its X.509-SVID over the node's mTLS, as the agent
// does for a workload it attested.
func (e *mcpEnv) workloadSVID(t *testing.T, id string, actions ...string) *x509svid.SVID {
	t.Helper()
	entry := e.createEntries(t, []string{id}, [][]string{{"uid:4242"}}, actions...)[0]
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.brokerAs(t, e.node).SignWorkloadSVID(ctx(t), &brokerv1.SignWorkloadSVIDRequest{EntryId: entry,
		Selectors: []*brokerv1.Selector{{Type: "unix", Value: "uid:4242"}}, Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.ParseRaw(slices.Concat(resp.GetSvid()...), mustPKCS8(t, key))
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

func mustPKCS8(t *testing.T, key any) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func detailOf(err error) string {
	var we *jsonrpc.Error
	if !errors.As(err, &we) {
		return ""
	}
	return string(we.Data)
}

// TestMCPGatewayRequestsWrit (ADR 0028): a caller that presents no writ
// gets one the gateway asks the broker for, for the caller's SVID chain
// and exactly this call; it is verified and spent as a presented one, and
// its jti is the parent the tool sees. A call no rule allows is refused
// with the broker's reason and detail and never reaches the server. The
// broker refuses a gateway it does not list, a node relaying a chain as if
// it were a gateway, a forged or foreign caller chain from the listed
// gateway, and a revoked node's caller.
func TestMCPGatewayRequestsWrit(t *testing.T) {
	e := newMCPEnv(t)
	e.requestWrits = true
	gwDir := t.TempDir()
	url := e.startGateway(t, gwDir, time.Now)
	cs := e.connect(t, url, e.node)
	args := map[string]any{"path": "/tmp/a.txt"}

	// Allowed without a writ.
	if _, err := call(t, cs, "read_file", args, ""); err != nil || e.calls.Load() != 1 {
		t.Fatalf("a call without a writ, allowed by the rules: %v (server calls %d)", err, e.calls.Load())
	}
	var jti string
	select {
	case m := <-e.metas:
		jti, _ = m[mcpgate.ParentMetaKey].(string)
	default:
	}
	if jti == "" {
		t.Fatal("the server saw no parent")
	}
	issued := e.writIssued(t, jti)
	if issued.Subject != e.node.ID.String() || issued.Refs["gateway"] != e.gw.ID.String() || issued.Refs["node"] != e.node.ID.String() {
		t.Fatalf("writ-issue entry %+v, want subject and node %s, gateway %s", issued, e.node.ID, e.gw.ID)
	}

	// Refused by the rules: the broker's reason and detail; the server is not called.
	_, err := call(t, cs, "write_file", args, "")
	if got := mcpgate.ReasonOf(err); got != broker.ReasonActionDenied || e.calls.Load() != 1 {
		t.Fatalf("a call no rule allows: %v (reason %q, server calls %d)", err, got, e.calls.Load())
	}
	if d := detailOf(err); !strings.Contains(d, `"detail"`) || !strings.Contains(d, "write_file") {
		t.Errorf("the refusal's data %s carries no detail from the broker", d)
	}
	// A malformed writ is not replaced by one the gateway asks for.
	if _, err := call(t, cs, "read_file", args, "not-a-writ"); mcpgate.ReasonOf(err) != "writ_malformed" || e.calls.Load() != 1 {
		t.Fatalf("a malformed writ: %v", err)
	}

	// A caller whose certificate the broker's CA signed but the broker
	// never issued (its serial is unknown): refused through the gateway.
	ca, err := identity.LoadOrCreateCA(e.b.cfg.DataDir, td)
	if err != nil {
		t.Fatal(err)
	}
	otherKey, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	forgedCert, err := ca.IssueX509SVID(e.node.ID, otherKey.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	forged := &x509svid.SVID{ID: e.node.ID, Certificates: []*x509.Certificate{forgedCert}, PrivateKey: otherKey}
	if _, err := call(t, e.connect(t, url, forged), "read_file", args, ""); mcpgate.ReasonOf(err) != broker.ReasonCallerSVIDUnknown || e.calls.Load() != 1 {
		t.Fatalf("a caller SVID the broker never issued: %v", err)
	}

	// Straight at the broker: who may relay which chain.
	foreignKey, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "foreign"}, URIs: forgedCert.URIs,
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature}
	foreignDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, foreignKey.Public(), foreignKey)
	if err != nil {
		t.Fatal(err)
	}
	unlisted := func() *x509svid.SVID {
		id := spiffeid.RequireFromString("spiffe://writ.test/gateway/unlisted")
		cert, err := ca.IssueX509SVID(id, otherKey.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: otherKey}
	}()
	mcpReq := func(chain ...[]byte) *brokerv1.WritRequest {
		return &brokerv1.WritRequest{Mcp: &brokerv1.MCPAction{Server: mcpServerID, Method: "tools/call", Tool: "read_file",
			Arguments: []byte(`{"path":"/tmp/a.txt"}`)}, Once: true, Caller: &brokerv1.CallerSubject{Svid: chain}}
	}
	nodeChain := e.node.Certificates[0].Raw
	for _, c := range []struct {
		name   string
		as     *x509svid.SVID
		req    *brokerv1.WritRequest
		reason string
	}{
		{"a gateway the broker does not list", unlisted, mcpReq(nodeChain), broker.ReasonGatewayNotAllowed},
		{"a node relaying a chain", e.node, mcpReq(nodeChain), broker.ReasonGatewayNotAllowed},
		{"a chain of another CA", e.gw, mcpReq(foreignDER), broker.ReasonCallerSVIDInvalid},
		{"garbage", e.gw, mcpReq([]byte("not a certificate")), broker.ReasonCallerSVIDInvalid},
		{"no chain", e.gw, mcpReq(), broker.ReasonCallerSVIDInvalid},
		{"a certificate the broker never issued", e.gw, mcpReq(forgedCert.Raw), broker.ReasonCallerSVIDUnknown},
		{"the gateway's own SVID", e.gw, mcpReq(e.gw.Certificates[0].Raw), broker.ReasonCallerSVIDUnknown},
		{"an exec action", e.gw, &brokerv1.WritRequest{Exec: &brokerv1.ExecAction{Argv: []string{"/bin/true"}},
			Caller: &brokerv1.CallerSubject{Svid: [][]byte{nodeChain}}}, broker.ReasonActionInvalid},
	} {
		_, err := e.brokerAs(t, c.as).RequestWrit(ctx(t), c.req)
		if got := brokerv1.ReasonOf(err); got != c.reason {
			t.Errorf("%s: %v (reason %q), want %s", c.name, err, got, c.reason)
		}
	}
	// The listed gateway relaying the node's real chain gets a writ.
	if _, err := e.brokerAs(t, e.gw).RequestWrit(ctx(t), mcpReq(nodeChain)); err != nil {
		t.Fatalf("the listed gateway for the node's chain: %v", err)
	}

	// A revoked node's caller: the broker refuses to issue.
	if _, err := e.b.adminClient(t).RevokeNode(ctx(t), &brokerv1.RevokeNodeRequest{NodeId: e.node.ID.String(), Reason: "test"}); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, cs, "read_file", args, ""); mcpgate.ReasonOf(err) != broker.ReasonNodeRevoked || e.calls.Load() != 1 {
		t.Fatalf("a revoked node's caller: %v (server calls %d)", err, e.calls.Load())
	}

	// Every refusal is in the broker's log as writ-deny.
	entries, err := audit.Read(e.b.cfg.Audit.Dir)
	if err != nil {
		t.Fatal(err)
	}
	denied := map[string]int{}
	for _, en := range entries {
		if en.Kind == "writ-deny" {
			denied[en.Reason]++
		}
	}
	for reason, n := range map[string]int{broker.ReasonActionDenied: 1, broker.ReasonGatewayNotAllowed: 2, broker.ReasonCallerSVIDInvalid: 3,
		broker.ReasonCallerSVIDUnknown: 3, broker.ReasonActionInvalid: 1, broker.ReasonNodeRevoked: 1} {
		if denied[reason] != n {
			t.Errorf("the broker audited %d writ-deny %s, want %d (all: %v)", denied[reason], reason, n, denied)
		}
	}
	// The gateway recorded which writs it asked for.
	gwEntries, err := audit.Read(gwDir + "/audit")
	if err != nil {
		t.Fatal(err)
	}
	if len(gwEntries) == 0 || gwEntries[0].Refs["requested"] != "broker" || gwEntries[0].Refs["jti"] != jti || gwEntries[0].Decision != "allow" {
		t.Errorf("the gateway's first entry %+v", gwEntries[0])
	}
}

// TestMCPGatewayToolsList (ADR 0028): tools/list through the gateway shows
// each caller the tools some rule could let it call: the node may call
// read_file, a workload whose rule names write_file (and whose entry lists
// it) sees only write_file; a workload whose entry lists no mcp tool sees
// none; a tool absent from a caller's list is still refused when called.
func TestMCPGatewayToolsList(t *testing.T) {
	rules := "writ:\n  rules:\n" +
		"    - subject: spiffe://writ.test/node/*\n      kind: mcp\n" +
		"      when: 'action.server == \"" + mcpServerID + "\" && action.tool == \"read_file\" && action.arguments.path.startsWith(\"/tmp/\")'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"    - subject: spiffe://writ.test/app/*\n      kind: mcp\n" +
		"      when: 'action.tool == \"write_file\" && action.arguments.path.startsWith(\"/srv/\")'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"gateways:\n  - id: spiffe://writ.test/gateway\n    kinds: [mcp]\n"
	e := newMCPEnvWith(t, rules)
	e.requestWrits = true
	writer := e.workloadSVID(t, "spiffe://writ.test/app/writer", "mcp:write_file")
	confined := e.workloadSVID(t, "spiffe://writ.test/app/confined", "exec:sha256:"+execDigest(t, "/bin/true"))
	url := e.startGateway(t, t.TempDir(), time.Now)
	list := func(svid *x509svid.SVID) []string {
		t.Helper()
		res, err := e.connect(t, url, svid).ListTools(ctx(t), nil)
		if err != nil {
			t.Fatalf("tools/list as %s: %v", svid.ID, err)
		}
		var names []string
		for _, tl := range res.Tools {
			names = append(names, tl.Name)
		}
		return names
	}
	if got := list(e.node); !slices.Equal(got, []string{"read_file"}) {
		t.Errorf("the node lists %v, want [read_file]", got)
	}
	if got := list(writer); !slices.Equal(got, []string{"write_file"}) {
		t.Errorf("the writer lists %v, want [write_file]", got)
	}
	if got := list(confined); len(got) != 0 {
		t.Errorf("a workload whose entry lists no mcp action lists %v", got)
	}
	// Absent from the list, still refused when called; listed, allowed.
	wcs := e.connect(t, url, writer)
	if _, err := call(t, wcs, "read_file", map[string]any{"path": "/tmp/a.txt"}, ""); mcpgate.ReasonOf(err) != broker.ReasonEntryActionDenied || e.calls.Load() != 0 {
		t.Fatalf("the writer calling read_file: %v (server calls %d)", err, e.calls.Load())
	}
	if _, err := call(t, wcs, "write_file", map[string]any{"path": "/srv/a.txt"}, ""); err != nil || e.calls.Load() != 1 {
		t.Fatalf("the writer calling write_file: %v (server calls %d)", err, e.calls.Load())
	}
	if _, err := call(t, e.connect(t, url, e.node), "write_file", map[string]any{"path": "/srv/a.txt"}, ""); mcpgate.ReasonOf(err) != broker.ReasonActionDenied || e.calls.Load() != 1 {
		t.Fatalf("the node calling write_file: %v", err)
	}
	// A broker that does not list the gateway: tools/list fails, it never
	// returns the full list.
	e.gw = func() *x509svid.SVID {
		ca, err := identity.LoadOrCreateCA(e.b.cfg.DataDir, td)
		if err != nil {
			t.Fatal(err)
		}
		key, err := identity.NewKey()
		if err != nil {
			t.Fatal(err)
		}
		id := spiffeid.RequireFromString("spiffe://writ.test/gateway/unlisted")
		cert, err := ca.IssueX509SVID(id, key.Public(), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
	}()
	_, err := e.connect(t, e.startGateway(t, t.TempDir(), time.Now), e.node).ListTools(ctx(t), &mcp.ListToolsParams{})
	if got := mcpgate.ReasonOf(err); got != broker.ReasonGatewayNotAllowed {
		t.Fatalf("tools/list through an unlisted gateway: %v (reason %q)", err, got)
	}
}
