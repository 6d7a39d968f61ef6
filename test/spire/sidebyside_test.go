//go:build spire

package spire

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// spireSection is the broker's spire section for a SPIRE server reached
// on its local admin socket.
func spireSection(s *h5SPIREServer, extra string) string {
	return fmt.Sprintf("spire:\n  address: unix://%s\n  trust_domain: %s\n%s", s.socket, s.td.Name(), extra)
}

// TestSideBySideRevokeBansSPIREAgent (issue 10, deliverable 3): a node
// writ revokes loses its SPIRE agent too. The SPIRE agent that belongs to
// the writ node (a join-token agent whose node alias is
// spiffe://spire.test/node/<node id>: SPIRE does not let a join token name
// the agent spiffe://spire.test/spire/agent/writ/<node id> the writ plugin
// gives the agents it attests) is banned by the broker through SPIRE's
// agent/v1 BanAgent, and `spire-server agent show` says so; the SPIRE
// agent of another node is not touched.
func TestSideBySideRevokeBansSPIREAgent(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, ""))
	nodeID := b.enrollAndAttest(t, b.agent(t, h5NewNode(t, a)))

	alias, err := broker.AliasID(srv.td, nodeID)
	if err != nil {
		t.Fatal(err)
	}
	mine, _ := srv.h5JoinAgent(t, alias.String())
	otherAlias, _ := broker.AliasID(srv.td, fmt.Sprintf("%x", sha256.Sum256([]byte("another node"))))
	other, _ := srv.h5JoinAgent(t, otherAlias.String())
	if srv.banned(t, mine) || srv.banned(t, other) {
		t.Fatal("an agent is banned before anything was revoked")
	}

	if _, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID, Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	if !h5Eventually(30*time.Second, func() bool { return srv.banned(t, mine) }) {
		t.Fatalf("the SPIRE agent %s of the revoked node was not banned", mine)
	}
	if srv.banned(t, other) {
		t.Fatalf("the SPIRE agent %s of another node was banned too", other)
	}
	if got := b.counter(t, "writ_broker_spire_bans_total", map[string]string{"outcome": "banned"}); got != 1 {
		t.Fatalf("writ_broker_spire_bans_total{outcome=banned} = %v, want 1", got)
	}
	if !h5Eventually(10*time.Second, func() bool {
		e, ok := b.lastAudit(t, "spire-ban")
		return ok && e.Decision == "info" && e.Reason == "" && e.Refs["agents"] == mine.String() && e.Refs["state"] == "revoked" &&
			e.Subject == "spiffe://writ.test/node/"+nodeID
	}) {
		e, _ := b.lastAudit(t, "spire-ban")
		t.Fatalf("last spire-ban audit entry %+v; want decision info naming %s", e, mine)
	}
	t.Logf("agent show after the revocation:\n%s", srv.mustCLI(t, "agent show", "-spiffeID", mine.String()))
}

// TestSideBySideNodeWithoutSPIREAgent: revoking a node SPIRE has no agent
// for bans nothing, not even an agent aliased to another node, and says
// so in the audit log (spire_agent_unknown) and the counters.
func TestSideBySideNodeWithoutSPIREAgent(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, ""))
	nodeID := b.enrollAndAttest(t, b.agent(t, h5NewNode(t, a)))
	otherAlias, _ := broker.AliasID(srv.td, fmt.Sprintf("%x", sha256.Sum256([]byte("another node"))))
	other, _ := srv.h5JoinAgent(t, otherAlias.String())

	if _, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID}); err != nil {
		t.Fatal(err)
	}
	if !h5Eventually(30*time.Second, func() bool {
		return b.counter(t, "writ_broker_spire_bans_total", map[string]string{"outcome": "no_agent"}) == 1
	}) {
		t.Fatal("the ban of a node without a SPIRE agent was not counted as no_agent")
	}
	if e, ok := b.lastAudit(t, "spire-ban"); !ok || e.Reason != broker.ReasonSPIREAgentUnknown {
		t.Fatalf("spire-ban audit entry %+v; want %s", e, broker.ReasonSPIREAgentUnknown)
	}
	if srv.banned(t, other) {
		t.Fatalf("the SPIRE agent %s of another node was banned", other)
	}
}

// TestSideBySideFailedAttestationBansSPIREAgent: a node whose attestation
// fails (a boot PCR the policy pins changed) loses its SPIRE agent.
func TestSideBySideFailedAttestationBansSPIREAgent(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, ""))
	n := h5NewNode(t, a)
	ag := b.agent(t, n)
	nodeID := b.enrollAndAttest(t, ag)
	alias, _ := broker.AliasID(srv.td, nodeID)
	mine, _ := srv.h5JoinAgent(t, alias.String())

	n.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	out, err := ag.Attest(h5Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if out.Passed {
		t.Fatal("the attestation passed after PCR 7 changed")
	}
	if !h5Eventually(30*time.Second, func() bool { return srv.banned(t, mine) }) {
		t.Fatalf("the SPIRE agent %s of the failed node was not banned", mine)
	}
}

// TestSideBySideStaleNodeBansSPIREAgent: a node that stops attesting goes
// stale (attestation.stale_after) and loses its SPIRE agent.
func TestSideBySideStaleNodeBansSPIREAgent(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, "")+"attestation:\n  interval: 1s\n  stale_after: 1s\n")
	ag := b.agent(t, h5NewNode(t, a))
	rec, err := ag.Enroll(h5Ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	// The SPIRE agent first: the node goes stale a second after it attests.
	alias, _ := broker.AliasID(srv.td, rec.NodeID)
	mine, _ := srv.h5JoinAgent(t, alias.String())
	if out, err := ag.Attest(h5Ctx(t)); err != nil || !out.Passed {
		t.Fatalf("attest: %+v, %v", out, err)
	}
	// The agent attests no more: the broker marks the node stale.
	if !h5Eventually(30*time.Second, func() bool { return srv.banned(t, mine) }) {
		t.Fatalf("the SPIRE agent %s of the stale node was not banned", mine)
	}
	if e, ok := b.lastAudit(t, "spire-ban"); !ok || e.Refs["state"] != "stale" {
		t.Fatalf("spire-ban audit entry %+v; want state stale", e)
	}
}

// TestSideBySideBanOnlyOnConfiguredStates: with ban_on: [revoked], a
// failed attestation leaves the SPIRE agent alone (the operator chose to
// let failed nodes recover), and a revocation still bans it.
func TestSideBySideBanOnlyOnConfiguredStates(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, "  ban_on: [revoked]\n"))
	n := h5NewNode(t, a)
	ag := b.agent(t, n)
	nodeID := b.enrollAndAttest(t, ag)
	alias, _ := broker.AliasID(srv.td, nodeID)
	mine, _ := srv.h5JoinAgent(t, alias.String())

	n.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	if out, err := ag.Attest(h5Ctx(t)); err != nil || out.Passed {
		t.Fatalf("attest after PCR 7 changed: %+v, %v; want a failed result", out, err)
	}
	if _, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID}); err != nil {
		t.Fatal(err)
	}
	// The queue is worked in order: once the revocation's ban is made,
	// the failure's (had there been one) was made before it, and the
	// revocation would have found the agent banned already.
	if !h5Eventually(30*time.Second, func() bool { return srv.banned(t, mine) }) {
		t.Fatalf("the SPIRE agent %s of the revoked node was not banned", mine)
	}
	var bans []audit.Entry
	if !h5Eventually(10*time.Second, func() bool { bans = b.audits(t, "spire-ban"); return len(bans) > 0 }) {
		t.Fatal("no spire-ban audit entry")
	}
	if len(bans) != 1 || bans[0].Refs["state"] != "revoked" || bans[0].Refs["agents"] != mine.String() {
		t.Fatalf("spire-ban audit entries %+v; want one, the revocation's, banning %s", bans, mine)
	}
}

// TestSideBySideBansAtStart: a node revoked while the broker had no spire
// section (or lost the ban to a restart) loses its SPIRE agent when the
// broker starts with one; a second start finds it banned and audits
// nothing new.
func TestSideBySideBansAtStart(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	dir := t.TempDir()
	b := h5StartBrokerIn(t, dir, h5WritTD, a, "")
	nodeID := b.enrollAndAttest(t, b.agent(t, h5NewNode(t, a)))
	alias, _ := broker.AliasID(srv.td, nodeID)
	mine, _ := srv.h5JoinAgent(t, alias.String())
	if _, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID}); err != nil {
		t.Fatal(err)
	}
	b.stop(t)
	if srv.banned(t, mine) {
		t.Fatal("banned by a broker without a spire section")
	}

	b = h5StartBrokerIn(t, dir, h5WritTD, a, spireSection(srv, ""))
	if !h5Eventually(30*time.Second, func() bool { return srv.banned(t, mine) }) {
		t.Fatalf("the SPIRE agent %s of the node revoked before was not banned at start", mine)
	}
	if !h5Eventually(10*time.Second, func() bool { return len(b.audits(t, "spire-ban")) == 1 }) {
		t.Fatalf("spire-ban audit entries %+v; want the start's ban", b.audits(t, "spire-ban"))
	}
	b.stop(t)

	b = h5StartBrokerIn(t, dir, h5WritTD, a, spireSection(srv, ""))
	if !h5Eventually(30*time.Second, func() bool {
		return b.counter(t, "writ_broker_spire_bans_total", map[string]string{"outcome": "already_banned"}) == 1
	}) {
		t.Fatal("a second start did not find the agent banned")
	}
	if got := b.counter(t, "writ_broker_spire_bans_total", map[string]string{"outcome": "banned"}); got != 0 {
		t.Fatalf("a second start banned %v agents again", got)
	}
	if bans := b.audits(t, "spire-ban"); len(bans) != 1 {
		t.Fatalf("a second start: spire-ban audit entries %+v; want the first start's alone", bans)
	}
}

// TestSideBySideSPIREDownDoesNotBlockRevocation: with the SPIRE server
// down, writ's revocation takes effect at once (writ never waits for
// SPIRE); the failed bans are counted, and once SPIRE is back the ban is
// retried and made.
func TestSideBySideSPIREDownDoesNotBlockRevocation(t *testing.T) {
	srv := h5StartSPIREServer(t, "spire.test", "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, ""))
	nodeID := b.enrollAndAttest(t, b.agent(t, h5NewNode(t, a)))
	alias, _ := broker.AliasID(srv.td, nodeID)
	mine, agentProc := srv.h5JoinAgent(t, alias.String())
	agentProc.stop()
	srv.proc.stop()

	info, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID, Reason: "stolen"})
	if err != nil {
		t.Fatalf("RevokeNode with SPIRE down: %v", err)
	}
	if info.GetState() != "revoked" {
		t.Fatalf("node state %q after RevokeNode, want revoked", info.GetState())
	}
	if !h5Eventually(30*time.Second, func() bool {
		return b.counter(t, "writ_broker_spire_bans_total", map[string]string{"outcome": "error"}) > 0
	}) {
		t.Fatal("no failed ban was counted while SPIRE was down")
	}

	if e, ok := b.lastAudit(t, "spire-ban"); !ok || e.Decision != "fail" || e.Reason != broker.ReasonSPIREUnreachable {
		t.Fatalf("spire-ban audit entry %+v while SPIRE was down; want fail %s", e, broker.ReasonSPIREUnreachable)
	}

	srv.start(t)
	if !h5Eventually(60*time.Second, func() bool { return srv.banned(t, mine) }) {
		t.Fatalf("the SPIRE agent %s was not banned once SPIRE was back", mine)
	}
}

// TestSideBySideSPIREMintsNodeSVID (issue 10, deliverable 3): with
// spire.mint_svids, writ still attests the node, but its X.509-SVID is
// minted by SPIRE (svid/v1 MintX509SVID, for a CSR the node's TPM key
// signed): it verifies against SPIRE's bundle as `spire-server bundle
// show` prints it, its key is the node's TPM key, and the node holding it
// gets writs from the broker, bound to that SVID.
func TestSideBySideSPIREMintsNodeSVID(t *testing.T) {
	const gw = "spiffe://writ.test/gateway/mcp"
	srv := h5StartSPIREServer(t, h5WritTD.Name(), "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, "  mint_svids: true\n")+fmt.Sprintf(`writ:
  rules:
    - subject: spiffe://writ.test/node/*
      kind: mcp
      when: 'action.tool == "echo"'
      audiences: [%q]
`, gw))
	n := h5NewNode(t, a)
	ag, agentDir := b.agentIn(t, n)
	nodeID := b.enrollAndAttest(t, ag)

	chain, err := identity.LoadCerts(filepath.Join(agentDir, agent.SVIDFile))
	if err != nil {
		t.Fatal(err)
	}
	spireBundle, err := spiffebundle.Parse(h5WritTD, []byte(srv.mustCLI(t, "bundle show", "-format", "spiffe")))
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(chain, spireBundle)
	if err != nil {
		t.Fatalf("the node SVID does not verify against SPIRE's bundle: it was not minted by SPIRE: %v", err)
	}
	if want := "spiffe://writ.test/node/" + nodeID; id.String() != want {
		t.Fatalf("the SPIRE-minted SVID names %s, want %s", id, want)
	}

	// The node, holding its SPIRE-minted SVID (key in its TPM), asks for a writ.
	tpm, err := n.open()
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	signer, err := tpm.LoadSigner(mustRead(t, filepath.Join(agentDir, agent.SVIDKeyFile)))
	if err != nil {
		t.Fatal(err)
	}
	defer signer.Close()
	if !signer.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(chain[0].PublicKey) {
		t.Fatal("the SPIRE-minted SVID is not for the node's TPM key")
	}
	svid := &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: signer}
	resp, err := writCall(t, b, svid, gw)
	if err != nil {
		t.Fatalf("the node with its SPIRE-minted SVID was refused a writ: %v", err)
	}
	claims := h5Claims(t, resp.GetWrit())
	if claims.Sub != id.String() || claims.Cnf["x5t#S256"] != artifact.Thumbprint(chain[0]) {
		t.Fatalf("writ sub %q cnf %v; want the node and its SPIRE-minted SVID", claims.Sub, claims.Cnf)
	}

	// A workload SVID of an entry on this node is minted by SPIRE too; a
	// CSR that names another ID (SPIRE would mint whatever it names: here
	// the broker's admin) is refused before SPIRE sees it.
	const app = "spiffe://writ.test/app/web"
	sel := []*brokerv1.Selector{{Type: "unix", Value: "uid:1000"}}
	entry, err := b.admin(t).CreateEntry(h5Ctx(t), &brokerv1.CreateEntryRequest{Entry: &brokerv1.Entry{
		SpiffeId: app, Parent: id.String(), Selectors: sel}})
	if err != nil {
		t.Fatal(err)
	}
	nodeClient := h5NodeClient(t, b, svid)
	wkey := newWorkloadKey(t)
	ws, err := nodeClient.SignWorkloadSVID(h5Ctx(t), &brokerv1.SignWorkloadSVIDRequest{EntryId: entry.GetId(), Selectors: sel, Csr: h5CSR(t, wkey, app)})
	if err != nil {
		t.Fatalf("SignWorkloadSVID with SPIRE minting: %v", err)
	}
	wchain := parseChain(t, ws.GetSvid())
	if wid, _, err := x509svid.Verify(wchain, spireBundle); err != nil || wid.String() != app {
		t.Fatalf("the workload SVID verifies against SPIRE's bundle as %v, %v; want %s", wid, err, app)
	}
	_, err = nodeClient.SignWorkloadSVID(h5Ctx(t), &brokerv1.SignWorkloadSVIDRequest{EntryId: entry.GetId(), Selectors: sel,
		Csr: h5CSR(t, wkey, "spiffe://writ.test/admin")})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), broker.ReasonCSRInvalid) {
		t.Fatalf("a workload CSR naming the admin: %v; want csr_invalid", err)
	}
	if strings.Contains(srv.proc.Log(), `spiffe_id="spiffe://writ.test/admin"`) {
		t.Fatal("SPIRE's log shows an SVID signed for the admin")
	}
}

// h5NodeClient is a broker client presenting svid.
func h5NodeClient(t testing.TB, b *h5Broker, svid *x509svid.SVID) brokerv1.BrokerClient {
	t.Helper()
	bundle, err := spiffebundle.Load(b.td, b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	conf := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return brokerv1.NewBrokerClient(conn)
}

func newWorkloadKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func h5CSR(t testing.TB, key *ecdsa.PrivateKey, id string) []byte {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{u}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func parseChain(t testing.TB, ders [][]byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, d := range ders {
		c, err := x509.ParseCertificate(d)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

// TestSideBySideBanOverTCPAsWritBroker: the broker reaches SPIRE's TCP
// API with mTLS, verifying the server against SPIRE's bundle and
// presenting its own SVID (spiffe://writ.test/broker), which SPIRE
// authorizes as an admin because it holds writ's bundle and lists that ID
// in admin_ids; the revoked node's SPIRE agent is banned. Without the
// admin_ids line SPIRE refuses the broker, and the failure is counted.
func TestSideBySideBanOverTCPAsWritBroker(t *testing.T) {
	for _, admin := range []bool{true, false} {
		t.Run(fmt.Sprintf("admin=%v", admin), func(t *testing.T) {
			extra := ""
			if admin {
				extra = `  admin_ids = ["spiffe://writ.test/broker"]`
			}
			srv := h5StartSPIREServer(t, "spire.test", extra, "")
			a := h5Authority(t)
			b := h5StartBroker(t, h5WritTD, a, fmt.Sprintf("spire:\n  address: 127.0.0.1:%d\n  trust_domain: spire.test\n  bundle: %s\n",
				srv.port, srv.bundlePEM(t)))
			caPath, _ := writCAPEM(t, b)
			srv.mustCLI(t, "bundle set", "-id", "spiffe://writ.test", "-path", caPath, "-format", "pem")
			nodeID := b.enrollAndAttest(t, b.agent(t, h5NewNode(t, a)))
			alias, _ := broker.AliasID(srv.td, nodeID)
			mine, _ := srv.h5JoinAgent(t, alias.String())

			if _, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID}); err != nil {
				t.Fatal(err)
			}
			if !admin {
				if !h5Eventually(30*time.Second, func() bool {
					return b.counter(t, "writ_broker_spire_bans_total", map[string]string{"outcome": "error"}) > 0
				}) {
					t.Fatal("no failed ban counted though SPIRE does not list the broker as an admin")
				}
				if srv.banned(t, mine) {
					t.Fatal("SPIRE banned an agent for a caller that is not its admin")
				}
				return
			}
			if !h5Eventually(30*time.Second, func() bool { return srv.banned(t, mine) }) {
				t.Fatalf("the SPIRE agent %s of the revoked node was not banned over TCP", mine)
			}
		})
	}
}

// TestSideBySideSPIRERotationPickedUp: with SPIRE minting, a CA SPIRE
// prepares is trusted and published by the broker before SPIRE mints with
// it (spire.bundle_refresh), so once it is activated the node's next SVID,
// signed by the new CA, verifies against the bundle the broker gives the
// agent, and the node keeps its identity.
func TestSideBySideSPIRERotationPickedUp(t *testing.T) {
	srv := h5StartSPIREServer(t, h5WritTD.Name(), "", "")
	a := h5Authority(t)
	b := h5StartBroker(t, h5WritTD, a, spireSection(srv, "  mint_svids: true\n  bundle_refresh: 200ms\n"))
	ag, agentDir := b.agentIn(t, h5NewNode(t, a))
	b.enrollAndAttest(t, ag)
	authorities := func() int {
		bundle, err := spiffebundle.Load(h5WritTD, b.bundlePath())
		if err != nil {
			t.Fatal(err)
		}
		return len(bundle.X509Authorities())
	}
	before := authorities() // writ's CA and SPIRE's

	var prepared struct {
		PreparedAuthority struct {
			AuthorityID string `json:"authority_id"`
		} `json:"prepared_authority"`
	}
	if err := json.Unmarshal([]byte(srv.mustCLI(t, "localauthority x509 prepare", "-output", "json")), &prepared); err != nil || prepared.PreparedAuthority.AuthorityID == "" {
		t.Fatalf("localauthority x509 prepare: %v %+v", err, prepared)
	}
	if !h5Eventually(30*time.Second, func() bool { return authorities() == before+1 }) {
		t.Fatalf("the broker's bundle holds %d X.509 authorities, want %d with SPIRE's prepared CA", authorities(), before+1)
	}
	srv.mustCLI(t, "localauthority x509 activate", "-authorityID", prepared.PreparedAuthority.AuthorityID)

	out, err := ag.Attest(h5Ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attest after SPIRE's CA rotated: %+v, %v", out, err)
	}
	chain, err := identity.LoadCerts(filepath.Join(agentDir, agent.SVIDFile))
	if err != nil {
		t.Fatal(err)
	}
	spireBundle, err := spiffebundle.Parse(h5WritTD, []byte(srv.mustCLI(t, "bundle show", "-format", "spiffe")))
	if err != nil {
		t.Fatal(err)
	}
	if _, chains, err := x509svid.Verify(chain, spireBundle); err != nil {
		t.Fatalf("the new node SVID does not verify against SPIRE's bundle: %v", err)
	} else if root := chains[0][len(chains[0])-1]; hex.EncodeToString(root.SubjectKeyId) != prepared.PreparedAuthority.AuthorityID {
		t.Fatalf("the new node SVID chains to SPIRE authority %x, want the newly activated %s", root.SubjectKeyId, prepared.PreparedAuthority.AuthorityID)
	}
}

// TestSideBySideRevokeBansWritPluginAgent: the mapping agrees with the
// writ SPIRE plugin. A swtpm node is enrolled in writ by its writ agent
// and attested to SPIRE by the writ NodeAttestor plugin, which names its
// SPIRE agent spiffe://spire.test/spire/agent/writ/<EK hash>; when writ
// revokes the node (found by that same EK hash), the broker bans exactly
// that agent, with no alias entry.
func TestSideBySideRevokeBansWritPluginAgent(t *testing.T) {
	a := swtpmtest.Shared(t)
	boot := tcglog.HonestBoot()
	server := startSPIREServer(t, spireServerConfig{TrustDomain: "spire.test", Plugins: writServerPlugin(t, fmt.Sprintf(
		"    ek_roots = %q\n    ek_intermediates = %q\n    policy = %q", a.RootPath, a.IntermediatePath, writPolicyFile(t, boot)))})
	b := h5StartBroker(t, h5WritTD, a, fmt.Sprintf("spire:\n  address: unix://%s\n  trust_domain: spire.test\n", server.socket))

	n := bootWritNode(t, a, boot)
	wa, err := agent.New(agent.Config{Broker: b.Addr(), TrustDomain: h5WritTD, Bundle: b.bundlePath(), DataDir: t.TempDir(),
		OpenTPM: func() (*prover.TPM, error) { return prover.Open(n.tp.Spec(), n.logPath) }})
	if err != nil {
		t.Fatal(err)
	}
	nodeID := b.enrollAndAttest(t, wa)
	want, err := broker.AgentID(spiffeid.RequireTrustDomainFromString("spire.test"), nodeID)
	if err != nil {
		t.Fatal(err)
	}
	if got := n.agentID(t, server); got != want.String() {
		t.Fatalf("the writ plugin names the node's SPIRE agent %s; writ maps node %s to %s", got, nodeID, want)
	}
	startSPIREAgent(t, server, spireAgentConfig{Plugins: n.plugin(t)})
	if h5BannedLine(server.MustCLI("agent", "show", "-spiffeID", want.String())) {
		t.Fatal("the plugin's agent is banned before anything was revoked")
	}

	if _, err := b.admin(t).RevokeNode(h5Ctx(t), &brokerv1.RevokeNodeRequest{NodeId: nodeID, Reason: "stolen"}); err != nil {
		t.Fatal(err)
	}
	if !h5Eventually(30*time.Second, func() bool {
		out, err := server.CLI("agent", "show", "-spiffeID", want.String())
		return err == nil && h5BannedLine(out)
	}) {
		t.Fatalf("the writ plugin's SPIRE agent %s of the revoked node was not banned", want)
	}
	if e, ok := b.lastAudit(t, "spire-ban"); !ok || e.Refs["agents"] != want.String() {
		t.Fatalf("spire-ban audit entry %+v; want it to name %s", e, want)
	}
}
