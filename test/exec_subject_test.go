package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/writ-dev/writ/agent/workload"
	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
	"github.com/writ-dev/writ/internal/nodestate"
)

// createEntries creates registration entries for the node of e, one per
// list of unix selectors, each allowing the actions, and returns their ids.
func (e *execEnv) createEntries(t *testing.T, spiffeIDs []string, selectors [][]string, actions ...string) []string {
	t.Helper()
	node, err := nodestate.Dir(e.dataDir).Node()
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for i, id := range spiffeIDs {
		en := &brokerv1.Entry{SpiffeId: id, Parent: node.SPIFFEID, Actions: actions}
		for _, s := range selectors[i] {
			en.Selectors = append(en.Selectors, &brokerv1.Selector{Type: "unix", Value: s})
		}
		got, err := e.b.adminClient(t).CreateEntry(ctx(t), &brokerv1.CreateEntryRequest{Entry: en})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, got.GetId())
	}
	return ids
}

// writIssued is the broker's writ-issue audit entry for jti.
func (e *execEnv) writIssued(t *testing.T, jti string) audit.Entry {
	t.Helper()
	entries, err := audit.Read(filepath.Join(e.b.cfg.DataDir, "audit"))
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range entries {
		if a.Kind == "writ-issue" && a.Refs["jti"] == jti {
			return a
		}
	}
	t.Fatalf("no writ-issue entry for %s in the broker's audit log", jti)
	return audit.Entry{}
}

// TestExecWorkloadSubject (issue 8, item 5; ADR 0023): through the agent,
// the writ's subject is the workload's SVID when an entry matches the
// caller, else the node's. An entry for uid nobody allows /bin/true: run
// as nobody, the writ names the entry's SPIFFE ID (sub, in both audit
// logs) and /bin/true runs; run as root (no entry matches) it names the
// node; as nobody, /bin/echo (not among the entry's actions, though a rule
// would allow it) is refused with entry_action_denied and does not run.
func TestExecWorkloadSubject(t *testing.T) {
	const nobody = 65534
	if os.Geteuid() != 0 {
		t.Fatal("this test runs the shim as nobody: it must run as root")
	}
	const app = "spiffe://" + "writ.test" + "/app/nobody"
	rules := fmt.Sprintf("writ:\n  rules:\n"+
		"    - subject: spiffe://%[1]s/node/*\n      kind: exec\n      executables: [%[2]q]\n"+
		"    - subject: spiffe://%[1]s/app/*\n      kind: exec\n      executables: [any]\n",
		td.Name(), "sha256:"+execDigest(t, "/bin/true"))
	var entry string
	e := newAgentEnvWith(t, rules, func(e *execEnv) {
		entry = e.createEntries(t, []string{app}, [][]string{{"uid:65534"}}, "exec:sha256:"+execDigest(t, "/bin/true"))[0]
	})
	node, err := nodestate.Dir(e.dataDir).Node()
	if err != nil {
		t.Fatal(err)
	}

	if code, stderr := e.execAs(t, nobody, "/bin/true"); code != 0 {
		t.Fatalf("as nobody: exit %d, stderr %q; want /bin/true run for the entry", code, stderr)
	}
	last := e.lastAudit(t)
	if last.Kind != "exec-allow" || last.Refs["subject"] != app || last.Refs["entry"] != entry || last.Subject != node.SPIFFEID {
		t.Fatalf("node audit entry %+v; want exec-allow on the node with subject %s, entry %s", last, app, entry)
	}
	if issued := e.writIssued(t, last.Refs["jti"]); issued.Subject != app || issued.Refs["node"] != node.SPIFFEID || issued.Refs["entry"] != entry {
		t.Fatalf("broker audit entry %+v; want the writ issued to %s through the node, for entry %s", issued, app, entry)
	}

	if code, stderr := e.execAs(t, 0, "/bin/true"); code != 0 {
		t.Fatalf("as root: exit %d, stderr %q; want /bin/true run for the node", code, stderr)
	}
	last = e.lastAudit(t)
	if _, named := last.Refs["subject"]; last.Kind != "exec-allow" || named {
		t.Fatalf("node audit entry %+v; want exec-allow with the node as subject", last)
	}
	if issued := e.writIssued(t, last.Refs["jti"]); issued.Subject != node.SPIFFEID {
		t.Fatalf("broker audit entry %+v; want the writ issued to the node %s", issued, node.SPIFFEID)
	}

	code, stderr := e.execAs(t, nobody, "/bin/sh", "-c", "echo ran > marker")
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: "+broker.ReasonEntryActionDenied+": ") || e.ran("marker") {
		t.Fatalf("as nobody, /bin/sh: exit %d, stderr %q; want 126 and %s, nothing run", code, stderr, broker.ReasonEntryActionDenied)
	}
	code, stderr = e.execAs(t, nobody, "/bin/echo", "hi")
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: "+broker.ReasonEntryActionDenied+": ") {
		t.Fatalf("as nobody, /bin/echo: exit %d, stderr %q; want 126 and %s", code, stderr, broker.ReasonEntryActionDenied)
	}
	e.wantAudited(t, "exec-deny", broker.ReasonEntryActionDenied)
}

// TestExecWorkloadSubjectAmbiguous: two entries matching the caller leave
// the agent no identity to pick: refused (workload_subject_ambiguous),
// audited as the exec's decision, nothing run.
func TestExecWorkloadSubjectAmbiguous(t *testing.T) {
	const nobody = 65534
	rules := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/app/*\n      kind: exec\n      executables: [any]\n", td.Name())
	e := newAgentEnvWith(t, rules, func(e *execEnv) {
		e.createEntries(t, []string{"spiffe://writ.test/app/nobody0", "spiffe://writ.test/app/nobody1"},
			[][]string{{"uid:65534"}, {"uid:65534", "gid:65534"}}, "exec:sha256:"+shDigest(t))
	})
	code, stderr := e.execAs(t, nobody, touch("marker")...)
	if code != enforce.DeniedExitCode || !strings.HasPrefix(stderr, "writ: denied: "+workload.ReasonSubjectAmbiguous+": ") || e.ran("marker") {
		t.Fatalf("exit %d, stderr %q; want 126 and %s, nothing run", code, stderr, workload.ReasonSubjectAmbiguous)
	}
	e.wantAudited(t, "exec-deny", workload.ReasonSubjectAmbiguous)
}

// TestExecWorkloadSubjectLineage: a governed shell whose writ names the
// node starts, as nobody, a governed child that an entry matches: the
// child's writ names the workload as sub and the shell's writ as par (a
// parent issued on the same node, to another subject), in the broker's log.
func TestExecWorkloadSubjectLineage(t *testing.T) {
	const nobody = 65534
	const app = "spiffe://writ.test/app/nobody"
	rules := fmt.Sprintf("writ:\n  rules:\n"+
		"    - subject: spiffe://%[1]s/node/*\n      kind: exec\n      executables: [%[2]q]\n"+
		"    - subject: spiffe://%[1]s/app/*\n      kind: exec\n      executables: [any]\n",
		td.Name(), "sha256:"+shDigest(t))
	e := newAgentEnvWith(t, rules, func(e *execEnv) {
		e.createEntries(t, []string{app}, [][]string{{"uid:65534"}}, "exec:sha256:"+execDigest(t, "/bin/true"))
	})

	inner := fmt.Sprintf("setpriv --reuid %d --regid %d --clear-groups %s exec --agent %s -- /bin/true; echo child $? > marker",
		nobody, nobody, e.bin, e.socket)
	if code, stderr := e.execAs(t, 0, "/bin/sh", "-c", inner); code != 0 {
		t.Fatalf("governed shell: exit %d, stderr %q", code, stderr)
	}
	if out, err := os.ReadFile(filepath.Join(e.work, "marker")); err != nil || string(out) != "child 0\n" {
		t.Fatalf("marker %q (%v); want the governed child run as nobody", out, err)
	}
	allows := e.execAllows(t)
	if len(allows) != 2 {
		t.Fatalf("exec-allow entries %+v; want the shell's and the child's", allows)
	}
	shell, child := allows[0], allows[1]
	if shell.Refs["subject"] != "" || child.Refs["subject"] != app || child.Refs["parent"] != shell.Refs["jti"] {
		t.Fatalf("shell %+v, child %+v; want the child for %s under the shell's writ", shell.Refs, child.Refs, app)
	}
	if issued := e.writIssued(t, child.Refs["jti"]); issued.Subject != app || issued.Refs["parent"] != shell.Refs["jti"] {
		t.Fatalf("broker audit entry %+v; want the child's writ for %s with the shell's as parent", issued, app)
	}
}
