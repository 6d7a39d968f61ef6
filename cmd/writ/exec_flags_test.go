package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"
)

// TestShimFlagsThatDoNothing: flags that a shim command would silently
// ignore are usage errors (exit status 2), refused before anything is
// checked or run.
func TestShimFlagsThatDoNothing(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"exec", "--direct", "--writ", "w.jws", "--once", "--", "/bin/true"}, "--once does nothing here"},
		{[]string{"exec", "--direct", "--writ", "w.jws", "--once=false", "--", "/bin/true"}, "--once does nothing here"},
		{[]string{"exec", "--writ", "w.jws", "--", "/bin/true"}, "--writ needs --direct"},
		{[]string{"exec", "--agent-uid", "4294967296", "--", "/bin/true"}, "--agent-uid 4294967296: not a uid"},
		{[]string{"exec", "--", "/bin/true"}, "--broker does nothing here: the agent holds"}, // --broker and --data-dir below
		{[]string{"exec", "--direct", "--agent", "/tmp/x.sock", "--", "/bin/true"}, "--agent does nothing here"},
		{[]string{"exec", "--direct", "--agent-uid", "7", "--", "/bin/true"}, "--agent-uid does nothing here"},
		{[]string{"request", "--skew", "10s", "--", "/bin/true"}, "--skew does nothing here"},
		{[]string{"exec", "--allow-dangerous-env", "LD_PRELOAD", "--", "/bin/true"}, "--allow-dangerous-env LD_PRELOAD does nothing without --env LD_PRELOAD"},
		{[]string{"request", "--env", "LD_AUDIT", "--allow-dangerous-env", "LD_PRELOAD", "--", "/bin/true"}, "--allow-dangerous-env LD_PRELOAD does nothing"},
		{[]string{"request", "--tool", "echo", "--", "/bin/true"}, "--tool does nothing here: they go with --mcp-server"},
		{[]string{"request", "--audience", "spiffe://d/gw", "--", "/bin/true"}, "--audience does nothing here"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo", "--", "/bin/true"}, "--mcp-server requests a writ for a tool call, not for a command"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo", "--env", "HOME"}, "--env does nothing here: a tool call has no environment"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp"}, "--mcp-server needs --tool"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo", "--arguments", "[1]"}, "--arguments: not a JSON object"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo", "--arguments", "null"}, "--arguments: not a JSON object"},
		{[]string{"request", "--http-method", "GET"}, "an http writ needs --http-url"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo", "--http-method", "GET"}, "--mcp-server and --http-url: a writ is for one action"},
		{[]string{"request", "--http-method", "GET", "--http-url", "https://a.test/b", "--tool", "echo"}, "--tool does nothing here: they go with --mcp-server"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo", "--header", "a:b"}, "--header does nothing here: they go with --http-url"},
		{[]string{"request", "--http-method", "GET", "--http-url", "https://u@a.test/b", "--audience", "spiffe://d/gw"}, "--http-url \"https://u@a.test/b\": no host, or user information"},
		{[]string{"request", "--mcp-server", "spiffe://d/mcp", "--tool", "echo"}, "--broker does nothing here: the agent holds"},
		{[]string{"request", "--agent", "/tmp/x.sock", "--", "/bin/true"}, "--agent does nothing here: a command's writ"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"writ"}, tc.args...)
			args = append(args[:2], append([]string{"--broker", "127.0.0.1:1", "--data-dir", t.TempDir()}, args[2:]...)...)
			err := newApp(&stdout, &stderr).Run(args)
			if code := exitCode(err); code != 2 || err == nil || !strings.Contains(err.Error(), "usage: "+tc.want) {
				t.Fatalf("exit %d, error %v; want exit 2 and %q", code, err, tc.want)
			}
		})
	}
}

// TestShimFlagsFromTheEnvironment: a flag the agent path does not use is
// refused on the command line, not when it comes from the environment (it
// may be meant for writ request or writ exec --direct).
func TestShimFlagsFromTheEnvironment(t *testing.T) {
	t.Setenv("WRIT_BROKER", "127.0.0.1:1")
	var stdout, stderr bytes.Buffer
	err := newApp(&stdout, &stderr).Run([]string{"writ", "exec", "--agent", filepath.Join(t.TempDir(), "none.sock"), "--", "/bin/true"})
	if code := exitCode(err); code != 126 || !strings.Contains(err.Error(), "agent_unreachable") {
		t.Fatalf("exit %d, error %v; want 126 agent_unreachable (the environment's broker is not refused)", code, err)
	}
}

// TestExecHasNoParent: writ exec takes no --parent, through the agent or
// --direct: the agent finds the parent from the caller's ancestry
// (docs/adr/0020).
func TestExecHasNoParent(t *testing.T) {
	for _, args := range [][]string{
		{"writ", "exec", "--parent", "abc", "--", "/bin/true"},
		{"writ", "exec", "--direct", "--broker", "127.0.0.1:1", "--parent", "abc", "--", "/bin/true"},
	} {
		var stdout, stderr bytes.Buffer
		err := newApp(&stdout, &stderr).Run(args)
		if err == nil || !strings.Contains(err.Error(), "flag provided but not defined: -parent") {
			t.Fatalf("%v: %v; want --parent refused as undefined", args, err)
		}
	}
}
