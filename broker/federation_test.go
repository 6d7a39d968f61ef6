package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// counter is the value of a counter of g with exactly these labels (0
// when absent).
func counter(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	return metric(t, g, name, labels).GetCounter().GetValue()
}

// metric is the sample of the metric family name of g with exactly these
// labels, or nil.
func metric(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			if len(m.GetLabel()) != len(labels) {
				continue
			}
			for _, l := range m.GetLabel() {
				if labels[l.GetName()] != l.GetValue() {
					continue next
				}
			}
			return m
		}
	}
	return nil
}

// svidOf is an X.509-SVID for id issued by ca, with its key.
func svidOf(t testing.TB, ca *identity.CA, id string) *x509svid.SVID {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	sid := spiffeid.RequireFromString(id)
	cert, err := ca.IssueX509SVID(sid, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: sid, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// bundleEndpoint is an https_spiffe bundle endpoint of spire.test whose
// document the test sets.
type bundleEndpoint struct {
	*httptest.Server
	mu     sync.Mutex
	status int
	doc    []byte
}

func newBundleEndpoint(t testing.TB, svid *x509svid.SVID) *bundleEndpoint {
	t.Helper()
	e := &bundleEndpoint{status: http.StatusOK}
	e.Server = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		e.mu.Lock()
		defer e.mu.Unlock()
		w.WriteHeader(e.status)
		_, _ = w.Write(e.doc)
	}))
	// Certificates, not go-spiffe's GetCertificate: httptest would put
	// its own certificate first.
	e.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey}}}
	e.StartTLS()
	t.Cleanup(e.Close)
	return e
}

func (e *bundleEndpoint) serve(t testing.TB, status int, b *spiffebundle.Bundle) {
	t.Helper()
	doc := []byte("not a bundle")
	if b != nil {
		var err error
		if doc, err = b.Marshal(); err != nil {
			t.Fatal(err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.status, e.doc = status, doc
}

func bundleOf(td spiffeid.TrustDomain, seq uint64, cas ...*identity.CA) *spiffebundle.Bundle {
	b := spiffebundle.New(td)
	for _, ca := range cas {
		b.AddX509Authority(ca.Root())
	}
	b.SetSequenceNumber(seq)
	b.SetRefreshHint(time.Second)
	return b
}

// TestFederationFetch: the first fetch is authenticated with the
// bootstrap bundle and replaces it; a failing endpoint (error status,
// garbage, no authorities, an authority of another domain, a sequence
// going back, an endpoint the current bundle does not authenticate)
// keeps the current bundle, each failure counted by result; a new
// federation over the same store starts from the stored bundle; a bundle
// older than max_bundle_age verifies nobody (bundle_stale, counted).
func TestFederationFetch(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range []string{"ca1", "ca2", "other", "own"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	ca1 := writeForeignCA(t, filepath.Join(dir, "ca1"), foreignTD)
	ca2, err := identity.LoadOrCreateCA(filepath.Join(dir, "ca2"), foreignTD)
	if err != nil {
		t.Fatal(err)
	}
	other, err := identity.LoadOrCreateCA(filepath.Join(dir, "other"), spiffeid.RequireTrustDomainFromString("other.test"))
	if err != nil {
		t.Fatal(err)
	}
	ep := newBundleEndpoint(t, svidOf(t, ca1, "spiffe://spire.test/spire/server"))
	cfg := &Config{TrustDomain: "writ.test", Federation: []FederationConfig{{TrustDomain: "spire.test", BundleEndpointURL: ep.URL,
		BundleEndpointProfile: ProfileHTTPSSPIFFE, EndpointSPIFFEID: "spiffe://spire.test/spire/server",
		BootstrapBundle: filepath.Join(dir, "ca1", "bundle.json"), MaxBundleAge: time.Hour}}}
	if err := cfg.checkFederation(); err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenSQLite(filepath.Join(dir, "broker.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	own, err := identity.LoadOrCreateCA(filepath.Join(dir, "own"), spiffeid.RequireTrustDomainFromString("writ.test"))
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	ctx := context.Background()
	f, err := newFederation(ctx, cfg, own.Bundle, st, slog.New(slog.DiscardHandler), m)
	if err != nil {
		t.Fatal(err)
	}
	d := f.domains[foreignTD]
	verifies := func(f *federated, ca *identity.CA) error {
		_, err := f.verify(svidOf(t, ca, "spiffe://spire.test/ns/w").Certificates)
		return err
	}
	if err := verifies(f, ca1); err != nil {
		t.Fatalf("bootstrap bundle: %v", err)
	}
	if err := verifies(f, ca2); err == nil {
		t.Fatal("a CA not yet in the bundle verified")
	}
	fetches := func(result string) float64 {
		return counter(t, m.reg, "writ_broker_federation_fetches_total", map[string]string{"trust_domain": "spire.test", "result": result})
	}

	ep.serve(t, http.StatusOK, bundleOf(foreignTD, 7, ca1, ca2)) // rotation: ca2 added
	if err := f.fetch(ctx, d); err != nil {
		t.Fatal(err)
	}
	if err := verifies(f, ca2); err != nil {
		t.Fatalf("after the fetch, the new CA: %v", err)
	}
	if fetches(fetchOK) != 1 {
		t.Fatalf("ok fetches %v, want 1", fetches(fetchOK))
	}
	if docs := f.freshDocuments(); len(docs) != 1 {
		t.Fatalf("documents for agents: %d, want spire.test's", len(docs))
	} else if b, err := identity.ParseBundle(foreignTD, docs["spire.test"]); err != nil || !b.HasX509Authority(ca2.Root()) {
		t.Fatalf("document for agents: %v", err)
	}

	for _, tc := range []struct {
		name   string
		status int
		b      *spiffebundle.Bundle
		result string
	}{
		{"server error", http.StatusInternalServerError, nil, fetchFailed},
		{"garbage", http.StatusOK, nil, fetchFailed},
		{"no authorities", http.StatusOK, nil, fetchInvalid},
		{"authority of another domain", http.StatusOK, bundleOf(foreignTD, 8, ca1, other), fetchInvalid},
		{"sequence back", http.StatusOK, bundleOf(foreignTD, 6, ca1), fetchBackwards},
	} {
		before := fetches(tc.result)
		ep.serve(t, tc.status, tc.b)
		if tc.name == "no authorities" {
			ep.mu.Lock()
			ep.doc = []byte(`{"keys":[],"spiffe_sequence":8}`)
			ep.mu.Unlock()
		}
		if err := f.fetch(ctx, d); err == nil {
			t.Fatalf("%s: fetch succeeded", tc.name)
		}
		if fetches(tc.result) != before+1 {
			t.Errorf("%s: %s not counted", tc.name, tc.result)
		}
		if cur, _, _ := d.current(); cur == nil || len(cur.X509Authorities()) != 2 {
			t.Fatalf("%s: the current bundle was replaced", tc.name)
		}
	}
	noSeq := bundleOf(foreignTD, 0, ca1)
	noSeq.ClearSequenceNumber()
	ep.serve(t, http.StatusOK, noSeq)
	if err := f.fetch(ctx, d); err == nil {
		t.Fatal("a bundle dropping its sequence replaced one that had one")
	}

	// An endpoint whose SVID the current bundle does not authenticate.
	impostor := newBundleEndpoint(t, svidOf(t, other, "spiffe://other.test/spire/server"))
	impostor.serve(t, http.StatusOK, bundleOf(foreignTD, 9, other))
	d.cfg.BundleEndpointURL = impostor.URL
	if err := f.fetch(ctx, d); err == nil {
		t.Fatal("an endpoint not authenticated by the bundle served it")
	}
	d.cfg.BundleEndpointURL = ep.URL

	// A restart: the stored bundle, not the bootstrap.
	f2, err := newFederation(ctx, cfg, own.Bundle, st, slog.New(slog.DiscardHandler), newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	if err := verifies(f2, ca2); err != nil {
		t.Fatalf("after a restart, the stored bundle: %v", err)
	}
	if cur, _, _ := f2.domains[foreignTD].current(); cur == nil || seqOf(cur) != uint64(7) {
		t.Fatalf("after a restart: sequence %v, want 7", seqOf(cur))
	}

	// Stale: past max_bundle_age nobody verifies, and that is counted.
	f.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	var fe *foreignError
	if err := verifies(f, ca1); !errors.As(err, &fe) || fe.reason != ReasonBundleStale {
		t.Fatalf("stale bundle: %v, want %s", err, ReasonBundleStale)
	}
	if n := counter(t, m.reg, "writ_broker_foreign_certificates_rejected_total", map[string]string{"reason": ReasonBundleStale}); n != 1 {
		t.Fatalf("stale rejections counted %v, want 1", n)
	}
	if docs := f.freshDocuments(); len(docs) != 0 {
		t.Fatal("a stale bundle is handed to agents")
	}
	// A fetch authenticates with the stale bundle and makes it fresh.
	ep.serve(t, http.StatusOK, bundleOf(foreignTD, 8, ca2))
	f.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
	if err := f.fetch(ctx, d); err != nil {
		t.Fatalf("fetch with a stale bundle: %v", err)
	}
	if err := verifies(f, ca2); err != nil {
		t.Fatalf("after the fetch: %v", err)
	}
	if err := verifies(f, ca1); err == nil {
		t.Fatal("a CA the domain dropped still verifies")
	}
}

// foreignBroker is a test broker of writ.test federated with spire.test
// (bootstrapped from ca's bundle, never fetched: the endpoint is not
// there), with rules.
func foreignBroker(t *testing.T, rules string, extra ...string) (*testBroker, *identity.CA) {
	t.Helper()
	caDir := t.TempDir()
	ca := writeForeignCA(t, caDir, foreignTD)
	cfg, err := loadWithFederation(t, rules, federationEntry(filepath.Join(caDir, "bundle.json"), extra...))
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBroker{Broker: b, dir: filepath.Dir(cfg.DataDir)}
	t.Cleanup(func() { tb.stop(t) })
	return tb, ca
}

// peerCtx is a context whose mTLS peer presents chain.
func peerCtx(chain []*x509.Certificate) context.Context {
	state := tls.ConnectionState{PeerCertificates: chain}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

const foreignRules = `    - subject: spiffe://spire.test/ns/*
      kind: mcp
      when: action.tool == "read_file"
      audiences: [spiffe://writ.test/gateway/edge]
    - subject: spiffe://spire.test/ns/*
      kind: http
      when: action.method == "GET"
      audiences: [spiffe://writ.test/gateway/edge]
    - subject: spiffe://spire.test/ns/*
      kind: exec
      executables: [any]
    - subject: spiffe://writ.test/ns/*
      kind: mcp
      when: "true"
      audiences: [spiffe://writ.test/gateway/*]
`

// TestForeignRequestWrit: a workload of a federated domain gets a writ
// of kind mcp or http its rules allow, for itself, at a listed audience,
// att naming its trust domain; it is refused (with a stable reason) an
// exec writ even with a rule allowing it, a workload subject, a parent,
// acting as a gateway, an unlisted or missing audience and an action no
// rule allows; a chain of an unfederated domain, or of the federated
// domain but another CA, is caller_unauthenticated.
func TestForeignRequestWrit(t *testing.T) {
	b, ca := foreignBroker(t, foreignRules)
	w := svidOf(t, ca, "spiffe://spire.test/ns/app")
	ctx := peerCtx(w.Certificates)
	resp, err := b.RequestWrit(ctx, mcpCall(`{"path":"/etc/motd"}`))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := artifact.VerifySignature(resp.GetWrit(), b.writ.keySet())
	if err != nil {
		t.Fatal(err)
	}
	if claims.Subject != w.ID.String() || claims.Att.Node != "spiffe://spire.test" || !strings.HasPrefix(claims.Att.Policy, "federation:spire.test@") ||
		claims.Cnf.X5TS256 != artifact.Thumbprint(w.Certificates[0]) || claims.Audience != kindsGateway {
		t.Fatalf("claims %+v", claims)
	}
	if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Audience: kindsGateway,
		Http: &brokerv1.HTTPAction{Method: "GET", Scheme: "https", Authority: "api.test", Path: "/", BodySha256: strings.Repeat("00", 32)}}); err != nil {
		t.Fatalf("http: %v", err)
	}
	withMCP := func(f func(*brokerv1.WritRequest)) *brokerv1.WritRequest {
		r := mcpCall(`{"path":"/etc/motd"}`)
		f(r)
		return r
	}
	for _, tc := range []struct {
		name   string
		req    *brokerv1.WritRequest
		reason string
	}{
		{"exec", &brokerv1.WritRequest{Exec: execReq(), Audience: kindsGateway}, ReasonCallerForeign},
		{"workload subject", withMCP(func(r *brokerv1.WritRequest) { r.Workload = &brokerv1.WorkloadSubject{EntryId: "e"} }), ReasonCallerForeign},
		{"as a gateway", withMCP(func(r *brokerv1.WritRequest) { r.Caller = &brokerv1.CallerSubject{} }), ReasonCallerForeign},
		{"parent", withMCP(func(r *brokerv1.WritRequest) { r.Parent = resp.GetJti() }), ReasonParentInvalid},
		{"no audience", withMCP(func(r *brokerv1.WritRequest) { r.Audience = "" }), ReasonAudienceDenied},
		{"own domain as audience", withMCP(func(r *brokerv1.WritRequest) { r.Audience = "spiffe://spire.test" }), ReasonAudienceDenied},
		{"unlisted audience", withMCP(func(r *brokerv1.WritRequest) { r.Audience = "spiffe://writ.test/gateway/other" }), ReasonAudienceDenied},
		{"tool no rule allows", withMCP(func(r *brokerv1.WritRequest) { r.Mcp.Tool = "write_file" }), ReasonActionDenied},
		{"two actions", withMCP(func(r *brokerv1.WritRequest) { r.Exec = execReq() }), ReasonActionInvalid},
	} {
		_, err := b.RequestWrit(ctx, tc.req)
		wantRefused(t, tc.name, err, tc.reason)
	}
	// The own domain's rule (writ.test/ns/*) is not the foreign caller's.
	outside := svidOf(t, ca, "spiffe://spire.test/other/app")
	_, err = b.RequestWrit(peerCtx(outside.Certificates), mcpCall(`{}`))
	wantRefused(t, "a foreign ID under no rule", err, ReasonActionDenied)

	otherCA, err := identity.LoadOrCreateCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("other.test"))
	if err != nil {
		t.Fatal(err)
	}
	rogue, err := identity.LoadOrCreateCA(t.TempDir(), foreignTD) // spire.test's name, not its CA
	if err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]*x509svid.SVID{
		"unfederated domain":         svidOf(t, otherCA, "spiffe://other.test/ns/app"),
		"federated domain, rogue CA": svidOf(t, rogue, "spiffe://spire.test/ns/app"),
	} {
		_, err := b.RequestWrit(peerCtx(c.Certificates), mcpCall(`{"path":"/etc/motd"}`))
		wantRefused(t, name, err, ReasonCallerUnauthenticated)
	}
	if n := counter(t, b.Metrics(), "writ_broker_foreign_certificates_rejected_total", map[string]string{"reason": ReasonTrustDomainUnknown}); n != 1 {
		t.Errorf("unknown trust domain rejections %v, want 1", n)
	}
	if n := counter(t, b.Metrics(), "writ_broker_foreign_certificates_rejected_total", map[string]string{"reason": ReasonChainInvalid}); n != 1 {
		t.Errorf("invalid chain rejections %v, want 1", n)
	}
}

// TestForeignGuard: a foreign caller is refused every RPC but
// RequestWrit and PermittedTools (caller_foreign, audited), Subscribe
// too unless its domain's entry allows it; a member of the own domain is
// not affected.
func TestForeignGuard(t *testing.T) {
	b, ca := foreignBroker(t, foreignRules)
	ctx := peerCtx(svidOf(t, ca, "spiffe://spire.test/ns/app").Certificates)
	for _, m := range []string{brokerv1.Broker_ConsumeWrit_FullMethodName, brokerv1.Broker_SignWorkloadSVID_FullMethodName,
		brokerv1.Broker_NodeEntries_FullMethodName, brokerv1.Broker_SignJWTSVID_FullMethodName, brokerv1.Broker_Attest_FullMethodName,
		brokerv1.Broker_Subscribe_FullMethodName, brokerv1.Admin_ListNodes_FullMethodName, brokerv1.Admin_RevokeNode_FullMethodName,
		brokerv1.Admin_DecideApproval_FullMethodName, "/writ.broker.v1.Admin/Future"} {
		wantRefused(t, m, b.foreignGuard(ctx, m), ReasonCallerForeign)
	}
	for _, m := range []string{brokerv1.Broker_RequestWrit_FullMethodName, brokerv1.Broker_PermittedTools_FullMethodName} {
		if err := b.foreignGuard(ctx, m); err != nil {
			t.Errorf("%s: %v", m, err)
		}
	}
	if err := b.foreignGuard(b.as(t, spiffeid.RequireFromString("spiffe://writ.test/admin")), brokerv1.Admin_ListNodes_FullMethodName); err != nil {
		t.Errorf("own admin: %v", err)
	}
	es := b.auditEntries(t)
	if last := es[len(es)-1]; last.Kind != "foreign-deny" || last.Reason != ReasonCallerForeign || last.Subject != "spiffe://spire.test/ns/app" {
		t.Errorf("last audit entry %+v", last)
	}

	sb, sca := foreignBroker(t, foreignRules, "    subscribe: true\n")
	if err := sb.foreignGuard(peerCtx(svidOf(t, sca, "spiffe://spire.test/gw").Certificates), brokerv1.Broker_Subscribe_FullMethodName); err != nil {
		t.Errorf("subscribe allowed by the entry: %v", err)
	}
}

// TestForeignPermittedTools: a foreign caller lists the tools its rules
// may allow it, for itself only.
func TestForeignPermittedTools(t *testing.T) {
	b, ca := foreignBroker(t, foreignRules)
	w := svidOf(t, ca, "spiffe://spire.test/ns/app")
	ctx := peerCtx(w.Certificates)
	resp, err := b.PermittedTools(ctx, &brokerv1.PermittedToolsRequest{Server: kindsServer, Tools: []string{"read_file", "write_file"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.GetTools(); len(got) != 1 || got[0] != "read_file" {
		t.Fatalf("tools %v, want [read_file]", got)
	}
	other := svidOf(t, ca, "spiffe://spire.test/ns/other")
	_, err = b.PermittedTools(ctx, &brokerv1.PermittedToolsRequest{Server: kindsServer, Tools: []string{"read_file"},
		Caller: &brokerv1.CallerSubject{Svid: [][]byte{other.Certificates[0].Raw}}})
	wantRefused(t, "for another caller", err, ReasonCallerForeign)
}

// TestForeignThroughGateway: a listed gateway of the own domain gets a
// writ for a foreign caller whose chain verifies against its federated
// bundle (no serial or node standing to check), audited with the trust
// domain, never as a node; a rule requiring approval, a tool no rule
// allows and a chain of a rogue CA are refused; PermittedTools lists for
// it.
func TestForeignThroughGateway(t *testing.T) {
	approvalRule := "    - subject: spiffe://spire.test/ns/*\n      kind: mcp\n      when: action.tool == \"delete\"\n" +
		"      audiences: [spiffe://writ.test/gateway/edge]\n      approval: {}\n"
	b, ca := foreignBroker(t, foreignRules+approvalRule+"gateways:\n  - id: spiffe://writ.test/gateway/edge\n    kinds: [mcp]\n")
	gwCtx := b.as(t, spiffeid.RequireFromString(kindsGateway))
	w := svidOf(t, ca, "spiffe://spire.test/ns/app")
	req := func(tool string, leaf *x509.Certificate) *brokerv1.WritRequest {
		r := mcpCall(`{"path":"/etc/motd"}`)
		r.Mcp.Tool = tool
		r.Caller = &brokerv1.CallerSubject{Svid: [][]byte{leaf.Raw}}
		return r
	}
	resp, err := b.RequestWrit(gwCtx, req("read_file", w.Certificates[0]))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := artifact.VerifySignature(resp.GetWrit(), b.writ.keySet())
	if err != nil || claims.Subject != w.ID.String() || claims.Audience != kindsGateway || claims.Att.Node != "spiffe://spire.test" {
		t.Fatalf("claims %+v, %v", claims, err)
	}
	es := b.auditEntries(t)
	if last := es[len(es)-1]; last.Kind != "writ-issue" || last.Refs["trust_domain"] != "spire.test" || last.Refs["node"] != "" {
		t.Fatalf("audit entry %+v: want trust_domain spire.test and no node", last)
	}
	rogue, err := identity.LoadOrCreateCA(t.TempDir(), foreignTD)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, tool string
		leaf       *x509.Certificate
		reason     string
	}{
		{"approval rule", "delete", w.Certificates[0], ReasonCallerForeign},
		{"no rule", "write_file", w.Certificates[0], ReasonActionDenied},
		{"rogue CA", "read_file", svidOf(t, rogue, "spiffe://spire.test/ns/app").Certificates[0], ReasonCallerSVIDInvalid},
	} {
		_, err := b.RequestWrit(gwCtx, req(tc.tool, tc.leaf))
		wantRefused(t, tc.name, err, tc.reason)
	}
	tools, err := b.PermittedTools(gwCtx, &brokerv1.PermittedToolsRequest{Server: kindsServer, Tools: []string{"read_file", "write_file"},
		Caller: &brokerv1.CallerSubject{Svid: [][]byte{w.Certificates[0].Raw}}})
	if err != nil || len(tools.GetTools()) != 1 || tools.GetTools()[0] != "read_file" {
		t.Fatalf("tools %v, %v", tools.GetTools(), err)
	}
}
