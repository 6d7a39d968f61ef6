package broker

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
)

// otherRules allow only another executable than execReq's.
const otherRules = "    - subject: spiffe://writ.test/node/*\n      kind: exec\n      executables: [\"sha256:" + "ee" + "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee\"]\n"

func lastReload(t *testing.T, b *testBroker) audit.Entry {
	t.Helper()
	es := b.auditEntries(t)
	for i := len(es) - 1; i >= 0; i-- {
		if es[i].Kind == AuditKindReload {
			return es[i]
		}
	}
	t.Fatal("no config-reload entry in the audit log")
	return audit.Entry{}
}

// TestReloadAppliesNewRulesAndPolicy: a reload puts the new rules and
// policy in force for the next request, and the audit log says which
// were replaced by which.
func TestReloadAppliesNewRulesAndPolicy(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	ctx, _ := b.passedNode(t, "aaaa")
	if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	oldPolicy, oldRules := b.PolicyRef(), b.RulesVersion()

	path := writeTestConfig(t, dir, 1, otherRules) // same policy, rules that no longer allow execReq
	if err := b.Reload(context.Background(), path, false); err != nil {
		t.Fatal(err)
	}
	if b.RulesVersion() == oldRules {
		t.Fatal("the rules version did not change")
	}
	_, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	wantRefused(t, "a writ the new rules do not allow", err, ReasonActionDenied)
	e := lastReload(t, b)
	if e.Decision != "allow" || e.Refs["rules"] != b.RulesVersion() || e.Refs["previous_rules"] != oldRules ||
		e.Refs["policy"] != oldPolicy || e.Subject != "spiffe://writ.test/broker" {
		t.Fatalf("audit entry %+v", e)
	}

	// A new policy version: results appraised under the old one no longer
	// count (the node must attest again).
	path = writeTestConfig(t, dir, 2, defaultRules)
	if err := b.Reload(context.Background(), path, false); err != nil {
		t.Fatal(err)
	}
	if b.PolicyRef() != "test@2" || lastReload(t, b).Refs["policy"] != "test@2" {
		t.Fatalf("policy %s after the reload, want test@2", b.PolicyRef())
	}
	_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	wantRefused(t, "a result appraised under the replaced policy", err, ReasonAttestationPolicyChanged)
}

// TestReloadRefusalKeepsOldRules is the attack: a configuration that does
// not load (a broken policy, a broken rule, a missing file, an unknown
// field) changes nothing: writs are still judged by the old rules, and the
// refusal is audited and counted.
func TestReloadRefusalKeepsOldRules(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, otherRules)
	ctx, _ := b.passedNode(t, "aaaa")
	oldPolicy, oldRules := b.PolicyRef(), b.RulesVersion()
	good := writeTestConfig(t, dir, 1, defaultRules) // would allow execReq, were it loaded
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"no PCR selected": strings.Replace(string(raw), "  pcrs:\n    0: [\"sha256:"+strings.Repeat("00", 32)+"\"]\n", "  pcrs: {}\n", 1),
		"bad CEL":         string(raw) + "      when: 'action.argv['\n",
		"unknown field":   strings.Replace(string(raw), "writ:", "wirt:", 1),
		"not YAML":        "{{{",
	}
	for name, body := range cases {
		path := filepath.Join(dir, "bad.yaml")
		if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		err := b.Reload(context.Background(), path, false)
		if err == nil || !strings.Contains(err.Error(), ReasonReloadInvalid) {
			t.Fatalf("%s: reload returned %v, want a %s refusal", name, err, ReasonReloadInvalid)
		}
		t.Logf("%s: %v", name, err)
		if b.PolicyRef() != oldPolicy || b.RulesVersion() != oldRules {
			t.Fatalf("%s: the refused reload changed the policy or rules", name)
		}
		_, err = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
		wantRefused(t, name+": a writ the old rules do not allow", err, ReasonActionDenied)
		e := lastReload(t, b)
		if e.Decision != "deny" || e.Reason != ReasonReloadInvalid || e.Refs["rules"] != oldRules || e.Refs["policy"] != oldPolicy {
			t.Fatalf("%s: audit entry %+v", name, e)
		}
	}
	if err := b.Reload(context.Background(), filepath.Join(dir, "absent.yaml"), false); err == nil {
		t.Fatal("a missing file was reloaded")
	}
	if got := reloadRefusals(t, b); got != float64(len(cases)+1) {
		t.Fatalf("refusal metric %v, want %d", got, len(cases)+1)
	}
}

// TestReloadReportsRestartOnlySettings: settings a reload cannot apply are
// named in the audit entry, and the rules are applied all the same.
func TestReloadReportsRestartOnlySettings(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	raw, err := os.ReadFile(writeTestConfig(t, dir, 1, otherRules))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "moved.yaml")
	if err := os.WriteFile(path, []byte("listen: 127.0.0.1:1\n"+string(raw)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(context.Background(), path, false); err != nil {
		t.Fatal(err)
	}
	if e := lastReload(t, b); e.Refs["ignored"] != "[listen]" || e.Refs["rules"] != b.RulesVersion() {
		t.Fatalf("audit entry %+v, want ignored [listen] and the new rules", e)
	}
}

// reloadRefusals reads writ_broker_refusals_total{op="reload"} as the
// broker's metrics endpoint would.
func reloadRefusals(t *testing.T, b *testBroker) float64 {
	t.Helper()
	mfs, err := b.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "writ_broker_refusals_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["op"] == "reload" && labels["reason"] == ReasonReloadInvalid {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestReloadUnderLoad: reloads while writs are requested (run with -race):
// every request is judged by one ruleset or the other, allowed or
// action_denied, never anything else.
func TestReloadUnderLoad(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	ctx, _ := b.passedNode(t, "aaaa")
	allow := writeTestConfig(t, dir, 1, defaultRules)
	raw, err := os.ReadFile(allow)
	if err != nil {
		t.Fatal(err)
	}
	deny := filepath.Join(dir, "deny.yaml")
	if err := os.WriteFile(deny, []byte(strings.Replace(string(raw), "executables: [any]", `executables: ["sha256:`+strings.Repeat("ee", 32)+`"]`, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for i := range 50 {
			if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil && brokerv1.ReasonOf(err) != ReasonActionDenied {
				done <- fmt.Errorf("request %d: %w", i, err)
				return
			}
		}
		done <- nil
	}()
	for i := range 20 {
		path := allow
		if i%2 == 0 {
			path = deny
		}
		if err := b.Reload(context.Background(), path, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
