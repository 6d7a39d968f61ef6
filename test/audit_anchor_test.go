package test

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/writ-dev/writ/agent"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// nextBoot is the honest boot after a kernel update: one more boot
// component measured into PCR 4.
func nextBoot() *tcglog.Log {
	l := tcglog.HonestBoot()
	l.Add(4, tcglog.EvEFIBootServices, []byte(kernelUpdate))
	return l
}

const kernelUpdate = "vmlinuz-6.2.0-writ"

// writeConfigAllowing writes a broker config whose policy allows the PCR
// 0-7 values of each boot given.
func writeConfigAllowing(t testing.TB, dir string, a *swtpmtest.Authority, boots ...*tcglog.Log) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "trust_domain: %s\nlisten: 127.0.0.1:0\nbundle_listen: 127.0.0.1:0\ndata_dir: data\nsvid_ttl: 1h\naudit:\n  signer: file\n", td.Name())
	fmt.Fprintf(&b, "ek:\n  roots: [%q]\n  intermediates: [%q]\n", a.RootPath, a.IntermediatePath)
	b.WriteString("policy:\n  id: two-kernels\n  version: 1\n  require_event_log: true\n  pcrs:\n")
	for pcr := 0; pcr <= 7; pcr++ {
		var vals []string
		for _, boot := range boots {
			v := boot.PCRs()[pcr]
			if s := fmt.Sprintf("%q", "sha256:"+hex.EncodeToString(v[:])); !strings.Contains(strings.Join(vals, ","), s) {
				vals = append(vals, s)
			}
		}
		fmt.Fprintf(&b, "    %d: [%s]\n", pcr, strings.Join(vals, ", "))
	}
	path := filepath.Join(dir, "broker.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// auditEnv is a broker, a node and its agent, and the writ CLI.
type auditEnv struct {
	b       *brokerEnv
	n       *node
	ag      *agent.Agent
	cfgPath string
	dataDir string
	work    string
}

func newAuditEnv(t *testing.T) *auditEnv {
	a := swtpmtest.Shared(t)
	e := &auditEnv{work: t.TempDir()}
	e.cfgPath = writeConfigAllowing(t, t.TempDir(), a, tcglog.HonestBoot(), nextBoot())
	// These tests attest a node many times in a row, faster than the
	// default per-node rate allows.
	appendFile(t, e.cfgPath, "limits:\n  node_rate: -1\n")
	e.b = startBroker(t, e.cfgPath)
	e.n = newNode(t, a)
	e.dataDir = filepath.Join(e.work, "agent")
	e.ag = newAgent(t, e.b, e.n, e.dataDir)
	return e
}

func (e *auditEnv) logDir() string { return filepath.Join(e.dataDir, nodestate.AuditDir) }

// attest attests and checks the outcome: passed, or failed for reason.
func (e *auditEnv) attest(t *testing.T, reason string) {
	t.Helper()
	out, err := e.ag.Attest(ctx(t))
	// After a failed attestation the agent may fail to append to a log that
	// is not its own (forged): the outcome is what counts.
	if err != nil && (out == nil || reason == "") {
		t.Fatalf("attest: %v", err)
	}
	switch {
	case reason == "" && !out.Passed:
		t.Fatalf("attestation failed: %v", out.Findings)
	case reason != "" && (out.Passed || string(out.Findings[0].Reason) != reason):
		t.Fatalf("attestation: passed %v, findings %v; want it failed for %s", out.Passed, out.Findings, reason)
	}
}

func (e *auditEnv) checkpoint(t *testing.T) {
	t.Helper()
	if err := e.ag.Checkpoint(ctx(t)); err != nil {
		t.Fatalf("checkpoint: %v", err)
	}
}

// cli runs the writ CLI.
func (e *auditEnv) cli(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(writBinary(t), args...)
	cmd.Dir = e.work
	out, err := cmd.CombinedOutput()
	if ee := (*exec.ExitError)(nil); err != nil && !asExit(err, &ee) {
		t.Fatal(err)
	} else if err != nil {
		return ee.ExitCode(), string(out)
	}
	return 0, string(out)
}

func asExit(err error, ee **exec.ExitError) bool {
	return errors.As(err, ee)
}

// evidence exports the node's evidence with writ node evidence.
func (e *auditEnv) evidence(t *testing.T) string {
	t.Helper()
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	code, out := e.cli(t, "node", "evidence", "--config", e.cfgPath, "--broker", e.b.Addr(), nodes[0].ID)
	if code != 0 {
		t.Fatalf("writ node evidence: exit %d\n%s", code, out)
	}
	path := filepath.Join(t.TempDir(), "evidence.json")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// verify runs writ audit verify --evidence and returns its exit code and output.
func (e *auditEnv) verify(t *testing.T, evidence, dir string) (int, string) {
	t.Helper()
	return e.cli(t, "audit", "verify", "--evidence", evidence, dir)
}

func copyDir(t *testing.T, from, to string) {
	t.Helper()
	if out, err := exec.Command("cp", "-a", from, to).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
}

// TestAuditKeyRotatesAndLogVerifiesFromTheBroker (issue 7, items 5 and 7):
// the node's checkpoints are anchored at the broker with each attestation;
// after a legitimate boot change (a new kernel, then a passing attestation
// with the new PCR 4) the agent makes a new audit key certified over the
// broker's nonce, the broker records it, and the whole log — signed by two
// keys — verifies against the evidence the broker exports. A key the broker
// did not record fails.
func TestAuditKeyRotatesAndLogVerifiesFromTheBroker(t *testing.T) {
	e := newAuditEnv(t)
	e.attest(t, "") // creates the log; the broker records its key
	e.checkpoint(t)
	e.attest(t, "") // anchors checkpoint 1
	e.checkpoint(t)

	// The kernel update: the boot log and PCR 4 move. The old key cannot
	// sign any more; the next passing attestation brings a new one.
	ev := e.n.log.Add(4, tcglog.EvEFIBootServices, []byte(kernelUpdate))
	e.n.sw.Extend(t, ev.PCR, ev.Digest)
	e.n.writeLog(t)
	e.attest(t, "") // anchors checkpoint 2, records key 2
	e.checkpoint(t) // checkpoint 3, signed by key 2
	e.attest(t, "") // anchors checkpoint 3
	e.checkpoint(t)

	keys, err := audit.Keys(e.logDir())
	if err != nil || len(keys) != 2 {
		t.Fatalf("the log's keys: %d, %v; want 2 after the boot change", len(keys), err)
	}
	nodes, _ := e.b.Store().Nodes(ctx(t))
	recorded, err := e.b.Store().AuditKeys(ctx(t), nodes[0].ID)
	if err != nil || len(recorded) != 2 {
		t.Fatalf("the broker recorded %d audit keys (%v), want 2", len(recorded), err)
	}
	anchor, err := e.b.Store().LatestAuditAnchor(ctx(t), nodes[0].ID)
	if err != nil || anchor.Size != 3 {
		t.Fatalf("anchor of %d entries (%v), want 3", anchor.Size, err)
	}
	entries, err := audit.Read(filepath.Join(e.b.cfg.DataDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	var anchored, keyed int
	for _, en := range entries {
		anchored += boolInt(en.Kind == "audit-anchor" && en.Subject == nodes[0].SPIFFEID)
		keyed += boolInt(en.Kind == "audit-key" && en.Subject == nodes[0].SPIFFEID)
	}
	if anchored != 3 || keyed != 2 {
		t.Fatalf("broker's log: %d audit-anchor and %d audit-key entries, want 3 and 2", anchored, keyed)
	}

	evidence := e.evidence(t)
	if code, out := e.verify(t, evidence, e.logDir()); code != 0 || !strings.Contains(out, "ok: the log verifies") {
		t.Fatalf("writ audit verify --evidence: exit %d\n%s", code, out)
	}

	// A key the broker did not record: drop key 2 from the evidence.
	raw, err := os.ReadFile(evidence)
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		t.Fatal(err)
	}
	doc["audit_keys"] = doc["audit_keys"].([]any)[:1]
	doc["audit_anchor"] = ""
	edited, _ := json.Marshal(doc)
	oneKey := filepath.Join(t.TempDir(), "one-key.json")
	if err := os.WriteFile(oneKey, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := e.verify(t, oneKey, e.logDir()); code != 1 || !strings.Contains(out, audit.ProblemKeyNotAttested) {
		t.Fatalf("verify with a key the broker did not record: exit %d\n%s", code, out)
	}
}

// TestAuditRollbackIsDetected (issue 7, item 6): a node's log cut back to an
// earlier checkpoint is a valid log in itself (it verifies against the AK
// alone, as `--ak` did) but the broker's anchor shows it: verify --evidence
// fails, and the node's next attestation fails with audit_rollback.
func TestAuditRollbackIsDetected(t *testing.T) {
	e := newAuditEnv(t)
	e.attest(t, "")
	e.checkpoint(t)
	e.attest(t, "") // anchors checkpoint 1
	e.checkpoint(t)
	early := filepath.Join(t.TempDir(), "early")
	copyDir(t, e.logDir(), early) // 2 entries, checkpoints 1 and 2
	e.attest(t, "")               // anchors checkpoint 2
	e.checkpoint(t)
	e.attest(t, "") // anchors checkpoint 3
	e.checkpoint(t)

	// The node rolls its log back to the earlier copy.
	if err := os.RemoveAll(e.logDir()); err != nil {
		t.Fatal(err)
	}
	copyDir(t, early, e.logDir())
	nodes, _ := e.b.Store().Nodes(ctx(t))
	rep, err := audit.Verify(e.logDir(), audit.VerifyOptions{AKPublic: nodes[0].AKPublic})
	if err != nil || !rep.OK() {
		t.Fatalf("the rolled-back log is not a valid log in itself: %+v %v", rep, err)
	}
	evidence := e.evidence(t)
	if code, out := e.verify(t, evidence, e.logDir()); code != 1 || !strings.Contains(out, audit.ProblemAnchorMissing) {
		t.Fatalf("verify --evidence of a rolled-back log: exit %d\n%s", code, out)
	}
	e.attest(t, string(broker.ReasonAuditRollback))
	n, err := e.b.Store().Node(ctx(t), nodes[0].ID)
	if err != nil || n.State != store.NodeFailed {
		t.Fatalf("node state %q (%v), want failed", n.State, err)
	}

	// The node rewrites history instead: on top of the earlier copy it
	// logs other entries past the anchored size and signs them with its
	// key, which still works (its boot PCRs did not change). No proof
	// leads from the anchored root to the new one.
	for range 3 {
		if _, err := nodelog.Append(ctx(t), nodestate.Dir(e.dataDir), audit.Entry{Kind: "exec-allow",
			Subject: nodes[0].SPIFFEID, Decision: audit.DecisionAllow}); err != nil {
			t.Fatal(err)
		}
	}
	e.checkpoint(t)
	if rep, err := audit.Verify(e.logDir(), audit.VerifyOptions{AKPublic: nodes[0].AKPublic}); err != nil || !rep.OK() || rep.Checkpointed < 4 {
		t.Fatalf("the rewritten log is not a valid log in itself: %+v %v", rep, err)
	}
	e.attest(t, string(broker.ReasonAuditRollback))
	if code, out := e.verify(t, e.evidence(t), e.logDir()); code != 1 || !strings.Contains(out, audit.ProblemAnchorMismatch) {
		t.Fatalf("verify --evidence of a rewritten log: exit %d\n%s", code, out)
	}

	// A node that deleted its log entirely is refused too.
	if err := os.RemoveAll(e.logDir()); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(e.dataDir, nodestate.AuditKeyFile)); err != nil {
		t.Fatal(err)
	}
	e.attest(t, string(broker.ReasonAuditRollback))
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// TestAuditForgedLogRefused: a node that replaces its log with one signed by
// a software key (any key the broker did not record) fails its attestation
// with audit_checkpoint_invalid, and its log fails verify --evidence.
func TestAuditForgedLogRefused(t *testing.T) {
	e := newAuditEnv(t)
	e.attest(t, "")
	e.checkpoint(t)
	e.attest(t, "") // anchors checkpoint 1

	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	nodes, _ := e.b.Store().Nodes(ctx(t))
	if err := os.RemoveAll(e.logDir()); err != nil {
		t.Fatal(err)
	}
	l, err := audit.Create(e.logDir(), key, audit.KeyInfo{Kind: audit.KeyFile}, audit.Options{Origin: audit.NodeOrigin(nodes[0].SPIFFEID)})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := l.Append(ctx(t), audit.Entry{Kind: "exec-allow", Subject: nodes[0].SPIFFEID, Decision: audit.DecisionAllow}); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(); err != nil { // signs a checkpoint of 3 entries
		t.Fatal(err)
	}
	evidence := e.evidence(t)
	if code, out := e.verify(t, evidence, e.logDir()); code != 1 || !strings.Contains(out, audit.ProblemKeyFile) {
		t.Fatalf("verify --evidence of a log signed in software: exit %d\n%s", code, out)
	}
	e.attest(t, string(broker.ReasonAuditCheckpointInvalid))
}

// TestAuditCLIForms: writ audit show --json prints entries in the log's own
// form, and writ audit prove --consistency prints a proof that verifies.
func TestAuditCLIForms(t *testing.T) {
	e := newAuditEnv(t)
	e.attest(t, "")
	e.checkpoint(t)
	e.attest(t, "")
	e.checkpoint(t)
	code, out := e.cli(t, "audit", "show", "--json", e.logDir())
	lines := strings.Split(strings.TrimSpace(out), "\n")
	raw, err := os.ReadFile(filepath.Join(e.logDir(), "entries.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 || strings.TrimSpace(string(raw)) != strings.Join(lines, "\n") {
		t.Fatalf("writ audit show --json: exit %d\n%s\nwant the lines of entries.jsonl\n%s", code, out, raw)
	}
	code, out = e.cli(t, "audit", "prove", "--consistency", e.logDir(), "1")
	var p audit.ConsistencyProof
	if code != 0 || json.Unmarshal([]byte(out), &p) != nil || p.OldSize != 1 || p.NewSize != 2 || p.Verify() != nil {
		t.Fatalf("writ audit prove --consistency: exit %d\n%s", code, out)
	}
	if code, out = e.cli(t, "audit", "prove", "--consistency", e.logDir(), "3"); code == 0 {
		t.Fatalf("a consistency proof from beyond the latest checkpoint: %s", out)
	}
}

// TestAuditKeyInvalidRefused: an audit key not certified over the
// attestation's nonce fails the attestation (audit_key_invalid) and is not
// recorded.
func TestAuditKeyInvalidRefused(t *testing.T) {
	e := newAuditEnv(t)
	e.attest(t, "")
	nodes, _ := e.b.Store().Nodes(ctx(t))
	akBlob, err := os.ReadFile(filepath.Join(e.dataDir, agent.AKFile))
	if err != nil {
		t.Fatal(err)
	}
	c := e.b.client(t)
	ch, err := c.Challenge(ctx(t), &brokerv1.ChallengeRequest{NodeId: nodes[0].ID})
	if err != nil {
		t.Fatal(err)
	}
	var sel, boot []int
	for _, p := range ch.GetPcrs() {
		sel = append(sel, int(p))
		if p != 15 {
			boot = append(boot, int(p))
		}
	}
	tpm := e.n.tpm(t)
	ev, err := tpm.Quote(akBlob, ch.GetNonce(), sel)
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm.NewPCRKey(akBlob, boot, []byte("an old nonce"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Attest(ctx(t), &brokerv1.AttestRequest{NodeId: nodes[0].ID, Nonce: ch.GetNonce(),
		Evidence: brokerv1.NewEvidence(ev), AuditKey: brokerv1.NewTPMKey(key.Certification)})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetPassed() || len(resp.GetFindings()) == 0 || resp.GetFindings()[0].GetReason() != string(broker.ReasonAuditKeyInvalid) {
		t.Fatalf("attestation with a key certified over another nonce: passed %v, findings %v", resp.GetPassed(), resp.GetFindings())
	}
	if keys, err := e.b.Store().AuditKeys(ctx(t), nodes[0].ID); err != nil || len(keys) != 1 {
		t.Fatalf("recorded audit keys: %d (%v), want only the first", len(keys), err)
	}
}

func appendFile(t *testing.T, path, text string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(text); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
