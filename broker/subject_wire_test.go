package broker

import (
	"context"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// wireNode is a node's mTLS client of a started test broker.
type wireNode struct {
	id   spiffeid.ID
	leaf *x509.Certificate
	c    brokerv1.BrokerClient
}

// nodeClient connects to the started broker as node fp (a node SVID from
// the broker's CA) over real mTLS.
func (b *testBroker) nodeClient(t *testing.T, fp string) wireNode {
	t.Helper()
	id := spiffeid.RequireFromString("spiffe://writ.test/node/" + fp)
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := b.ca.IssueX509SVID(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
	conf := tlsconfig.MTLSClientConfig(svid, b.ca.Bundle(), tlsconfig.AuthorizeID(identity.BrokerID(b.td)))
	conn, err := grpc.NewClient(b.Addr(), grpc.WithTransportCredentials(credentials.NewTLS(conf)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return wireNode{id: id, leaf: cert, c: brokerv1.NewBrokerClient(conn)}
}

// workloadSVID has node n sign an X.509-SVID for entry, as its agent does;
// it returns the chain as DER.
func (n wireNode) workloadSVID(t *testing.T, ctx context.Context, entry string) [][]byte {
	t.Helper()
	resp, err := n.c.SignWorkloadSVID(ctx, &brokerv1.SignWorkloadSVIDRequest{EntryId: entry, Selectors: observed(), Csr: workloadCSR(t)})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetSvid()
}

// workloadRules let nodes run anything, and workloads under /app/ run
// anything, scripts with the interpreter of scriptReq.
var workloadRules = defaultRules +
	"    - subject: spiffe://writ.test/app/*\n      kind: exec\n      executables: [any]\n" +
	"      interpreters: [\"sha256:" + strings.Repeat("ee", 32) + "\"]\n"

// scriptReq is a #! script whose digest is 5a…, run by the interpreter ee….
func scriptReq() *brokerv1.ExecAction {
	return &brokerv1.ExecAction{Argv: []string{"/opt/job.sh"}, Path: "/opt/job.sh", Sha256: strings.Repeat("5a", 32), Cwd: "/",
		Interpreter: "/bin/sh", InterpreterSha256: strings.Repeat("ee", 32)}
}

// TestRequestWritWorkloadSubject: over real mTLS, a node in good
// standing gets a writ for its workload: sub is the entry's SPIFFE ID, cnf
// the workload SVID leaf it gave, aud and att the node's; it verifies
// against the workload leaf only, not the node's; the issue is audited
// with the node and the entry.
func TestRequestWritWorkloadSubject(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, workloadRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	b.passedNode(t, "n1")
	entry := b.createEntry(t, goodEntry())
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	n1 := b.nodeClient(t, "n1")
	svid := n1.workloadSVID(t, ctx, entry)
	resp, err := n1.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(),
		Workload: &brokerv1.WorkloadSubject{EntryId: entry, Selectors: observed(), Svid: svid}})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(svid[0])
	if err != nil {
		t.Fatal(err)
	}
	digest, err := execAction(execReq()).Digest()
	if err != nil {
		t.Fatal(err)
	}
	opts := artifact.VerifyOptions{Keys: b.writ.keySet(), Audience: n1.id.String(), SVID: leaf, Action: digest,
		PCRs: "sha256:" + strings.Repeat("11", 32)}
	claims, err := artifact.Verify(resp.GetWrit(), opts)
	if err != nil {
		t.Fatalf("the workload writ does not verify against the workload SVID: %v", err)
	}
	if claims.Subject != goodEntry().GetSpiffeId() || claims.Att.Node != n1.id.String() || claims.Audience != n1.id.String() {
		t.Fatalf("sub %s, att.node %s, aud %s; want the entry's SPIFFE ID and the node", claims.Subject, claims.Att.Node, claims.Audience)
	}
	opts.SVID = n1.leaf
	if _, err := artifact.Verify(resp.GetWrit(), opts); artifact.ReasonOf(err) != artifact.ReasonSubjectMismatch {
		t.Fatalf("verified against the node's SVID: %v, want %s", err, artifact.ReasonSubjectMismatch)
	}
	audited := false
	for _, e := range b.auditEntries(t) {
		audited = audited || (e.Kind == "writ-issue" && e.Subject == claims.Subject && e.Refs["jti"] == claims.ID &&
			e.Refs["node"] == n1.id.String() && e.Refs["entry"] == entry)
	}
	if !audited {
		t.Fatal("the workload writ's issue was not audited with its node and entry")
	}
}

// TestRequestWritWorkloadAttacks: each way a node could get a writ for a
// workload it must not is refused over real mTLS with its reason code, and
// audited as writ-deny.
func TestRequestWritWorkloadAttacks(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, workloadRules)
	b.cfg.Listen, b.cfg.BundleListen = "127.0.0.1:0", "127.0.0.1:0"
	b.passedNode(t, "n1")
	b.passedNode(t, "n2")
	entryOn := func(parent, id string, actions ...string) string {
		e := goodEntry()
		e.Parent, e.SpiffeId, e.Actions = parent, id, actions
		return b.createEntry(t, e)
	}
	const n1ID, n2ID = "spiffe://writ.test/node/n1", "spiffe://writ.test/node/n2"
	cd := "exec:sha256:" + strings.Repeat("cd", 32)
	web := entryOn(n1ID, "spiffe://writ.test/app/web", cd)
	db := entryOn(n1ID, "spiffe://writ.test/app/db", cd)
	onN2 := entryOn(n2ID, "spiffe://writ.test/app/web", cd)
	none := entryOn(n1ID, "spiffe://writ.test/app/idle")
	noRule := entryOn(n1ID, "spiffe://writ.test/svc/batch", cd)
	interpOnly := entryOn(n1ID, "spiffe://writ.test/app/sh", "exec:sha256:"+strings.Repeat("ee", 32))
	script := entryOn(n1ID, "spiffe://writ.test/app/job", "exec:sha256:"+strings.Repeat("5a", 32))
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n1, n2 := b.nodeClient(t, "n1"), b.nodeClient(t, "n2")
	svid := map[string][][]byte{}
	for _, e := range []string{web, db, none, noRule, interpOnly, script} {
		svid[e] = n1.workloadSVID(t, ctx, e)
	}
	svid[onN2] = n2.workloadSVID(t, ctx, onN2)

	foreignCA, err := identity.LoadOrCreateCA(t.TempDir(), b.td)
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	webID := spiffeid.RequireFromString("spiffe://writ.test/app/web")
	foreign, err := foreignCA.IssueWorkloadSVID(webID, key.Public(), time.Hour, nil)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := b.ca.IssueWorkloadSVID(webID, key.Public(), time.Nanosecond, nil)
	if err != nil {
		t.Fatal(err)
	}
	onOtherNode, err := n2.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Until(expired.NotAfter.Add(time.Second)))

	ws := func(entry string, chain [][]byte) *brokerv1.WorkloadSubject {
		return &brokerv1.WorkloadSubject{EntryId: entry, Selectors: observed(), Svid: chain}
	}
	other := execReq()
	other.Sha256 = strings.Repeat("0f", 32)
	cases := []struct {
		name   string
		node   wireNode
		req    *brokerv1.WritRequest
		reason string
	}{
		{"unknown entry", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws("no-such-entry", svid[web])}, ReasonEntryUnknown},
		{"another node's entry", n2, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, svid[web])}, ReasonEntryNotForNode},
		{"another node's entry, its own SVID", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(onN2, svid[onN2])}, ReasonEntryNotForNode},
		{"selectors that do not match", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: &brokerv1.WorkloadSubject{
			EntryId: web, Selectors: []*brokerv1.Selector{{Type: "unix", Value: "uid:1000"}}, Svid: svid[web]}}, ReasonSelectorsMismatch},
		{"no SVID", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, nil)}, ReasonWorkloadSVIDInvalid},
		{"an SVID that is not DER", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, [][]byte{[]byte("x")})}, ReasonWorkloadSVIDInvalid},
		{"an SVID from a foreign CA", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, [][]byte{foreign.Raw})}, ReasonWorkloadSVIDInvalid},
		{"an expired SVID", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, [][]byte{expired.Raw})}, ReasonWorkloadSVIDInvalid},
		{"the SVID of another entry", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, svid[db])}, ReasonWorkloadSVIDMismatch},
		{"the node's own SVID", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, [][]byte{n1.leaf.Raw})}, ReasonWorkloadSVIDMismatch},
		{"an action not in the entry's", n1, &brokerv1.WritRequest{Exec: other, Workload: ws(web, svid[web])}, ReasonEntryActionDenied},
		{"an entry with no actions", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(none, svid[none])}, ReasonEntryActionDenied},
		{"a script whose interpreter alone is listed", n1, &brokerv1.WritRequest{Exec: scriptReq(), Workload: ws(interpOnly, svid[interpOnly])}, ReasonEntryActionDenied},
		{"no rule for the entry's SPIFFE ID (node rules do not apply)", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(noRule, svid[noRule])}, ReasonActionDenied},
		{"a parent issued on another node", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, svid[web]), Parent: onOtherNode.GetJti()}, ReasonParentInvalid},
		{"an audience no rule lists", n1, &brokerv1.WritRequest{Exec: execReq(), Workload: ws(web, svid[web]), Audience: "spiffe://writ.test/app/web"}, ReasonAudienceDenied},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(b.auditEntries(t))
			_, err := c.node.c.RequestWrit(ctx, c.req)
			wantRefused(t, c.name, err, c.reason)
			es := b.auditEntries(t)
			if len(es) != before+1 || es[before].Kind != "writ-deny" || es[before].Reason != c.reason || es[before].Subject != c.node.id.String() {
				t.Fatalf("refusal not audited as writ-deny %s of %s: %v", c.reason, c.node.id, es[before:])
			}
		})
	}

	// The same requests done right are allowed: the refusals above come
	// from what each changed. A script's entry lists the script's digest.
	parent, err := n1.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	if err != nil {
		t.Fatal(err)
	}
	for name, req := range map[string]*brokerv1.WritRequest{
		"web":                        {Exec: execReq(), Workload: ws(web, svid[web])},
		"web under the node's writ":  {Exec: execReq(), Workload: ws(web, svid[web]), Parent: parent.GetJti()},
		"a script its entry names":   {Exec: scriptReq(), Workload: ws(script, svid[script])},
		"db under the node's writ":   {Exec: execReq(), Workload: ws(db, svid[db]), Parent: parent.GetJti()},
		"the node under the web one": {Exec: execReq(), Parent: mustJTI(t, n1, ctx, ws(web, svid[web]))},
	} {
		if _, err := n1.c.RequestWrit(ctx, req); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// mustJTI is the jti of a writ n gets for its workload w.
func mustJTI(t *testing.T, n wireNode, ctx context.Context, w *brokerv1.WorkloadSubject) string {
	t.Helper()
	resp, err := n.c.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq(), Workload: w})
	if err != nil {
		t.Fatal(err)
	}
	return resp.GetJti()
}
