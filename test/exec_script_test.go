package test

import (
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/writ-dev/writ/broker"
	"github.com/writ-dev/writ/enforce"
)

const deployScript = "#!/bin/sh -e\necho \"deployed $1 $#\" > marker\n"

// scriptRule allows the script with content script, run by interpreters.
func scriptRule(script string, interpreters ...string) string {
	for i, d := range interpreters {
		interpreters[i] = fmt.Sprintf("%q", "sha256:"+d)
	}
	return fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [\"sha256:%x\"]\n      interpreters: [%s]\n",
		td.Name(), sha256.Sum256([]byte(script)), strings.Join(interpreters, ", "))
}

// TestExecScript (issue 7, item 3): writ exec ./deploy.sh runs a real #!
// script when a rule allows both the script's digest and its
// interpreter's; both are bound into the writ, audited and measured.
func TestExecScript(t *testing.T) {
	e := newExecEnv(t, scriptRule(deployScript, shDigest(t)))
	if err := os.WriteFile(filepath.Join(e.work, "deploy.sh"), []byte(deployScript), 0o755); err != nil {
		t.Fatal(err)
	}
	e.wantExec(t, "", "marker", []string{"./deploy.sh", "prod"})
	out, err := os.ReadFile(filepath.Join(e.work, "marker"))
	if err != nil || string(out) != "deployed prod 1\n" {
		t.Fatalf("marker %q (%v); want the script's output with its argument", out, err)
	}
	last := e.lastAudit(t)
	scriptSum := fmt.Sprintf("%x", sha256.Sum256([]byte(deployScript)))
	if last.Refs["sha256"] != scriptSum || last.Refs["interpreter_sha256"] != shDigest(t) {
		t.Fatalf("audit entry %+v; want the script's and the interpreter's digests", last)
	}
	ev := e.lastRuntimeEvent(t)
	if ev.Exe != scriptSum || ev.Interp != shDigest(t) || ev.JTI != last.Refs["jti"] {
		t.Fatalf("runtime event %+v; want the script, its interpreter and the writ", ev)
	}
}

// TestExecScriptRefusals: a rule that allows the script but not its
// interpreter refuses it at the broker; an interpreter that is itself a
// script, a relative interpreter, or a #! line without an end are refused
// at the shim; and none of them runs or spends anything.
func TestExecScriptRefusals(t *testing.T) {
	nested := "#!" + "/WORK/inner.sh\necho ran > marker\n"
	e := newExecEnv(t, scriptRule(deployScript, strings.Repeat("ab", 32)))
	nested = strings.Replace(nested, "/WORK", e.work, 1)
	files := map[string]string{
		"deploy.sh":   deployScript,
		"inner.sh":    "#!/bin/sh\necho ran > marker\n",
		"nested.sh":   nested,
		"relative.sh": "#!sh\necho ran > marker\n",
		"long.sh":     "#!/bin/sh " + strings.Repeat("x", 300) + "\necho ran > marker\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(e.work, name), []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	e.wantExec(t, broker.ReasonActionDenied, "marker", []string{"./deploy.sh"})
	e.wantRefused(t, enforce.ReasonScriptNested, []string{"./nested.sh"})
	e.wantRefused(t, enforce.ReasonScriptInvalid, []string{"./relative.sh"})
	e.wantRefused(t, enforce.ReasonScriptInvalid, []string{"./long.sh"})
	if _, err := os.Stat(filepath.Join(e.work, "marker")); err == nil {
		t.Fatal("a refused script ran")
	}
}

// TestExecRefusesLoaderVariables (issue 7, item 4): a rule allowing
// /bin/sh does not let --env LD_PRELOAD=… run code inside it: the shim
// refuses it before asking the broker, and the broker refuses it when the
// shim is told to pass it (as a crafted request would), with
// env_dangerous at both. A rule that names the variable opts in.
func TestExecRefusesLoaderVariables(t *testing.T) {
	// The preloaded library is the system's libc, so that the writ binary,
	// which inherits it too, runs as usual.
	libc, err := filepath.EvalSymlinks("/lib/x86_64-linux-gnu/libc.so.6")
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("LD_PRELOAD", libc)
	t.Setenv("BASH_ENV", "/nonexistent/evil.sh")
	e := newExecEnv(t, "")
	e.wantRefused(t, enforce.ReasonEnvDangerous, touch("marker"), "--env", "LD_PRELOAD")
	// Past the shim: the broker refuses it too.
	e.wantExec(t, enforce.ReasonEnvDangerous, "marker", touch("marker"), "--env", "LD_PRELOAD", "--allow-dangerous-env", "LD_PRELOAD")
	e.wantExec(t, enforce.ReasonEnvDangerous, "marker", touch("marker"), "--env", "BASH_ENV", "--allow-dangerous-env", "BASH_ENV")

	optIn := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n      env:\n        names: [LD_PRELOAD]\n        values: {LD_PRELOAD: %q}\n",
		td.Name(), "sha256:"+shDigest(t), regexp.QuoteMeta(libc))
	e2 := newExecEnv(t, optIn)
	e2.wantExec(t, "", "marker", touch("marker"), "--env", "LD_PRELOAD", "--allow-dangerous-env", "LD_PRELOAD")
}

// TestExecArgvRules (issue 7, item 4): a rule can pin argv.
func TestExecArgvRules(t *testing.T) {
	rule := fmt.Sprintf("writ:\n  rules:\n    - subject: spiffe://%s/node/*\n      kind: exec\n      executables: [%q]\n      argv:\n        prefix: [/bin/sh, -c]\n      when: 'action.argv.size() == 3 && action.argv[2].startsWith(\"echo ran \")'\n",
		td.Name(), "sha256:"+shDigest(t))
	e := newExecEnv(t, rule)
	e.wantExec(t, broker.ReasonActionDenied, "marker", []string{"/bin/sh", "-c", "echo other > marker"})
	e.wantExec(t, broker.ReasonActionDenied, "marker", []string{"/bin/sh", "-e", "-c", "echo ran > marker"})
	e.wantExec(t, broker.ReasonActionDenied, "marker", []string{"/bin/sh", "-c", "echo ran > marker", "extra"})
	e.wantExec(t, "", "marker", touch("marker"))
}
