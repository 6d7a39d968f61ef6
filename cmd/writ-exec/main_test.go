package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// TestDeps: the exec shim links none of the packages whose start-up made
// a governed exec cost 2x the floor and more (docs/adr/0018, 0022), so that
// a future import cannot silently bring the cost back.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) < 10 {
		t.Fatalf("go list -deps listed %d packages: %q", len(deps), out)
	}
	for _, dep := range deps {
		for _, banned := range []string{"google.golang.org/grpc", "google.golang.org/protobuf", "github.com/google/cel-go",
			"modernc.org/sqlite", "github.com/prometheus", "github.com/urfave/cli", "github.com/google/go-tpm"} {
			if dep == banned || strings.HasPrefix(dep, banned+"/") {
				t.Errorf("writ-exec links %s", dep)
			}
		}
	}
}

func TestUsageAndRefusal(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--", "/bin/true"}, 126, "writ-exec: agent_unreachable: node API /nonexistent/node.sock: "},
		{[]string{"--env", "LD_PRELOAD", "--", "/bin/true"}, 126, "writ-exec: env_dangerous: LD_PRELOAD is a loader or interpreter variable"},
		{[]string{"--", "/nonexistent/cmd"}, 126, "writ-exec: exec_not_found: "},
		{nil, 2, "writ-exec: usage: no command"},
		{[]string{"--allow-dangerous-env", "LD_PRELOAD", "--", "/bin/true"}, 2, "writ-exec: usage: --allow-dangerous-env LD_PRELOAD does nothing without --env LD_PRELOAD"},
		{[]string{"--agent-uid", "x", "--", "/bin/true"}, 2, `writ-exec: usage: --agent-uid "x": not a uid`},
		{[]string{"--parent", "x", "--", "/bin/true"}, 2, "flag provided but not defined: -parent"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			t.Setenv("WRIT_NODE_SOCKET", "/nonexistent/node.sock")
			var stderr bytes.Buffer
			code := run(tc.args, &stderr)
			if code != tc.code || !strings.HasPrefix(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.code, tc.want)
			}
			if code == 126 && strings.Count(stderr.String(), "\n") != 1 {
				t.Fatalf("stderr %q; want one line", stderr.String())
			}
		})
	}
}
