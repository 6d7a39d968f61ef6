package test

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
)

// gatewaySVID issues an SVID for a gateway with a software key, from the
// broker's own CA.
func gatewaySVID(t testing.TB, e *execEnv) *x509svid.SVID {
	t.Helper()
	ca, err := identity.LoadOrCreateCA(e.b.cfg.DataDir, td)
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	id := spiffeid.RequireFromString("spiffe://" + td.Name() + "/gateway")
	cert, err := ca.IssueX509SVID(id, key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}
}

// waitFor waits up to d for cond, re-checking at every watcher change.
func waitFor(t testing.TB, w *enforce.Watcher, d time.Duration, cond func() bool) bool {
	t.Helper()
	deadline := time.After(d)
	for {
		changed := w.Changed() // before the check: a change in between is not missed
		if cond() {
			return true
		}
		select {
		case <-changed:
		case <-deadline:
			return cond()
		}
	}
}

// TestNodeFailureReachesSubscribedShim: a node whose PCRs change fails its
// next attestation, gets no SVID renewal, and a subscribed enforcement
// point refuses its writs at once; a revocation follows the same path and
// is in the broker's audit log.
func TestNodeFailureReachesSubscribedShim(t *testing.T) {
	e := newExecEnv(t, "")
	bundle, err := spiffebundle.Load(td, e.b.bundlePath())
	if err != nil {
		t.Fatal(err)
	}
	w, err := enforce.Watch(ctx(t), e.b.Addr(), gatewaySVID(t, e), bundle, td)
	if err != nil {
		t.Fatal(err)
	}
	if !waitFor(t, w, 10*time.Second, w.Connected) {
		t.Fatal("the watcher did not subscribe")
	}
	raw, err := os.ReadFile(e.request(t, touch("marker")))
	if err != nil {
		t.Fatal(err)
	}
	claims, err := artifact.ParseUnverified(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Check(claims); err != nil {
		t.Fatalf("a good node's writ refused: %v", err)
	}
	svidBefore, err := os.ReadFile(filepath.Join(e.dataDir, nodestate.SVIDFile))
	if err != nil {
		t.Fatal(err)
	}

	// The node's state changes; its next attestation fails.
	e.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}
	out, err := ag.Attest(ctx(t))
	if err != nil || out.Passed {
		t.Fatalf("attestation after the PCR change: %+v %v", out, err)
	}
	if !waitFor(t, w, 5*time.Second, func() bool { return enforce.ReasonOf(w.Check(claims)) == enforce.ReasonNodeFailed }) {
		t.Fatalf("the subscribed shim still accepts the failed node's writ: %v", w.Check(claims))
	}
	svidAfter, _ := os.ReadFile(filepath.Join(e.dataDir, nodestate.SVIDFile))
	if string(svidAfter) != string(svidBefore) {
		t.Fatal("the node's SVID was renewed on a failed attestation")
	}
	// New writs are refused at the broker too.
	e.wantExec(t, "attestation_failed", "marker", touch("marker"))

	// Revocation: through the admin CLI, as an operator would.
	cfgPath := filepath.Join(filepath.Dir(e.b.cfg.DataDir), "broker.yaml")
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	code, stdout, stderr := e.run(t, "node", "revoke", "--config", cfgPath, "--broker", e.b.Addr(), "--reason", "disk stolen", nodes[0].SPIFFEID)
	if code != 0 || !strings.Contains(stdout, "state     revoked") {
		t.Fatalf("writ node revoke: exit %d\n%s%s", code, stdout, stderr)
	}
	if !waitFor(t, w, 5*time.Second, func() bool { return enforce.ReasonOf(w.Check(claims)) == enforce.ReasonNodeRevoked }) {
		t.Fatalf("the subscribed shim did not learn of the revocation: %v", w.Check(claims))
	}
	if out, err := ag.Attest(ctx(t)); err == nil {
		t.Fatalf("a revoked node attested: %+v", out)
	}
	entries, err := audit.Read(filepath.Join(e.b.cfg.DataDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	var revoked bool
	for _, en := range entries {
		revoked = revoked || (en.Kind == "node-revoked" && en.Reason == "disk stolen" && en.Subject == nodes[0].SPIFFEID)
	}
	if !revoked {
		t.Fatal("the revocation is not in the broker's audit log")
	}
	code, stdout, _ = e.run(t, "node", "list", "--config", cfgPath, "--broker", e.b.Addr())
	if code != 0 || !strings.Contains(stdout, "revoked") {
		t.Fatalf("writ node list: exit %d\n%s", code, stdout)
	}
	code, stdout, _ = e.run(t, "node", "evidence", "--config", cfgPath, "--broker", e.b.Addr(), nodes[0].ID)
	if code != 0 || !strings.Contains(stdout, `"quote"`) || !strings.Contains(stdout, `"event_log"`) {
		t.Fatalf("writ node evidence: exit %d\n%.400s", code, stdout)
	}
}

// TestStaleNodeIsMarked: a node that stops attesting is marked stale after
// stale_after and its writs are refused.
func TestStaleNodeIsMarked(t *testing.T) {
	e := newExecEnv(t, fmt.Sprintf("attestation:\n  interval: 1s\n  stale_after: 1s\nwrit:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", td.Name(), shDigest(t)))
	deadline := time.Now().Add(10 * time.Second)
	for {
		nodes, err := e.b.Store().Nodes(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if len(nodes) == 1 && nodes[0].State == "stale" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("node not marked stale: %+v", nodes)
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.wantExec(t, broker.ReasonNodeStale, "marker", touch("marker"))
}

// TestWebhookSignedEvent: a node failure is POSTed to a webhook as a JWS
// the writ keys of the bundle verify.
func TestWebhookSignedEvent(t *testing.T) {
	got := make(chan string, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		got <- r.Header.Get("Content-Type") + "\n" + string(body)
	}))
	defer srv.Close()
	e := newExecEnv(t, fmt.Sprintf("events:\n  webhooks: [%q]\nwrit:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [any]\n", srv.URL, td.Name()))
	e.sw.Extend(t, 7, sha256.Sum256([]byte("SecureBoot=0")))
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}
	if out, err := ag.Attest(ctx(t)); err != nil || out.Passed {
		t.Fatalf("attestation: %+v %v", out, err)
	}
	keys := e.bundleKeys(t)
	for {
		select {
		case msg := <-got:
			ct, token, _ := strings.Cut(msg, "\n")
			payload, err := artifact.VerifyPayload(token, keys, "writ-event+jwt")
			if ct != "application/jose" || err != nil {
				t.Fatalf("webhook body: content type %q, verify: %v", ct, err)
			}
			var ev struct{ State, Reason string }
			if err := json.Unmarshal(payload, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.State == "failed" {
				if ev.Reason != "eventlog_replay_failed" { // PCR 7 moved without a logged event
					t.Fatalf("failed event with reason %q", ev.Reason)
				}
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no failed event reached the webhook")
		}
	}
}
