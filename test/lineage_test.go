package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/audit/lineage"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

// TestLineageFromAuditLogs (issue 8, deliverable 6, the CLI part): a writ
// is requested for a shell; a governed child's writ names it as its
// parent and runs; a made-up parent is refused by the broker. writ
// lineage, asked about the child, draws the shell's writ with the child under it: from the broker's log
// verified against its key, and with the node's log, which says where the
// child ran.
func TestLineageFromAuditLogs(t *testing.T) {
	a := swtpmtest.Shared(t)
	cfgPath := writeConfig(t, t.TempDir(), a, "", fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n", td.Name(), shDigest(t)))
	e := &execEnv{sw: swtpmtest.StartTCP(t, a), work: t.TempDir()}
	e.logPath = e.sw.Boot(t, tcglog.HonestBoot())
	e.b = startBroker(t, cfgPath)
	e.dataDir = filepath.Join(e.work, "agent")
	e.attest(t)
	parentFile := e.request(t, []string{"/bin/sh", "-c", "true"})
	raw, err := os.ReadFile(parentFile)
	if err != nil {
		t.Fatal(err)
	}
	parent, err := artifact.ParseUnverified(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	// writ exec takes no parent (the agent finds it, ADR 0020): the child's
	// writ is requested naming it, and run with --direct --writ.
	e.wantExec(t, "", "child", touch("child"), "--writ", e.request(t, touch("child"), "--parent", parent.ID))
	// The broker refuses a parent that is no live writ of this node.
	if code, _, stderr := e.run(t, append(append([]string{"request"}, e.shim("--parent", "made-up-jti")...), append([]string{"--"}, touch("forged")...)...)...); code != enforce.DeniedExitCode ||
		!strings.Contains(stderr, "writ: denied: "+broker.ReasonParentInvalid+": ") {
		t.Fatalf("writ request --parent made-up-jti: exit %d, stderr %q; want %s", code, stderr, broker.ReasonParentInvalid)
	}

	nodeLog := filepath.Join(e.dataDir, nodestate.AuditDir)
	child := lastJTI(t, e, nodeLog, "exec-allow")
	brokerLog, brokerKey := e.b.cfg.Audit.Dir, filepath.Join(e.b.cfg.DataDir, broker.AuditPublicKeyFile)

	evidence := nodeEvidence(t, e, cfgPath)

	// Verified: the broker's log against its key, the node's against its
	// evidence, given in any order.
	code, out, stderr := e.run(t, "lineage", "--log", nodeLog, "--log", brokerLog, "--key", brokerKey, "--evidence", evidence,
		"--allow-unsigned-tail", "--allow-file-key", child)
	if code != 0 {
		t.Fatalf("writ lineage: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], parent.ID+" ") || !strings.HasPrefix(lines[1], "└── "+child+" ") ||
		!strings.HasSuffix(lines[1], "<=") || !strings.Contains(lines[1], "exec-allow on spiffe://") {
		t.Fatalf("writ lineage drew\n%s\nwant %s with %s under it, run on the node", out, parent.ID, child)
	}
	// A log that does not verify against the key given is refused.
	if code, _, stderr := e.run(t, "lineage", "--log", nodeLog, "--key", brokerKey, "--allow-unsigned-tail", "--allow-file-key", child); code != 1 ||
		!strings.Contains(stderr, "does not verify") {
		t.Fatalf("a node's log checked against the broker's key: exit %d: %s", code, stderr)
	}
	// Without a key or evidence, nothing is read.
	if code, _, stderr := e.run(t, "lineage", "--log", brokerLog, child); code == 0 || !strings.Contains(stderr, "--unverified") {
		t.Fatalf("no key, no --unverified: exit %d: %s", code, stderr)
	}

	// Both logs, unverified (said on stderr): the node's says where it ran.
	code, out, stderr = e.run(t, "lineage", "--unverified", "--log", brokerLog, "--log", nodeLog, "--format", "json", child)
	if code != 0 || !strings.Contains(stderr, "warning: --unverified") {
		t.Fatalf("writ lineage --unverified: exit %d: %s", code, stderr)
	}
	for _, want := range []string{`"jti": "` + parent.ID, `"jti": "` + child, `"parent": "` + parent.ID, `"kind": "exec-allow"`, `"path": "`} {
		if !strings.Contains(out, want) {
			t.Fatalf("lineage JSON lacks %s:\n%s", want, out)
		}
	}
	for _, f := range []string{lineage.FormatDOT, lineage.FormatMermaid} {
		if code, out, stderr := e.run(t, "lineage", "--unverified", "--log", brokerLog, "--log", nodeLog, "--format", f, child); code != 0 || !strings.Contains(out, child) {
			t.Fatalf("--format %s: exit %d: %s%s", f, code, out, stderr)
		}
	}
}

// nodeEvidence exports the node's evidence with writ node evidence.
func nodeEvidence(t *testing.T, e *execEnv, cfgPath string) string {
	t.Helper()
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 {
		t.Fatalf("nodes: %v %v", nodes, err)
	}
	code, out, stderr := e.run(t, "node", "evidence", "--config", cfgPath, "--broker", e.b.Addr(), nodes[0].ID)
	if code != 0 {
		t.Fatalf("writ node evidence: exit %d\n%s", code, stderr)
	}
	path := filepath.Join(t.TempDir(), "evidence.json")
	if err := os.WriteFile(path, []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func lastJTI(t *testing.T, e *execEnv, dir, kind string) string {
	t.Helper()
	code, out, stderr := e.run(t, "audit", "show", "--json", dir)
	if code != 0 {
		t.Fatalf("writ audit show: %s", stderr)
	}
	jti := ""
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, `"kind":"`+kind+`"`) {
			_, rest, _ := strings.Cut(line, `"jti":"`)
			jti, _, _ = strings.Cut(rest, `"`)
		}
	}
	if jti == "" {
		t.Fatalf("no %s entry with a jti in %s", kind, dir)
	}
	return jti
}
