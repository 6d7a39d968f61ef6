package broker

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
)

// TestGovernedInterpreters: a script asked for from a governed cgroup
// runs only with an interpreter the rule lists in governed_interpreters
// (interpreter_not_governed otherwise); outside governed cgroups
// interpreters alone decide; governed_interpreters must be a subset of
// interpreters; a governed flag on a non-exec action is refused.
func TestGovernedInterpreters(t *testing.T) {
	sh, bash, script := strings.Repeat("cd", 32), strings.Repeat("ab", 32), strings.Repeat("ef", 32)
	node := "spiffe://writ.test/node/*"
	cfg := &Config{Writ: WritConfig{Rules: []RuleConfig{
		{Subject: node, Kind: "exec", Executables: []string{"sha256:" + script}, Interpreters: []string{"sha256:" + sh, "sha256:" + bash},
			GovernedInterpreters: []string{"sha256:" + sh}},
	}}}
	p, err := cfg.actionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	scriptAct := func(interp string) *artifact.Action {
		return &artifact.Action{Kind: "exec", SHA256: script, Path: "/w/deploy.sh", Argv: []string{"./deploy.sh"},
			Interpreter: "/bin/x", InterpreterSHA256: interp}
	}
	subject := spiffeid.RequireFromString("spiffe://writ.test/node/a")
	for _, tc := range []struct {
		name     string
		interp   string
		governed bool
		want     string
	}{
		{"governed, listed", sh, true, ""},
		{"governed, not listed", bash, true, ReasonInterpreterNotGoverned},
		{"not governed, in interpreters", bash, false, ""},
		{"governed, in no list", script, true, ReasonActionDenied},
	} {
		_, r := p.checkWithin(subject, scriptAct(tc.interp), tc.governed, nil)
		got := ""
		if r != nil {
			got = r.reason
		}
		if got != tc.want {
			t.Errorf("%s: %q (%v), want %q", tc.name, got, r, tc.want)
		}
	}
	// A rule without governed_interpreters runs no script governed.
	none := &Config{Writ: WritConfig{Rules: []RuleConfig{{Subject: node, Kind: "exec", Executables: []string{"sha256:" + script}, Interpreters: []string{"sha256:" + sh}}}}}
	pn, err := none.actionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if _, r := pn.checkWithin(subject, scriptAct(sh), true, nil); r == nil || r.reason != ReasonInterpreterNotGoverned {
		t.Fatalf("governed script under a rule without governed_interpreters: %v, want %s", r, ReasonInterpreterNotGoverned)
	}
	bad := &Config{Writ: WritConfig{Rules: []RuleConfig{{Subject: node, Kind: "exec", Executables: []string{"sha256:" + script},
		Interpreters: []string{"sha256:" + sh}, GovernedInterpreters: []string{"sha256:" + bash}}}}}
	if _, err := bad.actionPolicy(); err == nil || !strings.Contains(err.Error(), "not in interpreters") {
		t.Fatalf("governed_interpreters outside interpreters: %v, want refused", err)
	}
	if _, err := requestAction(&brokerv1.WritRequest{Mcp: &brokerv1.MCPAction{Server: "s", Method: "tools/call", Tool: "t"}, GovernedCgroup: "/g"}); err == nil {
		t.Fatal("governed_cgroup on an mcp action: accepted, want refused")
	}
}

// TestCheckAgentConfig: the settings an agent sends are accepted only
// when they hash to the last config event of its runtime log; sent
// without any config event measured, or other than measured, they fail
// the attestation; not sent, nothing is checked (and nothing shown).
func TestCheckAgentConfig(t *testing.T) {
	measured := runtime.AgentConfig{Broker: "b:1", TrustDomain: "writ.test", Interval: "1m0s",
		Governed: &runtime.GovernedSettings{Cgroups: []string{"/g"}, Allow: []string{"/usr/bin/writ-exec"}}}
	digest, err := measured.Digest()
	if err != nil {
		t.Fatal(err)
	}
	older := runtime.AgentConfig{Broker: "b:1", TrustDomain: "writ.test", Interval: "1m0s"}
	olderDigest, _ := older.Digest()
	log := &attest.RuntimeClaims{Events: []runtime.Event{{Kind: runtime.KindConfig, Config: olderDigest}, {Kind: runtime.KindConfig, Config: digest}, {Kind: runtime.KindExec, Exe: "aa"}}}
	if f := checkAgentConfig(brokerv1.NewAgentConfig(measured), log); f != nil {
		t.Fatalf("the measured settings: %v, want accepted", f)
	}
	if f := checkAgentConfig(nil, log); f != nil {
		t.Fatalf("no settings sent: %v, want nothing checked", f)
	}
	forged := measured
	forged.Governed = &runtime.GovernedSettings{Cgroups: []string{"/g", "/other"}, Allow: []string{"/usr/bin/writ-exec"}}
	for name, c := range map[string]runtime.AgentConfig{
		"other settings":             forged,
		"an older configuration":     older,
		"a newline in a field":       {Broker: "b:1\ngovern=\"/g\"", TrustDomain: "writ.test", Interval: "1m0s"},
		"claiming to govern nothing": {Broker: "b:1", TrustDomain: "writ.test", Interval: "1m0s", Governed: &runtime.GovernedSettings{}},
	} {
		if f := checkAgentConfig(brokerv1.NewAgentConfig(c), log); f == nil || f.Reason != ReasonAgentConfigMismatch {
			t.Errorf("%s: %v, want %s", name, f, ReasonAgentConfigMismatch)
		}
	}
	if f := checkAgentConfig(brokerv1.NewAgentConfig(measured), &attest.RuntimeClaims{Events: []runtime.Event{{Kind: runtime.KindExec}}}); f == nil || f.Reason != ReasonAgentConfigMismatch {
		t.Fatalf("settings sent, no config event measured: %v, want %s", f, ReasonAgentConfigMismatch)
	}
}
