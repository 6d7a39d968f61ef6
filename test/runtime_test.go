package test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/writ-dev/writ/agent"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/broker/store"
)

// TestRuntimeMeasurementsAppraised: a governed exec extends the runtime PCR,
// the next attestation replays the runtime log, and an executable the
// policy does not list fails appraisal with a finding naming that event.
func TestRuntimeMeasurementsAppraised(t *testing.T) {
	// The runtime rule continues the policy section writeConfig writes.
	e := newExecEnv(t, fmt.Sprintf("  runtime_events:\n    exec: [\"sha256:%s\"]\nwrit:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [any]\n",
		shDigest(t), td.Name()))
	ag, err := agent.New(agent.Config{Broker: e.b.Addr(), TrustDomain: td, DataDir: e.dataDir, OpenTPM: e.open})
	if err != nil {
		t.Fatal(err)
	}

	e.wantExec(t, "", "marker", touch("marker"))
	out, err := ag.Attest(ctx(t))
	if err != nil || !out.Passed {
		t.Fatalf("attestation after a listed exec: %+v %v", out, err)
	}
	res, err := e.b.Store().Result(ctx(t), out.ResultID)
	if err != nil {
		t.Fatal(err)
	}
	rt := res.Claims.Runtime
	if rt == nil || rt.PCR != runtime.PCR || len(rt.Events) != 1 || rt.Events[0].Exe != shDigest(t) || rt.Events[0].JTI == "" {
		t.Fatalf("runtime claims: %+v", rt)
	}

	// /bin/true: the writ rules allow it, the appraisal policy does not list it.
	if code, _, stderr := e.run(t, append(append([]string{"exec"}, e.direct()...), "--", "/bin/true")...); code != 0 {
		t.Fatalf("writ exec /bin/true: %d %s", code, stderr)
	}
	out, err = ag.Attest(ctx(t))
	if err != nil || out.Passed {
		t.Fatalf("attestation after an unlisted exec passed: %+v %v", out, err)
	}
	f := out.Findings[0]
	if f.Reason != "runtime_event_denied" || !strings.Contains(f.Detail, "runtime_events.exec") || !strings.Contains(f.Detail, "runtime event 1 (exec)") {
		t.Fatalf("finding %+v, want runtime_event_denied naming runtime event 1", f)
	}
}

// TestPolicyDryRunReportsLockout: writ policy test reports that a candidate
// policy would lock a passing node out, and nothing changes.
func TestPolicyDryRunReportsLockout(t *testing.T) {
	e := newExecEnv(t, "")
	nodes, err := e.b.Store().Nodes(ctx(t))
	if err != nil || len(nodes) != 1 || nodes[0].State != store.NodeAttested {
		t.Fatalf("nodes: %+v %v", nodes, err)
	}
	before, err := e.b.Store().LatestResult(ctx(t), nodes[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(filepath.Dir(e.b.cfg.DataDir), "broker.yaml")
	dir := t.TempDir()
	// The policy in force, as a file of its own.
	var lines []string
	for _, l := range strings.Split(strings.TrimPrefix(policyYAML(), "policy:\n"), "\n") {
		lines = append(lines, strings.TrimPrefix(l, "  "))
	}
	same := filepath.Join(dir, "same.yaml")
	if err := os.WriteFile(same, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := e.run(t, "policy", "test", "--config", cfgPath, "--policy", same)
	if code != 0 || strings.Contains(stdout, "LOCKOUT") || !strings.Contains(stdout, "0 lockout(s)") {
		t.Fatalf("the current policy as a candidate: exit %d\n%s%s", code, stdout, stderr)
	}
	// PCR 4 pinned to another kernel's value: the node would fail.
	for i, l := range lines {
		if strings.HasPrefix(strings.TrimSpace(l), "4:") {
			lines[i] = "  4: [\"sha256:" + strings.Repeat("ab", 32) + "\"]"
		}
	}
	candidate := filepath.Join(dir, "candidate.yaml")
	if err := os.WriteFile(candidate, []byte(strings.Join(lines, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = e.run(t, "policy", "test", "--config", cfgPath, "--policy", candidate)
	if code != 1 || !strings.Contains(stdout, "LOCKOUT") || !strings.Contains(stdout, "policy_denied") || !strings.Contains(stdout, "pcrs.4: policy_denied") {
		t.Fatalf("a locking-out candidate: exit %d\n%s", code, stdout)
	}
	// The same from exported evidence, away from the broker's store.
	code, stdout, _ = e.run(t, "node", "evidence", "--config", cfgPath, "--broker", e.b.Addr(), nodes[0].ID)
	if code != 0 {
		t.Fatalf("writ node evidence: exit %d", code)
	}
	exported := filepath.Join(dir, "evidence.json")
	if err := os.WriteFile(exported, []byte(stdout), 0o600); err != nil {
		t.Fatal(err)
	}
	code, stdout, _ = e.run(t, "policy", "test", "--evidence", exported, "--policy", candidate)
	if code != 1 || !strings.Contains(stdout, "LOCKOUT") {
		t.Fatalf("dry run over exported evidence: exit %d\n%s", code, stdout)
	}
	// Nothing changed: same state, same latest result.
	after, err := e.b.Store().LatestResult(ctx(t), nodes[0].ID)
	if err != nil || after.ID != before.ID {
		t.Fatalf("the dry run stored a result: %v %v", after.ID, err)
	}
	if n, _ := e.b.Store().Node(ctx(t), nodes[0].ID); n.State != store.NodeAttested {
		t.Fatalf("the dry run changed the node's state: %s", n.State)
	}
}
