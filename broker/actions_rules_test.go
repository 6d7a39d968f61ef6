package broker

import (
	"bytes"
	"os"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/writ-dev/writ/artifact"
)

// TestActionRulesJudgeArgvAndEnv: rules judge argv and the environment,
// not only the executable, and refuse loader and interpreter variables
// unless a rule names them.
func TestActionRulesJudgeArgvAndEnv(t *testing.T) {
	tru, sh, script := strings.Repeat("ab", 32), strings.Repeat("cd", 32), strings.Repeat("ef", 32)
	node := "spiffe://writ.test/node/*"
	cfg := &Config{Writ: WritConfig{Rules: []RuleConfig{
		{Subject: node, Kind: "exec", Executables: []string{"sha256:" + tru}},
		{Subject: node, Kind: "exec", Executables: []string{"sha256:" + sh},
			Argv: &ArgvConfig{Prefix: []string{"/bin/sh", "-c"}},
			Env:  &EnvConfig{Names: []string{"LANG", "LD_LIBRARY_PATH"}, Values: map[string]string{"LD_LIBRARY_PATH": "/opt/app/lib"}}},
		{Subject: "spiffe://writ.test/ops", Kind: "exec", Executables: []string{"sha256:" + tru},
			Argv: &ArgvConfig{Exact: []string{"true", "--version"}}},
		{Subject: "spiffe://writ.test/cel", Kind: "exec", Executables: []string{"any"},
			When: `action.argv.size() <= 2 && action.argv.all(a, !a.startsWith("--exec")) && !("X" in action.env)`},
		{Subject: node, Kind: "exec", Executables: []string{"sha256:" + script}, Interpreters: []string{"sha256:" + sh}},
	}}}
	p, err := cfg.actionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	act := func(sha string, argv []string, env map[string]string) *artifact.Action {
		return &artifact.Action{Kind: "exec", SHA256: sha, Path: "/x", Argv: argv, Env: env}
	}
	scriptAct := func(interp string) *artifact.Action {
		a := act(script, []string{"./deploy.sh"}, nil)
		a.Interpreter, a.InterpreterSHA256 = "/usr/bin/dash", interp
		return a
	}
	cases := []struct {
		name, subject string
		act           *artifact.Action
		want          string // "" allowed, else the reason
	}{
		{"plain", "spiffe://writ.test/node/a", act(tru, []string{"true"}, map[string]string{"LANG": "C"}), ""},
		{"LD_PRELOAD on an allowed executable", "spiffe://writ.test/node/a", act(tru, []string{"true"}, map[string]string{"LD_PRELOAD": "/tmp/evil.so"}), ReasonEnvDangerous},
		{"BASH_ENV", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "-c", "x"}, map[string]string{"BASH_ENV": "/tmp/x"}), ReasonEnvDangerous},
		{"PYTHONPATH", "spiffe://writ.test/node/a", act(tru, []string{"true"}, map[string]string{"PYTHONPATH": "/tmp"}), ReasonEnvDangerous},
		{"exported bash function", "spiffe://writ.test/node/a", act(tru, []string{"true"}, map[string]string{"BASH_FUNC_ls%%": "() { evil; }"}), ReasonEnvDangerous},
		// LD_LIBRARY_PATH is named by the sh rule only: it opts in for sh,
		// never for true.
		{"named dangerous variable, its rule", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "-c", "x"}, map[string]string{"LD_LIBRARY_PATH": "/opt/app/lib"}), ""},
		{"named dangerous variable, another rule", "spiffe://writ.test/node/a", act(tru, []string{"true"}, map[string]string{"LD_LIBRARY_PATH": "/opt/app/lib"}), ReasonActionDenied},
		{"named dangerous variable, wrong value", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "-c", "x"}, map[string]string{"LD_LIBRARY_PATH": "/tmp"}), ReasonActionDenied},
		{"value pattern is a full match", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "-c", "x"}, map[string]string{"LD_LIBRARY_PATH": "/opt/app/lib:/tmp"}), ReasonActionDenied},
		{"name not listed", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "-c", "x"}, map[string]string{"HOME": "/root"}), ReasonActionDenied},
		{"argv prefix", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "-c", "x"}, nil), ""},
		{"argv prefix differs", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh", "/tmp/evil"}, nil), ReasonActionDenied},
		{"argv shorter than prefix", "spiffe://writ.test/node/a", act(sh, []string{"/bin/sh"}, nil), ReasonActionDenied},
		{"argv exact", "spiffe://writ.test/ops", act(tru, []string{"true", "--version"}, nil), ""},
		{"argv exact, more", "spiffe://writ.test/ops", act(tru, []string{"true", "--version", "x"}, nil), ReasonActionDenied},
		{"argv exact, other argv0", "spiffe://writ.test/ops", act(tru, []string{"false", "--version"}, nil), ReasonActionDenied},
		{"cel holds", "spiffe://writ.test/cel", act(sh, []string{"a", "b"}, nil), ""},
		{"cel false", "spiffe://writ.test/cel", act(sh, []string{"a", "--exec=x"}, nil), ReasonActionDenied},
		{"cel false on env", "spiffe://writ.test/cel", act(sh, []string{"a"}, map[string]string{"X": "1"}), ReasonActionDenied},
		{"cel cannot allow a dangerous variable", "spiffe://writ.test/cel", act(sh, []string{"a"}, map[string]string{"LD_AUDIT": "x"}), ReasonEnvDangerous},
		{"script with an allowed interpreter", "spiffe://writ.test/node/a", scriptAct(sh), ""},
		{"script with another interpreter", "spiffe://writ.test/node/a", scriptAct(tru), ReasonActionDenied},
		{"script digest run as a binary by another rule", "spiffe://writ.test/node/b", act(sh, []string{"/bin/sh", "-c", "x"}, nil), ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := p.check(spiffeid.RequireFromString(tc.subject), tc.act)
			got := ""
			if r != nil {
				got = r.reason
			}
			if got != tc.want {
				t.Fatalf("check = %v, want reason %q", r, tc.want)
			}
		})
	}
	// A script whose interpreter no rule lists, under a rule with no
	// interpreters, is refused: a rule allows scripts only by name.
	plain := &Config{Writ: WritConfig{Rules: []RuleConfig{{Subject: node, Kind: "exec", Executables: []string{"sha256:" + script}}}}}
	pp, err := plain.actionPolicy()
	if err != nil {
		t.Fatal(err)
	}
	if r := pp.check(spiffeid.RequireFromString("spiffe://writ.test/node/a"), scriptAct(sh)); r == nil || r.reason != ReasonActionDenied {
		t.Fatalf("a script allowed by a rule with no interpreters: %v", r)
	}
}

func TestActionRulesRefuseBadConstraints(t *testing.T) {
	base := func(edit func(*RuleConfig)) RuleConfig {
		r := RuleConfig{Subject: "spiffe://writ.test/node/*", Kind: "exec", Executables: []string{"any"}}
		edit(&r)
		return r
	}
	for name, r := range map[string]RuleConfig{
		"exact and prefix":     base(func(r *RuleConfig) { r.Argv = &ArgvConfig{Exact: []string{"a"}, Prefix: []string{"a"}} }),
		"empty argv":           base(func(r *RuleConfig) { r.Argv = &ArgvConfig{} }),
		"empty exact":          base(func(r *RuleConfig) { r.Argv = &ArgvConfig{Exact: []string{}} }),
		"bad env name":         base(func(r *RuleConfig) { r.Env = &EnvConfig{Names: []string{"LD_*"}} }),
		"value not named":      base(func(r *RuleConfig) { r.Env = &EnvConfig{Names: []string{"A"}, Values: map[string]string{"B": "x"}} }),
		"bad pattern":          base(func(r *RuleConfig) { r.Env = &EnvConfig{Values: map[string]string{"A": "("}} }),
		"bad interpreter":      base(func(r *RuleConfig) { r.Interpreters = []string{"any"} }),
		"cel not bool":         base(func(r *RuleConfig) { r.When = `action.argv` }),
		"cel does not parse":   base(func(r *RuleConfig) { r.When = `action.argv.size( >` }),
		"cel unbounded":        base(func(r *RuleConfig) { r.When = `action.path.replace("a", "aa") == ""` }),
		"cel unknown variable": base(func(r *RuleConfig) { r.When = `claims.x == 1` }),
		"unknown kind":         base(func(r *RuleConfig) { r.Kind = "grpc" }),
		"http without when":    base(func(r *RuleConfig) { r.Kind, r.Executables = "http", nil }),
		"mcp without when":     base(func(r *RuleConfig) { r.Kind, r.Executables = "mcp", nil }),
		"mcp with executables": base(func(r *RuleConfig) { r.Kind, r.When = "mcp", "true" }),
		"http with argv": base(func(r *RuleConfig) {
			r.Kind, r.Executables, r.When, r.Argv = "http", nil, "true", &ArgvConfig{Prefix: []string{"a"}}
		}),
		"mcp cel not bool": base(func(r *RuleConfig) { r.Kind, r.Executables, r.When = "mcp", nil, "action.arguments" }),
	} {
		if _, err := (&Config{Writ: WritConfig{Rules: []RuleConfig{r}}}).actionPolicy(); err == nil {
			t.Errorf("%s: rule %+v accepted", name, r)
		}
	}
}

// TestExampleConfigRules: deploy/broker.yaml loads, its rules compile, and
// no example rule allows any executable.
func TestExampleConfigRules(t *testing.T) {
	raw, err := os.ReadFile("../deploy/broker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	var cfg Config // LoadConfig would also open the EK roots the example names
	if err := dec.Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	if _, err := cfg.actionPolicy(); err != nil {
		t.Fatal(err)
	}
	for i, r := range cfg.Writ.Rules {
		for _, e := range r.Executables {
			if e == "any" {
				t.Errorf("deploy/broker.yaml: writ.rules[%d] allows any executable", i)
			}
		}
	}
}
