package test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
)

// execAllows returns the node's exec-allow entries, oldest first.
func (e *agentEnv) execAllows(t *testing.T) []audit.Entry {
	t.Helper()
	entries, err := audit.Read(filepath.Join(e.dataDir, nodestate.AuditDir))
	if err != nil {
		t.Fatal(err)
	}
	var allows []audit.Entry
	for _, en := range entries {
		if en.Kind == "exec-allow" {
			allows = append(allows, en)
		}
	}
	return allows
}

// TestLineageThroughAgent (issue 8, deliverable 6, the agent part): a
// governed shell runs a governed child through the agent; the child's
// writ names the shell's as its parent without anyone saying so, in the
// broker's and the node's audit logs, and writ lineage draws the shell
// with the child under it. A command not under a governed exec gets no
// parent; a parent chosen by the caller is a usage error, and a node API
// request that names one is refused.
func TestLineageThroughAgent(t *testing.T) {
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q, %q]\n",
		td.Name(), "sha256:"+shDigest(t), "sha256:"+execDigest(t, "/bin/true"))
	e := newAgentEnv(t, rule)

	// Not under a governed exec: no parent.
	if code, stderr := e.execAs(t, 0, "/bin/true"); code != 0 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	allows := e.execAllows(t)
	if len(allows) != 1 || allows[0].Refs["jti"] == "" || allows[0].Refs["parent"] != "" {
		t.Fatalf("exec-allow entries %+v; want one without a parent", allows)
	}

	// A governed shell runs a governed child (the "; echo" keeps the shell
	// from exec'ing the child in its own pid: the agent walks the ancestry).
	inner := fmt.Sprintf("%s exec --agent %s -- /bin/true; echo child $? > marker", e.bin, e.socket)
	if code, stderr := e.execAs(t, 0, "/bin/sh", "-c", inner); code != 0 {
		t.Fatalf("governed shell: exit %d, stderr %q", code, stderr)
	}
	if out, err := os.ReadFile(filepath.Join(e.work, "marker")); err != nil || string(out) != "child 0\n" {
		t.Fatalf("marker %q (%v); want the governed child run", out, err)
	}
	allows = e.execAllows(t)
	if len(allows) != 3 {
		t.Fatalf("%d exec-allow entries; want 3", len(allows))
	}
	shell, child := allows[1], allows[2]
	if shell.Refs["parent"] != "" || child.Refs["parent"] != shell.Refs["jti"] || child.Refs["lineage"] != "ancestry" {
		t.Fatalf("shell %v, child %v; want the child's parent the shell's writ %s", shell.Refs, child.Refs, shell.Refs["jti"])
	}

	// The broker issued it so, and writ lineage draws it from both logs.
	brokerLog, nodeLog := e.b.cfg.Audit.Dir, filepath.Join(e.dataDir, nodestate.AuditDir)
	issued, err := audit.Read(brokerLog)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, en := range issued {
		if en.Refs["jti"] == child.Refs["jti"] {
			found = en.Refs["parent"] == shell.Refs["jti"]
		}
	}
	if !found {
		t.Fatalf("the broker's log has no issuance of %s under %s", child.Refs["jti"], shell.Refs["jti"])
	}
	code, out, stderr := e.run(t, "lineage", "--unverified", "--log", brokerLog, "--log", nodeLog, child.Refs["jti"])
	if code != 0 {
		t.Fatalf("writ lineage: exit %d: %s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], shell.Refs["jti"]+" ") || !strings.HasPrefix(lines[1], "└── "+child.Refs["jti"]+" ") {
		t.Fatalf("writ lineage drew\n%s\nwant %s with %s under it", out, shell.Refs["jti"], child.Refs["jti"])
	}

	// A caller-chosen parent: writ exec has no such flag, nothing run or asked.
	if code, stderr := e.execWith(t, 0, []string{"--parent", shell.Refs["jti"]}, nil, touch("forged")...); code == 0 || e.ran("forged") ||
		!strings.Contains(stderr, "flag provided but not defined: -parent") {
		t.Fatalf("writ exec --parent: exit %d, stderr %q; want a usage error", code, stderr)
	}
	// A node API request naming a parent: refused, not obeyed.
	resp := e.send(t, json.RawMessage(fmt.Sprintf(`{"argv":["/bin/true"],"cwd":"/","parent":%q}`, shell.Refs["jti"])), openFile(t, "/bin/true"))
	if resp.Reason != enforce.ReasonNodeRequestInvalid {
		t.Fatalf("a request naming a parent: %+v; want node_request_invalid", resp)
	}
	if n := len(e.execAllows(t)); n != 3 {
		t.Fatalf("%d exec-allow entries after the forged parents; want 3", n)
	}
}

// TestLineageParentExpired: a governed shell that outlives its writ still
// gets writs for its children through the agent, under its expired writ,
// while the broker retains it (writ.lineage_retention: the agent vouches
// that the process lives, docs/adr/0031, amending 0020); after that they
// are refused (parent_expired) and audited, never issued without a
// parent.
func TestLineageParentExpired(t *testing.T) {
	rule := fmt.Sprintf("writ:\n  ttl: 1s\n  lineage_retention: 5s\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q, %q]\n",
		td.Name(), "sha256:"+shDigest(t), "sha256:"+execDigest(t, "/bin/true"))
	e := newAgentEnv(t, rule)
	inner := fmt.Sprintf("/bin/sleep 2.5; %[1]s exec --agent %[2]s -- /bin/true 2> first.err; echo first $? > marker; "+
		"/bin/sleep 5; %[1]s exec --agent %[2]s -- /bin/true 2> second.err; echo second $? >> marker", e.bin, e.socket)
	if code, stderr := e.execAs(t, 0, "/bin/sh", "-c", inner); code != 0 {
		t.Fatalf("governed shell: exit %d, stderr %q", code, stderr)
	}
	out, err := os.ReadFile(filepath.Join(e.work, "marker"))
	if err != nil || string(out) != fmt.Sprintf("first 0\nsecond %d\n", enforce.DeniedExitCode) {
		t.Fatalf("marker %q (%v); want the first child run and the second refused", out, err)
	}
	if msg, _ := os.ReadFile(filepath.Join(e.work, "second.err")); !strings.Contains(string(msg), "parent_expired") {
		t.Fatalf("second child's stderr %q; want parent_expired", msg)
	}
	e.wantAudited(t, "exec-deny", "parent_expired")
	allows := e.execAllows(t)
	if len(allows) != 2 || allows[1].Refs["parent"] != allows[0].Refs["jti"] {
		t.Fatalf("exec-allow entries %v; want the shell's and the first child's under it", allows)
	}
	vouched := false
	for _, en := range readEntries(t, e.b.cfg.Audit.Dir) {
		vouched = vouched || en.Kind == "writ-issue" && en.Refs["jti"] == allows[1].Refs["jti"] && en.Refs["lineage"] == "ancestry-retained"
	}
	if !vouched {
		t.Fatal("the broker's writ-issue of the first child does not say it took the expired parent on the agent's word")
	}
}
