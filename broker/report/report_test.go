package report

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

const td = "writ.test"

var (
	now    = time.Date(2026, 12, 2, 9, 0, 0, 0, time.UTC)
	nodeA  = "spiffe://writ.test/node/" + strings.Repeat("a", 64)
	nodeB  = "spiffe://writ.test/node/" + strings.Repeat("b", 64)
	nodeC  = "spiffe://other.test/node/" + strings.Repeat("c", 64)
	script = `<script>alert(1)</script>`
)

// fixture is a broker store with three nodes and file-key logs: the
// broker's, a gateway's and one that claims to be node A's.
type fixture struct {
	st                           *store.SQLite
	brokerLog, gatewayLog, nodeA string
	brokerKey, gatewayKey        TrustedKey
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "broker.db")
	w, err := store.OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	// A: attested, fresh pass, anchored a minute ago. B: failed, its
	// state reason names <script>, no anchor. C: revoked, another domain.
	for _, n := range []struct {
		id, state, reason string
		passed            bool
		anchorAge         time.Duration
	}{
		{nodeA, "attested", "", true, time.Minute},
		{nodeB, "failed", script, false, 0},
		{nodeC, "revoked", "stolen", true, time.Hour},
	} {
		fp := n.id[strings.LastIndex(n.id, "/")+1:]
		if err := w.PutNode(ctx, store.Node{ID: fp, SPIFFEID: n.id, AKPublic: []byte("ak"), EnrolledAt: now.Add(-time.Hour)}); err != nil {
			t.Fatal(err)
		}
		res := store.Result{ID: "r-" + fp[:4], NodeID: fp, Time: now.Add(-2 * time.Minute), Passed: n.passed, Policy: "p@1"}
		if !n.passed {
			res.Findings = []attest.Finding{{Reason: "pcr_mismatch", Detail: "PCR 4"}}
		}
		if err := w.PutResult(ctx, res); err != nil {
			t.Fatal(err)
		}
		if _, err := w.SetNodeState(ctx, fp, store.NodeState(n.state), n.reason, now); err != nil {
			t.Fatal(err)
		}
		if n.anchorAge > 0 {
			if err := w.PutAuditAnchor(ctx, store.AuditAnchor{NodeID: fp, Size: 5, Root: []byte("r"), Checkpoint: []byte("cp"),
				ResultID: res.ID, AnchoredAt: now.Add(-n.anchorAge)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenSQLiteReadOnly(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })

	f := &fixture{st: st}
	f.brokerLog, f.brokerKey = writeLog(t, "writ.dev/audit/"+td+"/broker", []audit.Entry{
		{Kind: "writ-issue", Subject: nodeA, Decision: "allow", Time: now.Add(-time.Hour)},
		{Kind: "writ-issue", Subject: "spiffe://writ.test/workload", Decision: "allow", Refs: map[string]string{"node": nodeA}, Time: now.Add(-time.Minute)},
		{Kind: "writ-deny", Subject: nodeB, Decision: "deny", Reason: "attestation_failed", Time: now.Add(-time.Minute)},
		{Kind: "writ-deny", Subject: "", Decision: "deny", Reason: script, Time: now.Add(-time.Minute)},
		{Kind: "attest", Subject: nodeA, Decision: "pass", Time: now.Add(-time.Minute)},
	})
	f.gatewayLog, f.gatewayKey = writeLog(t, "writ.dev/audit/"+td+"/gateway", []audit.Entry{
		{Kind: "mcp-call", Subject: nodeA, Decision: "allow", Time: now.Add(-time.Minute)},
		{Kind: "mcp-call", Subject: "spiffe://writ.test/agent", Decision: "deny", Reason: "writ_missing", Time: now.Add(-time.Minute)},
		{Kind: "mcp-call", Subject: "spiffe://writ.test/agent", Decision: "deny", Reason: "writ_missing", Time: now.Add(-time.Minute)},
	})
	// Node A's log, signed by a file key: a node's log must verify
	// against what the broker attested, so it does not.
	f.nodeA, _ = writeLog(t, audit.NodeOrigin(nodeA), []audit.Entry{
		{Kind: "exec-allow", Subject: nodeA, Decision: "allow", Time: now.Add(-time.Minute)},
	})
	return f
}

// writeLog writes a checkpointed log with a file key and returns its
// directory and its key.
func writeLog(t *testing.T, origin string, entries []audit.Entry) (string, TrustedKey) {
	t.Helper()
	data := t.TempDir()
	dir := filepath.Join(data, "audit")
	l, err := audit.OpenWithFileKey(data, dir, origin)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, e := range entries {
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	pub, err := identity.LoadPublicKey(filepath.Join(data, audit.FilePublicKeyName))
	if err != nil {
		t.Fatal(err)
	}
	return dir, TrustedKey{Name: origin, Opts: audit.VerifyOptions{TrustedKey: pub, AllowFileKey: true}}
}

func (f *fixture) build(t *testing.T, opts Options) *Report {
	t.Helper()
	opts.Store, opts.Now = f.st, now
	if opts.Logs == nil {
		opts.Logs = []string{f.brokerLog, f.gatewayLog}
		opts.Keys = []TrustedKey{f.brokerKey, f.gatewayKey}
	}
	r, err := Build(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *Report) node(t *testing.T, id string) Node {
	t.Helper()
	for _, n := range r.Nodes {
		if n.SPIFFEID == id {
			return n
		}
	}
	t.Fatalf("no node %s in the report", id)
	return Node{}
}

func TestStandingAndAnchors(t *testing.T) {
	f := newFixture(t)
	r := f.build(t, Options{MaxAttestationAge: 5 * time.Minute})
	s := r.Summary.Standing
	if s.Nodes != 3 || s.Attested != 1 || s.GoodStanding != 1 || s.Failed != 1 || s.Revoked != 1 || s.GoodStandingShare != 1.0/3 {
		t.Fatalf("standing %+v", s)
	}
	if len(r.TrustDomains) != 2 || r.TrustDomains[0].TrustDomain != "other.test" || r.TrustDomains[1].GoodStandingShare != 0.5 {
		t.Fatalf("trust domains %+v", r.TrustDomains)
	}
	a, b := r.node(t, nodeA), r.node(t, nodeB)
	if !a.GoodStanding || a.Anchor == nil || a.Anchor.AgeSeconds != 60 || a.AnchorStale {
		t.Fatalf("node A %+v", a)
	}
	if b.GoodStanding || b.Anchor != nil || !b.AnchorStale || b.LatestResult.Reason != "pcr_mismatch" {
		t.Fatalf("node B %+v", b)
	}
	if r.Summary.StaleAnchors != 1 { // B; C is revoked
		t.Fatalf("stale anchors %d; want 1", r.Summary.StaleAnchors)
	}
	// Stale after 30s: A's anchor is stale too.
	if r := f.build(t, Options{StaleAfter: 30 * time.Second}); !r.node(t, nodeA).AnchorStale || r.Summary.StaleAnchors != 2 {
		t.Fatalf("with stale after 30s: A %+v, %d stale", r.node(t, nodeA), r.Summary.StaleAnchors)
	}
	// A pass older than the broker allows is not good standing.
	if r := f.build(t, Options{MaxAttestationAge: time.Minute}); r.node(t, nodeA).GoodStanding {
		t.Fatal("a node whose pass is older than max_attestation_age is in good standing")
	}
}

func TestDecisionsFromVerifiedLogs(t *testing.T) {
	f := newFixture(t)
	r := f.build(t, Options{})
	if !r.OK() || r.Summary.LogsVerified != 2 {
		t.Fatalf("logs %+v", r.Logs)
	}
	d := r.Summary.Decisions
	if d.Writ == nil || d.Writ.Allowed != 2 || d.Writ.Denied != 2 || d.Writ.Reasons["attestation_failed"] != 1 || d.Writ.Reasons[script] != 1 {
		t.Fatalf("writ %+v", d.Writ)
	}
	if d.MCP == nil || d.MCP.Allowed != 1 || d.MCP.Denied != 2 || d.MCP.Reasons["writ_missing"] != 2 {
		t.Fatalf("mcp %+v", d.MCP)
	}
	// Gateways' logs were given: no HTTP request is a known zero. No
	// node's log was: execs are unknown, not zero.
	if d.HTTP == nil || d.HTTP.Allowed+d.HTTP.Denied != 0 || d.Exec != nil {
		t.Fatalf("http %+v, exec %+v; want a known zero and unknown", d.HTTP, d.Exec)
	}
	a := r.node(t, nodeA)
	if a.Decisions.Writ.Allowed != 2 || a.Decisions.MCP.Allowed != 1 || a.Decisions.Exec != nil || a.Log != LogNotGiven {
		t.Fatalf("node A decisions %+v, log %s", a.Decisions, a.Log)
	}
	// Another trust domain's node: no log of its domain was given.
	if c := r.node(t, nodeC); c.Decisions.Writ != nil || c.Decisions.MCP != nil {
		t.Fatalf("node C counted from writ.test's logs: %+v", c.Decisions)
	}
	// --since: only the last minute's.
	r = f.build(t, Options{Since: now.Add(-30 * time.Minute)})
	if w := r.Summary.Decisions.Writ; w.Allowed != 1 || w.Denied != 2 {
		t.Fatalf("writ since 30m ago %+v", w)
	}
	if r.Logs[0].Counted != 3 || r.Logs[0].LastCheckpointed == nil || !r.Logs[0].LastCheckpointed.Equal(now.Add(-time.Minute)) {
		t.Fatalf("broker log %+v", r.Logs[0])
	}
}

// TestFailedLogsAreNotCounted: a tampered log, a log verified against the
// wrong key and a node's log that does not verify against what the broker
// attested are each reported with the reason, and nothing in them counts:
// their counts are unknown, never zero.
func TestFailedLogsAreNotCounted(t *testing.T) {
	f := newFixture(t)
	// Tamper: the gateway's first refusal becomes an allow.
	path := filepath.Join(f.gatewayLog, "entries.jsonl")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Replace(raw, []byte(`"decision":"deny","reason":"writ_missing"`), []byte(`"decision":"allow","reason":""`), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	r := f.build(t, Options{Logs: []string{f.brokerLog, f.gatewayLog, f.nodeA}, Keys: []TrustedKey{f.brokerKey, f.gatewayKey}})
	if r.OK() || r.Summary.LogsFailed != 2 || r.Summary.LogsVerified != 1 {
		t.Fatalf("summary %+v", r.Summary)
	}
	gw, node := r.Logs[1], r.Logs[2]
	if gw.Verified || gw.Problem != audit.ProblemChainBroken && gw.Problem != audit.ProblemRootMismatch || gw.Counted != 0 {
		t.Fatalf("tampered gateway log %+v", gw)
	}
	if node.Verified || node.Role != RoleNode || node.Node != nodeA || node.VerifiedAgainst != "" || !strings.Contains(node.Detail, "evidence (store)") {
		t.Fatalf("node A's log %+v", node)
	}
	d := r.Summary.Decisions
	if d.MCP != nil || d.HTTP != nil || d.Exec != nil {
		t.Fatalf("decisions of unverified logs are known: mcp %+v http %+v exec %+v", d.MCP, d.HTTP, d.Exec)
	}
	if a := r.node(t, nodeA); a.Log != LogFailed || a.Decisions.Exec != nil {
		t.Fatalf("node A: log %s, exec %+v", a.Log, a.Decisions.Exec)
	}
	// The broker's log against the gateway's key only: not verified.
	r = f.build(t, Options{Logs: []string{f.brokerLog}, Keys: []TrustedKey{f.gatewayKey}})
	if l := r.Logs[0]; l.Verified || l.Problem != audit.ProblemCheckpointKeyUntrusted || r.Summary.Decisions.Writ != nil {
		t.Fatalf("broker log against the wrong key %+v, writ %+v", l, r.Summary.Decisions.Writ)
	}
	// No key at all; a directory that is not a log.
	r = f.build(t, Options{Logs: []string{f.brokerLog, t.TempDir()}, Keys: []TrustedKey{}})
	if r.Logs[0].Problem != ReasonNoTrustAnchor || r.Logs[1].Problem != ReasonLogUnreadable {
		t.Fatalf("logs %+v", r.Logs)
	}
	// One of two gateway logs fails: the count is known but incomplete.
	other, otherKey := writeLog(t, "writ.dev/audit/"+td+"/gateway", []audit.Entry{{Kind: "mcp-call", Subject: nodeA, Decision: "allow"}})
	r = f.build(t, Options{Logs: []string{f.gatewayLog, other}, Keys: []TrustedKey{f.gatewayKey, otherKey}})
	if m := r.Summary.Decisions.MCP; m == nil || !m.Incomplete || m.Allowed != 1 {
		t.Fatalf("mcp with one of two gateway logs verified: %+v", m)
	}
}

// TestJSONIsStable: the JSON document parses back into the report, and
// carries the documented field names; unknown counts are null.
func TestJSONIsStable(t *testing.T) {
	f := newFixture(t)
	r := f.build(t, Options{})
	raw, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(&back)
	if !bytes.Equal(raw, again) {
		t.Fatalf("JSON does not round-trip:\n%s\n%s", raw, again)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"version", "generated_at", "stale_after_seconds", "summary", "trust_domains", "nodes", "logs"} {
		if _, ok := doc[k]; !ok {
			t.Errorf("no %q in %s", k, raw)
		}
	}
	dec := doc["summary"].(map[string]any)["decisions"].(map[string]any)
	if dec["exec"] != nil || dec["writ"].(map[string]any)["allowed"] != 2.0 {
		t.Fatalf("summary decisions %v", dec)
	}
}

func TestTextShowsUnknownAndFailures(t *testing.T) {
	f := newFixture(t)
	r := f.build(t, Options{Logs: []string{f.brokerLog, f.nodeA}, Keys: []TrustedKey{f.brokerKey}})
	var b bytes.Buffer
	if err := r.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"3 node(s), 1 in good standing (33.3%)", "1 NOT verified", "not verified", "NOT VERIFIED",
		"attestation_failed", "writ.test", "other.test", "2/2"} {
		if !strings.Contains(out, want) {
			t.Errorf("text lacks %q:\n%s", want, out)
		}
	}
	if strings.ContainsAny(out, "\x1b\r") {
		t.Errorf("control characters in the text")
	}
}

// TestHTMLEscapesEverything: a node state reason and a refusal reason
// holding <script> come out escaped; the page loads nothing and runs
// nothing.
func TestHTMLEscapesEverything(t *testing.T) {
	f := newFixture(t)
	var b bytes.Buffer
	if err := f.build(t, Options{}).WriteHTML(&b); err != nil {
		t.Fatal(err)
	}
	page := b.String()
	if strings.Contains(page, "<script") {
		t.Fatalf("unescaped <script> in the page")
	}
	if !strings.Contains(page, "&lt;script&gt;alert(1)&lt;/script&gt;") {
		t.Fatalf("the <script> reason is not on the page, escaped")
	}
	if !strings.Contains(page, `content="`+CSP+`"`) && !strings.Contains(page, `content="default-src &#39;none&#39;; style-src &#39;unsafe-inline&#39;; img-src data:"`) {
		t.Fatalf("no CSP meta")
	}
	for _, banned := range []string{"http://", "https://", "//cdn", "src=", "href=", "@import", "url("} {
		if strings.Contains(page, banned) {
			t.Errorf("the page holds %q", banned)
		}
	}
	for _, id := range []string{`id="chart-standing"`, `id="chart-decisions"`, `id="chart-reasons"`} {
		if !strings.Contains(page, id) {
			t.Errorf("no %s", id)
		}
	}
}

// TestDuplicateLogNotCountedTwice: the same log given twice (or a copy of
// it) is counted once; the second is reported, and fails the run.
func TestDuplicateLogNotCountedTwice(t *testing.T) {
	f := newFixture(t)
	r := f.build(t, Options{Logs: []string{f.brokerLog, f.brokerLog}, Keys: []TrustedKey{f.brokerKey}})
	if r.OK() || r.Logs[1].Problem != ReasonDuplicateLog || r.Summary.Decisions.Writ.Allowed != 2 {
		t.Fatalf("logs %+v, writ %+v", r.Logs, r.Summary.Decisions.Writ)
	}
}

// TestOtherOriginsCountWhatTheyHold: a verified log whose origin the
// report does not know (a future gateway) has its decisions counted.
func TestOtherOriginsCountWhatTheyHold(t *testing.T) {
	f := newFixture(t)
	dir, key := writeLog(t, "writ.dev/audit/"+td+"/http-gateway", []audit.Entry{
		{Kind: "http-request", Subject: nodeA, Decision: "deny", Reason: "writ_missing"},
	})
	r := f.build(t, Options{Logs: []string{dir}, Keys: []TrustedKey{key}})
	if h := r.Summary.Decisions.HTTP; r.Logs[0].Role != RoleOther || h == nil || h.Denied != 1 || r.node(t, nodeA).Decisions.HTTP.Denied != 1 {
		t.Fatalf("log %+v, http %+v", r.Logs[0], h)
	}
	if r.Summary.Decisions.MCP != nil {
		t.Fatalf("mcp %+v; want unknown", r.Summary.Decisions.MCP)
	}
}

// TestExecFailedIsNotASecondDecision: an exec allowed, then failed to
// start, is one allowed exec (its exec-allow entry) that failed, not two
// decisions; its reason is a failure's, not a refusal's.
func TestExecFailedIsNotASecondDecision(t *testing.T) {
	var d Decisions
	d.mark(kindExec, true)
	for _, e := range []audit.Entry{
		{Kind: "exec-allow", Decision: "allow"},
		{Kind: "exec-failed", Decision: "deny", Reason: "exec_failed"},
		{Kind: "exec-deny", Decision: "deny", Reason: "action_denied"},
	} {
		d.count(kindOf[e.Kind], e)
	}
	if x := d.Exec; x.Allowed != 1 || x.Denied != 1 || x.Failed != 1 || x.FailedReasons["exec_failed"] != 1 || len(x.Reasons) != 1 {
		t.Fatalf("exec %+v", x)
	}
}
