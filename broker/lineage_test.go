package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// testBroker is a broker on a real SQLite store in a temporary directory,
// not listening: tests call its handlers with a caller in the context.
type testBroker struct {
	*Broker
	dir     string
	stopped bool
}

func (b *testBroker) stop(t testing.TB) {
	t.Helper()
	if b.stopped {
		return
	}
	b.stopped = true
	if err := b.Stop(); err != nil {
		t.Errorf("stop: %v", err)
	}
}

// writeTestConfig writes a broker config (policy version v, rules as YAML
// list items) into dir and returns its path.
func writeTestConfig(t testing.TB, dir string, version int, rules string) string {
	t.Helper()
	pcr0 := strings.Repeat("00", 32)
	cfg := fmt.Sprintf(`trust_domain: writ.test
data_dir: data
audit:
  signer: file
ek:
  allowed_keys: ["sha256:%s"]
policy:
  id: test
  version: %d
  pcrs:
    0: ["sha256:%s"]
writ:
  rules:
%s`, strings.Repeat("ab", 32), version, pcr0, rules)
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// defaultRules let every node of writ.test run any executable.
const defaultRules = "    - subject: spiffe://writ.test/node/*\n      kind: exec\n      executables: [any]\n"

func newTestBroker(t testing.TB, dir string, version int, rules string) *testBroker {
	t.Helper()
	return brokerFrom(t, dir, writeTestConfig(t, dir, version, rules), nil)
}

// brokerFrom is a broker (not started) of the configuration file at path,
// its test directory dir, logging to log (nil: slog's default), stopped
// when the test ends.
func brokerFrom(t testing.TB, dir, path string, log *slog.Logger) *testBroker {
	t.Helper()
	cfg, err := LoadConfig(path, false)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	tb := &testBroker{Broker: b, dir: dir}
	t.Cleanup(func() { tb.stop(t) })
	return tb
}

// passedNode enrolls node id with a fresh passing result under the
// broker's loaded policy and returns a context in which it is the mTLS
// caller, with an SVID from the broker's CA.
func (b *testBroker) passedNode(t testing.TB, id string) (context.Context, spiffeid.ID) {
	t.Helper()
	ctx := context.Background()
	sid := spiffeid.RequireFromString("spiffe://writ.test/node/" + id)
	if err := b.store.PutNode(ctx, store.Node{ID: id, SPIFFEID: sid.String(), EnrolledAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	res := store.Result{ID: "result-" + id, NodeID: id, Time: time.Now(), Passed: true,
		PCRDigest: "sha256:" + strings.Repeat("11", 32), Sel: b.rules().appr.Quote().Selection(), Policy: b.rules().appr.Policy().Ref()}
	if err := b.store.PutResult(ctx, res); err != nil {
		t.Fatal(err)
	}
	if _, err := b.store.SetNodeState(ctx, id, store.NodeAttested, "", time.Now()); err != nil {
		t.Fatal(err)
	}
	return b.as(t, sid), sid
}

// as returns a context whose mTLS peer presents an SVID for id.
func (b *testBroker) as(t testing.TB, id spiffeid.ID) context.Context {
	t.Helper()
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := b.ca.IssueX509SVID(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	state := tls.ConnectionState{PeerCertificates: []*x509.Certificate{cert}}
	return peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{State: state}})
}

func execReq() *brokerv1.ExecAction {
	return &brokerv1.ExecAction{Argv: []string{"/usr/bin/true"}, Path: "/usr/bin/true", Sha256: strings.Repeat("cd", 32), Cwd: "/"}
}

// wantRefused checks that err is a refusal with reason.
func wantRefused(t *testing.T, what string, err error, reason string) {
	t.Helper()
	if got := brokerv1.ReasonOf(err); got != reason {
		t.Fatalf("%s: got %v (reason %q), want a refusal with %s", what, err, got, reason)
	}
}

// TestRequestWritParentMustBeLiveSameSubject: a caller cannot name as
// parent a jti the broker never issued, nor another subject's writ (item
// 9: lineage is not caller-chosen). A live writ of its own is accepted.
func TestRequestWritParentMustBeLiveSameSubject(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctxA, _ := b.passedNode(t, "aaaa")
	ctxB, _ := b.passedNode(t, "bbbb")

	_, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Parent: "made-up-jti"})
	wantRefused(t, "an unknown parent", err, ReasonParentInvalid)

	other, err := b.RequestWrit(ctxB, &brokerv1.WritRequest{Exec: execReq()})
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Parent: other.GetJti()})
	wantRefused(t, "another subject's writ as parent", err, ReasonParentInvalid)

	own, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq()})
	if err != nil {
		t.Fatal(err)
	}
	child, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Parent: own.GetJti()})
	if err != nil {
		t.Fatalf("a live writ of the same subject refused as parent: %v", err)
	}
	claims, err := artifact.VerifySignature(child.GetWrit(), b.writ.keySet())
	if err != nil || claims.Parent != own.GetJti() {
		t.Fatalf("child writ: par %q, %v; want %s", claims.Parent, err, own.GetJti())
	}
}

// TestRequestWritParentExpired: a parent past its exp is refused, even
// one this broker issued to the same subject.
func TestRequestWritParentExpired(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctxA, sid := b.passedNode(t, "aaaa")
	past := time.Now().Add(-time.Hour)
	if err := b.store.PutIssuedWrit(context.Background(), store.IssuedWrit{JTI: "old", Subject: sid.String(), Node: sid.String(),
		IssuedAt: past.Add(-time.Minute), ExpiresAt: past}); err != nil {
		t.Fatal(err)
	}
	_, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Parent: "old"})
	wantRefused(t, "an expired parent", err, ReasonParentExpired)
}

// TestRequestWritAudience: by default a writ names the caller's own node;
// any other audience must be one a rule allowing the action lists.
func TestRequestWritAudience(t *testing.T) {
	const gateway = "spiffe://writ.test/gateway/payments"
	rules := defaultRules + "    - subject: spiffe://writ.test/node/*\n      kind: exec\n      executables: [\"sha256:" + strings.Repeat("ef", 32) + "\"]\n" +
		"      audiences: [\"spiffe://writ.test/gateway/*\"]\n"
	b := newTestBroker(t, t.TempDir(), 1, rules)
	ctxA, sid := b.passedNode(t, "aaaa")

	for _, aud := range []string{"spiffe://writ.test/node/bbbb", "spiffe://evil.test/x", gateway, "not a spiffe id"} {
		_, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Audience: aud})
		wantRefused(t, "audience "+aud, err, ReasonAudienceDenied)
	}
	for _, aud := range []string{"", sid.String()} {
		resp, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: execReq(), Audience: aud})
		if err != nil {
			t.Fatalf("audience %q: %v", aud, err)
		}
		if c, _ := artifact.ParseUnverified(resp.GetWrit()); c.Audience != sid.String() {
			t.Fatalf("audience %q: aud %q, want %s", aud, c.Audience, sid)
		}
	}
	gw := execReq()
	gw.Sha256 = strings.Repeat("ef", 32)
	resp, err := b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: gw, Audience: gateway})
	if err != nil {
		t.Fatalf("an audience the rule lists: %v", err)
	}
	if c, _ := artifact.ParseUnverified(resp.GetWrit()); c.Audience != gateway {
		t.Fatalf("aud %q, want %s", c.Audience, gateway)
	}
	_, err = b.RequestWrit(ctxA, &brokerv1.WritRequest{Exec: gw, Audience: "spiffe://writ.test/gateway"})
	wantRefused(t, "the prefix itself", err, ReasonAudienceDenied)
}

// TestRequestWritPolicyChanged: a result recorded under another policy
// than the one now loaded yields no writ: its PCR digest and the loaded
// policy's selection would not belong together.
func TestRequestWritPolicyChanged(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	b.passedNode(t, "aaaa")
	b.stop(t)
	b2 := newTestBroker(t, dir, 2, defaultRules)
	ctx := b2.as(t, spiffeid.RequireFromString("spiffe://writ.test/node/aaaa"))
	_, err := b2.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	wantRefused(t, "a result under policy test@1 with test@2 loaded", err, ReasonAttestationPolicyChanged)
}

// A result's PCR digest covers the selection it was quoted over: a writ
// names that selection, and a result whose selection is not the loaded
// policy's (a policy edited without a new version, or a result of an
// older broker, which recorded none) is refused rather than paired with
// another selection.
func TestRequestWritSelectionFromTheResult(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	ctx, _ := b.passedNode(t, "aaaa")
	resp, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := artifact.ParseUnverified(resp.GetWrit())
	if err != nil {
		t.Fatal(err)
	}
	if want := b.rules().appr.Quote().Selection(); !slices.Equal(claims.Att.Sel, want) || claims.Att.PCRs != "sha256:"+strings.Repeat("11", 32) {
		t.Fatalf("att.sel %v pcrs %s, want the result's: %v", claims.Att.Sel, claims.Att.PCRs, want)
	}

	for name, sel := range map[string][]int{"another selection": {22}, "no selection (an older broker's result)": nil} {
		res, err := b.store.LatestResult(context.Background(), "aaaa")
		if err != nil {
			t.Fatal(err)
		}
		res.ID, res.Time, res.Sel = res.ID+"-"+strings.Fields(name)[0], time.Now(), sel
		if err := b.store.PutResult(context.Background(), res); err != nil {
			t.Fatal(err)
		}
		_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
		wantRefused(t, name, err, ReasonAttestationPolicyChanged)
	}
}
