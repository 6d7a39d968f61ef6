package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
)

// createEntry creates e as the admin and returns its id.
func (b *testBroker) createEntry(t *testing.T, e *brokerv1.Entry) string {
	t.Helper()
	got, err := (&admin{b: b.Broker}).CreateEntry(b.adminCtx(t), &brokerv1.CreateEntryRequest{Entry: e})
	if err != nil {
		t.Fatal(err)
	}
	return got.GetId()
}

// workloadCSR is a CSR for a fresh P-256 key, as the agent makes it.
func workloadCSR(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// observed is what the agent saw of the workload goodEntry describes,
// and more.
func observed() []*brokerv1.Selector {
	return []*brokerv1.Selector{{Type: "unix", Value: "uid:1000"}, {Type: "unix", Value: "gid:1000"},
		{Type: "unix", Value: "sha256:" + strings.Repeat("ab", 32)}, {Type: "unix", Value: "path:/usr/bin/web"}}
}

// TestSignWorkloadSVID: a node in good standing gets an X.509-SVID for an
// entry parented to it, for a workload with all of the entry's
// selectors: the entry's SPIFFE ID and DNS names, the agent's key, the
// entry's TTL, verifiable with the returned bundle, and audited.
func TestSignWorkloadSVID(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx, node := b.passedNode(t, "n1")
	id := b.createEntry(t, goodEntry())
	csr := workloadCSR(t)
	resp, err := b.SignWorkloadSVID(ctx, &brokerv1.SignWorkloadSVIDRequest{EntryId: id, Selectors: observed(), Csr: csr})
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := spiffebundle.Parse(b.td, resp.GetBundle())
	if err != nil {
		t.Fatal(err)
	}
	var chain []*x509.Certificate
	for _, der := range resp.GetSvid() {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	got, _, err := x509svid.Verify(chain, bundle)
	if err != nil {
		t.Fatal(err)
	}
	leaf := chain[0]
	ttl := min(600*time.Second, b.cfg.SVIDTTL)
	req, _ := x509.ParseCertificateRequest(csr)
	switch {
	case got.String() != goodEntry().GetSpiffeId():
		t.Fatalf("SVID for %s, want %s", got, goodEntry().GetSpiffeId())
	case !slices.Equal(leaf.DNSNames, goodEntry().GetDnsNames()):
		t.Fatalf("DNS names %v", leaf.DNSNames)
	case !leaf.PublicKey.(*ecdsa.PublicKey).Equal(req.PublicKey):
		t.Fatal("the SVID does not certify the CSR's key")
	case time.Until(leaf.NotAfter) > ttl || time.Until(leaf.NotAfter) < ttl-time.Minute:
		t.Fatalf("SVID lives until %s, want %s (the entry's TTL, at most svid_ttl)", leaf.NotAfter, ttl)
	case resp.GetExpiresUnix() != leaf.NotAfter.Unix():
		t.Fatal("expires_unix is not the SVID's NotAfter")
	}
	audited := false
	for _, e := range b.auditEntries(t) {
		audited = audited || (e.Kind == "svid" && e.Decision == "allow" && e.Refs["entry"] == id && e.Refs["node"] == node.String())
	}
	if !audited {
		t.Fatal("the workload SVID was not audited")
	}
	svids, err := b.store.SVIDs(context.Background(), "n1")
	if err != nil || len(svids) != 1 || svids[0].SPIFFEID != goodEntry().GetSpiffeId() || svids[0].ResultID != "result-n1" ||
		svids[0].Serial != fmt.Sprintf("%x", leaf.SerialNumber) {
		t.Fatalf("stored SVIDs of n1: %+v, %v", svids, err)
	}
}

// TestSignWorkloadSVIDAttacks: each way to get a workload SVID the
// broker must not sign is refused with its reason code and audited.
func TestSignWorkloadSVIDAttacks(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	n1, _ := b.passedNode(t, "n1")
	n2, _ := b.passedNode(t, "n2")
	failed, _ := b.passedNode(t, "failed")
	revoked, _ := b.passedNode(t, "revoked")
	ctx := context.Background()
	if err := b.store.PutResult(ctx, store.Result{ID: "result-failed-2", NodeID: "failed", Time: time.Now().Add(time.Second),
		Findings: []attest.Finding{{Reason: attest.ReasonPCRMismatch, PCR: 0, Detail: "pcr 0"}},
		Sel:      b.rules().appr.Quote().Selection(), Policy: b.rules().appr.Policy().Ref()}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.SetNodeState(ctx, "failed", store.NodeFailed, "pcr_mismatch", time.Now()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.SetNodeState(ctx, "revoked", store.NodeRevoked, "stolen", time.Now()); err != nil {
		t.Fatal(err)
	}
	forN1 := b.createEntry(t, goodEntry())
	entryFor := func(parent string) string {
		e := goodEntry()
		e.Parent = parent
		return b.createEntry(t, e)
	}
	forFailed, forRevoked := entryFor("spiffe://writ.test/node/failed"), entryFor("spiffe://writ.test/node/revoked")
	badSig := workloadCSR(t)
	badSig[len(badSig)-1] ^= 1
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsaCSR, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, rsaKey)
	if err != nil {
		t.Fatal(err)
	}
	workload := b.as(t, spiffeid.RequireFromString(goodEntry().GetSpiffeId()))
	cases := []struct {
		name   string
		ctx    context.Context
		entry  string
		sels   []*brokerv1.Selector
		csr    []byte
		reason string
	}{
		{"no caller", context.Background(), forN1, observed(), workloadCSR(t), ReasonCallerUnauthenticated},
		{"a workload SVID as caller", workload, forN1, observed(), workloadCSR(t), ReasonCallerNotNode},
		{"another node's entry", n2, forN1, observed(), workloadCSR(t), ReasonEntryNotForNode},
		{"unknown entry", n1, "no-such-entry", observed(), workloadCSR(t), ReasonEntryUnknown},
		{"a selector missing", n1, forN1, observed()[:2], workloadCSR(t), ReasonSelectorsMismatch},
		{"no selectors", n1, forN1, nil, workloadCSR(t), ReasonSelectorsMismatch},
		{"selector with another value", n1, forN1, []*brokerv1.Selector{{Type: "unix", Value: "uid:0"},
			{Type: "unix", Value: "sha256:" + strings.Repeat("ab", 32)}}, workloadCSR(t), ReasonSelectorsMismatch},
		{"failed node", failed, forFailed, observed(), workloadCSR(t), ReasonAttestationFailed},
		{"revoked node", revoked, forRevoked, observed(), workloadCSR(t), ReasonNodeRevoked},
		{"CSR signature does not verify", n1, forN1, observed(), badSig, ReasonCSRInvalid},
		{"CSR not DER", n1, forN1, observed(), []byte("not a csr"), ReasonCSRInvalid},
		{"CSR missing", n1, forN1, observed(), nil, ReasonCSRInvalid},
		{"CSR with an RSA key", n1, forN1, observed(), rsaCSR, ReasonCSRInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := len(b.auditEntries(t))
			_, err := b.SignWorkloadSVID(c.ctx, &brokerv1.SignWorkloadSVIDRequest{EntryId: c.entry, Selectors: c.sels, Csr: c.csr})
			wantRefused(t, c.name, err, c.reason)
			es := b.auditEntries(t)
			if len(es) != before+1 || es[before].Kind != "svid" || es[before].Decision != "deny" || es[before].Reason != c.reason {
				t.Fatalf("refusal not audited as svid deny %s: %v", c.reason, es[before:])
			}
		})
	}
}

// TestWorkloadSVIDTTLCappedByStanding: a workload SVID never outlives the
// node's standing (its latest passing result plus max_attestation_age).
func TestWorkloadSVIDTTLCappedByStanding(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	res := store.Result{ID: "result-n3-old", NodeID: "n1", Time: time.Now().Add(-b.cfg.Writ.MaxAttestationAge + 30*time.Second),
		Passed: true, Sel: b.rules().appr.Quote().Selection(), Policy: b.rules().appr.Policy().Ref()}
	if err := b.store.PutNode(context.Background(), store.Node{ID: "n3", SPIFFEID: "spiffe://writ.test/node/n3", EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	res.NodeID = "n3"
	if err := b.store.PutResult(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.SetNodeState(context.Background(), "n3", store.NodeAttested, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	e := goodEntry()
	e.Parent, e.TtlSeconds = "spiffe://writ.test/node/n3", 0
	id := b.createEntry(t, e)
	resp, err := b.SignWorkloadSVID(b.as(t, spiffeid.RequireFromString("spiffe://writ.test/node/n3")),
		&brokerv1.SignWorkloadSVIDRequest{EntryId: id, Selectors: observed(), Csr: workloadCSR(t)})
	if err != nil {
		t.Fatal(err)
	}
	if b.cfg.SVIDTTL <= 30*time.Second {
		t.Fatalf("svid_ttl %s: the test needs it longer than the standing left (30s)", b.cfg.SVIDTTL)
	}
	if left := time.Until(time.Unix(resp.GetExpiresUnix(), 0)); left > 31*time.Second {
		t.Fatalf("the SVID lives %s more, past the node's standing (30s)", left)
	}
}

// TestNodeEntries: a node gets the entries parented to it by SPIFFE ID,
// by the policy of its latest passing result, or by a claim of that
// result that exists with that value; never another node's, another
// policy's, a claim with another value or an absent claim; a failed node
// gets none.
func TestNodeEntries(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx, _ := b.passedNode(t, "n1")
	res, err := b.store.LatestResult(context.Background(), "n1")
	if err != nil {
		t.Fatal(err)
	}
	res.ID, res.Time = "result-n1-claims", time.Now().Add(time.Second)
	res.Claims = attest.Claims{Boot: &attest.BootClaims{SecureBoot: &attest.SecureBootClaims{Enabled: true}}}
	if err := b.store.PutResult(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{
		"spiffe://writ.test/node/n1":          true,
		"spiffe://writ.test/node/n2":          false,
		"policy:test":                         true,
		"policy:test@1":                       true,
		"policy:test@2":                       false,
		"policy:other":                        false,
		"claim:boot.secureboot.enabled=true":  true,
		"claim:boot.secureboot.enabled=false": false,
		"claim:boot.kernel.cmdline=":          false, // absent is not a match, even for ""
		"claim:boot.secureboot.pk=":           false,
		"claim:boot.secureboot=true":          false,
	}
	ids := map[string]string{}
	for parent := range want {
		e := goodEntry()
		e.Parent = parent
		ids[b.createEntry(t, e)] = parent
	}
	resp, err := b.NodeEntries(ctx, &brokerv1.NodeEntriesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range resp.GetEntries() {
		got[ids[e.GetId()]] = true
	}
	for parent, w := range want {
		if got[parent] != w {
			t.Errorf("entry with parent %s: listed %v, want %v", parent, got[parent], w)
		}
	}
	// Failed now: none.
	res.ID, res.Time, res.Passed = "result-n1-failed", time.Now().Add(2*time.Second), false
	res.Findings = []attest.Finding{{Reason: attest.ReasonPCRMismatch, Detail: "pcr 0"}}
	if err := b.store.PutResult(context.Background(), res); err != nil {
		t.Fatal(err)
	}
	_, err = b.NodeEntries(ctx, &brokerv1.NodeEntriesRequest{})
	wantRefused(t, "failed node lists entries", err, ReasonAttestationFailed)
}
