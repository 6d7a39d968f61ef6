package test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/mcpgate"
)

// aTD is the other writ broker's trust domain in the federation tests;
// the harness's td (writ.test) is broker B's.
var aTD = spiffeid.RequireTrustDomainFromString("a.test")

// startBrokerA starts a broker of a.test: it has no node, it serves its
// bundle endpoint and its CA mints the test's a.test workload SVIDs.
func startBrokerA(t *testing.T) (*brokerEnv, *identity.CA) {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf("trust_domain: %s\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: data\naudit:\n  signer: file\n"+
		"ek:\n  allowed_keys: [\"sha256:%s\"]\n%s", aTD.Name(), strings.Repeat("ab", 32), policyYAML())
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startBroker(t, path)
	ca, err := identity.LoadOrCreateCA(a.cfg.DataDir, aTD)
	if err != nil {
		t.Fatal(err)
	}
	return a, ca
}

// mintSVID is an X.509-SVID for id from ca.
func mintSVID(t *testing.T, ca *identity.CA, id string) *x509svid.SVID {
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

// endpointSwitch is a TCP relay in front of a bundle endpoint: it passes
// connections through (TLS stays end to end) to the target set, or
// closes them when there is none (the endpoint is down).
type endpointSwitch struct {
	ln     net.Listener
	mu     sync.Mutex
	target string
}

func newEndpointSwitch(t *testing.T, target string) *endpointSwitch {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &endpointSwitch{ln: ln, target: target}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.relay(c)
		}
	}()
	return s
}

func (s *endpointSwitch) set(target string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.target = target
}

func (s *endpointSwitch) relay(c net.Conn) {
	defer c.Close()
	s.mu.Lock()
	target := s.target
	s.mu.Unlock()
	if target == "" {
		return
	}
	up, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer up.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
}

func (s *endpointSwitch) url() string { return "https://" + s.ln.Addr().String() }

// counterValue is the sum of a counter's series whose labels include
// these.
func counterValue(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, l := range m.GetLabel() {
				got[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue series
				}
			}
			sum += m.GetCounter().GetValue()
		}
	}
	return sum
}

// waitUntil waits up to 20 s for cond (eventually), failing the test
// when it does not come to hold.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	if !eventually(20*time.Second, cond) {
		t.Fatalf("gave up waiting: %s", what)
	}
}

// foreignClient is a client of broker b's API authenticated as svid (of
// any trust domain), trusting b's own bundle for b.
func foreignClient(t *testing.T, b *brokerEnv, bundle *spiffebundle.Bundle, svid *x509svid.SVID) *grpc.ClientConn {
	t.Helper()
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func readFileReq(path string) *brokerv1.WritRequest {
	return &brokerv1.WritRequest{Mcp: &brokerv1.MCPAction{Server: mcpServerID, Method: "tools/call", Tool: "read_file",
		Arguments: []byte(fmt.Sprintf(`{"path":%q}`, path))}, Audience: "spiffe://writ.test/gateway", Once: true}
}

// TestFederationTwoBrokers (issue 10, deliverable 0): broker B
// (writ.test) federates with broker A (a.test) over A's https_spiffe
// bundle endpoint (endpoint ID spiffe://a.test/broker, bootstrapped from
// A's bundle file). A workload of a.test, its SVID from A's CA:
//   - gets from B a writ for an mcp call a rule naming spiffe://a.test/ns/*
//     allows, and is refused an exec writ and an admin call
//     (caller_foreign) and a call no rule allows (action_denied);
//   - calls B's MCP gateway (which takes a.test's bundle) with that writ,
//     and without one (the gateway asks B for one, relaying its chain);
//
// a certificate of an unfederated domain is refused at the handshake and
// counted; when A's endpoint serves a new bundle (a second CA added), B
// takes it on its next poll and that CA's workloads are accepted; while
// the endpoint fails, B keeps the bundle (failures counted); a restarted
// B, the endpoint still down, verifies with the stored bundle.
func TestFederationTwoBrokers(t *testing.T) {
	a, caA := startBrokerA(t)
	sw := newEndpointSwitch(t, strings.TrimPrefix(a.BundleURL(), "https://"))
	fed := fmt.Sprintf("federation:\n  - trust_domain: a.test\n    bundle_endpoint_url: %s\n    bundle_endpoint_profile: https_spiffe\n"+
		"    endpoint_spiffe_id: spiffe://a.test/broker\n    bootstrap_bundle: %s\n    refresh: 1s\n", sw.url(), a.bundlePath())
	rules := "writ:\n  rules:\n    - subject: spiffe://a.test/ns/*\n      kind: mcp\n" +
		"      when: 'action.server == \"" + mcpServerID + "\" && action.tool == \"read_file\" && action.arguments.path.startsWith(\"/tmp/\")'\n" +
		"      audiences: [\"spiffe://writ.test/gateway\"]\n" +
		"    - subject: spiffe://a.test/ns/*\n      kind: exec\n      executables: [any]\n" +
		"gateways:\n  - id: spiffe://writ.test/gateway\n    kinds: [mcp]\n" + fed
	e := newMCPEnvWith(t, rules)
	b := e.b
	waitUntil(t, "B's first fetch from A", func() bool {
		return counterValue(t, b.Metrics(), "writ_broker_federation_fetches_total", map[string]string{"result": "ok"}) >= 1
	})

	w := mintSVID(t, caA, "spiffe://a.test/ns/app")
	conn := foreignClient(t, b, e.bundle, w)
	c := brokerv1.NewBrokerClient(conn)
	resp, err := c.RequestWrit(ctx(t), readFileReq("/tmp/a.txt"))
	if err != nil {
		t.Fatalf("a.test workload, allowed mcp call: %v", err)
	}
	claims, err := artifact.ParseUnverified(resp.GetWrit())
	if err != nil {
		t.Fatal(err)
	}
	if claims.Subject != w.ID.String() || claims.Att.Node != "spiffe://a.test" || claims.Cnf.X5TS256 != artifact.Thumbprint(w.Certificates[0]) {
		t.Fatalf("writ claims %+v", claims)
	}
	_, err = c.RequestWrit(ctx(t), &brokerv1.WritRequest{Exec: &brokerv1.ExecAction{Argv: []string{"/bin/true"}, Path: "/bin/true",
		Sha256: strings.Repeat("ab", 32), Cwd: "/"}, Audience: "spiffe://writ.test/gateway"})
	if got := brokerv1.ReasonOf(err); got != broker.ReasonCallerForeign {
		t.Fatalf("exec: %v (reason %q), want %s", err, got, broker.ReasonCallerForeign)
	}
	if _, err := brokerv1.NewAdminClient(conn).ListNodes(ctx(t), &brokerv1.ListNodesRequest{}); brokerv1.ReasonOf(err) != broker.ReasonCallerForeign {
		t.Fatalf("admin: %v, want %s", err, broker.ReasonCallerForeign)
	}
	if _, err := c.RequestWrit(ctx(t), readFileReq("/etc/passwd")); brokerv1.ReasonOf(err) != broker.ReasonActionDenied {
		t.Fatalf("an action no rule allows: %v, want %s", err, broker.ReasonActionDenied)
	}

	// An unfederated domain: refused at the handshake, counted.
	other, err := identity.LoadOrCreateCA(t.TempDir(), spiffeid.RequireTrustDomainFromString("c.test"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := brokerv1.NewBrokerClient(foreignClient(t, b, e.bundle, mintSVID(t, other, "spiffe://c.test/ns/app"))).
		RequestWrit(ctx(t), readFileReq("/tmp/a.txt")); err == nil {
		t.Fatal("a workload of an unfederated domain got a writ")
	}
	if n := counterValue(t, b.Metrics(), "writ_broker_foreign_certificates_rejected_total", map[string]string{"reason": broker.ReasonTrustDomainUnknown}); n < 1 {
		t.Fatalf("unfederated certificate not counted (%v)", n)
	}

	// B's MCP gateway takes a.test's bundle (as B writes it for gateways).
	fedFile := filepath.Join(b.cfg.DataDir, broker.FederationDir, "a.test.json")
	raw, err := os.ReadFile(fedFile)
	if err != nil {
		t.Fatal(err)
	}
	aBundle, err := spiffebundle.Parse(aTD, raw)
	if err != nil {
		t.Fatal(err)
	}
	e.federated = []*spiffebundle.Bundle{aBundle}
	e.requestWrits = true
	cs := e.connect(t, e.startGateway(t, t.TempDir(), time.Now), w)
	if _, err := call(t, cs, "read_file", map[string]any{"path": "/tmp/a.txt"}, resp.GetWrit()); err != nil || e.calls.Load() != 1 {
		t.Fatalf("a.test caller through B's gateway with B's writ: %v (server calls %d)", err, e.calls.Load())
	}
	if _, err := call(t, cs, "read_file", map[string]any{"path": "/tmp/b.txt"}, ""); err != nil || e.calls.Load() != 2 {
		t.Fatalf("a.test caller through B's gateway, writ asked for it: %v (server calls %d)", err, e.calls.Load())
	}
	if _, err := call(t, cs, "write_file", map[string]any{"path": "/tmp/b.txt"}, ""); mcpgate.ReasonOf(err) != broker.ReasonActionDenied || e.calls.Load() != 2 {
		t.Fatalf("a.test caller, a tool no rule allows: %v", err)
	}

	// A's endpoint serves a new bundle: its CA and a second one.
	caA2, err := identity.LoadOrCreateCA(t.TempDir(), aTD)
	if err != nil {
		t.Fatal(err)
	}
	w2 := mintSVID(t, caA2, "spiffe://a.test/ns/app2")
	if _, err := brokerv1.NewBrokerClient(foreignClient(t, b, e.bundle, w2)).RequestWrit(ctx(t), readFileReq("/tmp/a.txt")); err == nil {
		t.Fatal("a CA not yet in B's bundle of a.test verified")
	}
	current, _, ok := b.FederatedBundle(aTD)
	if !ok {
		t.Fatal("B has no bundle of a.test")
	}
	seq, _ := current.SequenceNumber()
	rotated := spiffebundle.FromX509Authorities(aTD, []*x509.Certificate{caA.Root(), caA2.Root()})
	rotated.SetSequenceNumber(seq + 1)
	doc, err := rotated.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	endpointSVID := mintSVID(t, caA, "spiffe://a.test/broker")
	newEndpoint := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(doc) }))
	newEndpoint.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{endpointSVID.Certificates[0].Raw}, PrivateKey: endpointSVID.PrivateKey}}}
	newEndpoint.StartTLS()
	t.Cleanup(newEndpoint.Close)
	sw.set(strings.TrimPrefix(newEndpoint.URL, "https://"))
	waitUntil(t, "B takes A's new bundle", func() bool {
		cur, _, _ := b.FederatedBundle(aTD)
		return cur != nil && cur.HasX509Authority(caA2.Root())
	})
	if _, err := brokerv1.NewBrokerClient(foreignClient(t, b, e.bundle, w2)).RequestWrit(ctx(t), readFileReq("/tmp/a.txt")); err != nil {
		t.Fatalf("after the rotation, the new CA's workload: %v", err)
	}

	// The endpoint fails: B keeps the bundle.
	failed := counterValue(t, b.Metrics(), "writ_broker_federation_fetches_total", map[string]string{"result": "fetch_failed"})
	sw.set("")
	waitUntil(t, "a failed fetch counted", func() bool {
		return counterValue(t, b.Metrics(), "writ_broker_federation_fetches_total", map[string]string{"result": "fetch_failed"}) > failed
	})
	if _, err := brokerv1.NewBrokerClient(foreignClient(t, b, e.bundle, w2)).RequestWrit(ctx(t), readFileReq("/tmp/a.txt")); err != nil {
		t.Fatalf("with the endpoint down, the kept bundle: %v", err)
	}

	// B restarts while the endpoint is down: the stored bundle (with the
	// second CA, which the bootstrap bundle lacks) verifies at once.
	cfg := b.cfg
	b.stop(t)
	nb, err := broker.New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := nb.Start(); err != nil {
		t.Fatal(err)
	}
	b2 := &brokerEnv{Broker: nb, cfg: cfg}
	t.Cleanup(func() { b2.stop(t) })
	if _, err := brokerv1.NewBrokerClient(foreignClient(t, b2, e.bundle, w2)).RequestWrit(ctx(t), readFileReq("/tmp/a.txt")); err != nil {
		t.Fatalf("restarted B, endpoint down, the stored bundle: %v", err)
	}
	if n := counterValue(t, nb.Metrics(), "writ_broker_federation_fetches_total", map[string]string{"result": "ok"}); n != 0 {
		t.Fatalf("restarted B fetched %v times with the endpoint down", n)
	}
}
