package lineage

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/writ-dev/writ/audit"
)

var update = flag.Bool("update", false, "rewrite the golden files")

const (
	node1 = "spiffe://example.org/node/n1"
	node2 = "spiffe://example.org/node/n2"
)

var t0 = time.Date(2026, 12, 2, 4, 0, 0, 0, time.UTC)

func issue(sec int, jti, parent string) audit.Entry {
	return audit.Entry{Kind: "writ-issue", Time: t0.Add(time.Duration(sec) * time.Second), Subject: node1, Decision: "allow",
		Refs: map[string]string{"jti": jti, "parent": parent, "action": "sha256:a" + jti, "result": "r1"}}
}

func execd(sec int, kind, node, jti, parent, path string) audit.Entry {
	e := audit.Entry{Kind: kind, Time: t0.Add(time.Duration(sec) * time.Second), Subject: node, Decision: "allow",
		Refs: map[string]string{"jti": jti, "path": path, "sha256": "s" + jti, "action": "sha256:a" + jti}}
	if parent != "" {
		e.Refs["parent"] = parent
	}
	if kind != "exec-allow" {
		e.Decision, e.Reason = "deny", "executable_mismatch"
	}
	return e
}

// family is a broker log and two nodes' logs: a shell (root) ran a child
// on n1 that ran a grandchild (denied) on n2, and a second child on n1.
func family() (broker, n1, n2 []audit.Entry) {
	broker = []audit.Entry{
		issue(0, "root", ""), issue(1, "child-a", "root"), issue(2, "grand", "child-a"), issue(3, "child-b", "root"),
		issue(4, "stranger", ""),
		{Kind: "writ-deny", Time: t0, Subject: node1, Decision: "deny", Reason: "parent_invalid"},
	}
	n1 = []audit.Entry{
		execd(0, "exec-allow", node1, "root", "", "/usr/bin/bash"),
		execd(1, "exec-allow", node1, "child-a", "root", "/usr/bin/make"),
		execd(3, "exec-allow", node1, "child-b", "root", "/usr/bin/cc"),
		{Kind: "attest", Time: t0, Subject: node1, Decision: "pass"},
	}
	n2 = []audit.Entry{execd(2, "exec-deny", node2, "grand", "child-a", "/tmp/evil\n\"<x>\"")}
	return
}

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s:\ngot\n%s\nwant\n%s", name, got, want)
	}
}

// TestTreeFormats draws one lineage, asked about a grandchild, in every
// format: the tree is rooted at the ancestor-most writ and holds every
// descendant, not the unrelated writ.
func TestTreeFormats(t *testing.T) {
	b, n1, n2 := family()
	tree, err := Build(b, n1, n2).Tree("grand")
	if err != nil {
		t.Fatal(err)
	}
	if tree.Root.JTI != "root" || len(tree.Root.Children) != 2 || len(tree.Problems) != 0 {
		t.Fatalf("tree rooted at %s with %d children, problems %v", tree.Root.JTI, len(tree.Root.Children), tree.Problems)
	}
	for _, f := range []string{FormatText, FormatDOT, FormatMermaid, FormatJSON} {
		var out bytes.Buffer
		if err := tree.Write(&out, f); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(out.String(), "stranger") {
			t.Errorf("%s: an unrelated writ is drawn:\n%s", f, out.String())
		}
		golden(t, "family."+f, out.Bytes())
	}
	if err := tree.Write(new(bytes.Buffer), "svg"); err == nil {
		t.Error("an unknown format was accepted")
	}
}

// TestTreeProblems: cycles, dangling and conflicting parents are reported
// and the tree is finite.
func TestTreeProblems(t *testing.T) {
	for _, tc := range []struct {
		name    string
		logs    [][]audit.Entry
		jti     string
		root    string
		reasons []string
	}{
		{"self parent", [][]audit.Entry{{issue(0, "a", "a")}}, "a", "a", []string{ReasonCycle, ReasonCycle}},
		{"two-cycle", [][]audit.Entry{{issue(0, "a", "b"), issue(1, "b", "a")}}, "a", "b", []string{ReasonCycle, ReasonCycle}},
		{"dangling", [][]audit.Entry{{issue(0, "a", "gone"), issue(1, "b", "a")}}, "b", "a", []string{ReasonDanglingParent}},
		{"exec only, dangling", [][]audit.Entry{{execd(0, "exec-allow", node1, "a", "gone", "/bin/true")}}, "a", "a", []string{ReasonDanglingParent}},
		{"node contradicts broker", [][]audit.Entry{{issue(0, "p", ""), issue(1, "q", ""), issue(2, "a", "p")},
			{execd(2, "exec-allow", node1, "a", "q", "/bin/true")}}, "a", "p", []string{ReasonParentConflict}},
		{"exec-failed states no parent", [][]audit.Entry{{issue(0, "p", ""), issue(1, "a", "p")},
			{execd(2, "exec-failed", node1, "a", "", "/bin/true")}}, "a", "p", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tree, err := Build(tc.logs...).Tree(tc.jti)
			if err != nil {
				t.Fatal(err)
			}
			var reasons []string
			for _, p := range tree.Problems {
				reasons = append(reasons, p.Reason)
			}
			if tree.Root.JTI != tc.root || strings.Join(reasons, ",") != strings.Join(tc.reasons, ",") {
				t.Fatalf("root %s problems %v; want root %s reasons %v", tree.Root.JTI, tree.Problems, tc.root, tc.reasons)
			}
			var out bytes.Buffer
			if err := tree.Write(&out, FormatText); err != nil {
				t.Fatal(err)
			}
			if len(tc.reasons) > 0 && !strings.Contains(out.String(), "problem: "+tc.reasons[0]) {
				t.Fatalf("problem not printed:\n%s", out.String())
			}
		})
	}
}

func TestTreeUnknownJTI(t *testing.T) {
	b, n1, n2 := family()
	if _, err := Build(b, n1, n2).Tree("nope"); !errors.Is(err, ErrUnknownJTI) {
		t.Fatalf("err %v, want ErrUnknownJTI", err)
	}
	// An entry refused before there was a writ names no jti: not a writ.
	if _, err := Build(b).Tree(""); !errors.Is(err, ErrUnknownJTI) {
		t.Fatalf("empty jti: err %v, want ErrUnknownJTI", err)
	}
}

// hops is an exec (an AI agent) that started a sub-agent, whose tool call
// (asked through the agent: writ-request) an MCP gateway allowed, and
// whose HTTP writ (the tool server's) an HTTP gateway allowed, then one
// refused (revoked).
func hops() (broker, node, mcpgw, httpgw []audit.Entry) {
	at := func(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }
	iss := func(sec int, jti, parent, kind, display string) audit.Entry {
		e := issue(sec, jti, parent)
		e.Refs["kind"], e.Refs["display"] = kind, display
		return e
	}
	broker = []audit.Entry{iss(0, "agent", "", "exec", "/usr/bin/agent"), iss(1, "sub", "agent", "exec", "/usr/bin/sub"),
		iss(2, "call", "sub", "mcp", "mcp search on spiffe://example.org/mcp"),
		iss(3, "fetch", "call", "http", "http GET https://api.example.org/q")}
	node = []audit.Entry{
		execd(0, "exec-allow", node1, "agent", "", "/usr/bin/agent"),
		execd(1, "exec-allow", node1, "sub", "agent", "/usr/bin/sub"),
		{Kind: "writ-request", Time: at(2), Subject: node1, Decision: "allow", Refs: map[string]string{"jti": "call", "parent": "sub",
			"kind": "mcp", "lineage": "ancestry"}},
		{Kind: "writ-request", Time: at(2), Subject: node1, Decision: "deny", Reason: "parent_not_ancestor", Refs: map[string]string{"parent": "sub"}},
	}
	mcpgw = []audit.Entry{{Kind: "mcp-call", Time: at(3), Subject: node1, Decision: "allow",
		Refs: map[string]string{"jti": "call", "server": "spiffe://example.org/mcp", "tool": "search", "action": "sha256:acall"}}}
	httpgw = []audit.Entry{
		{Kind: "http-request", Time: at(4), Subject: "spiffe://example.org/mcp", Decision: "allow",
			Refs: map[string]string{"jti": "fetch", "method": "GET", "authority": "api.example.org", "path": "/q"}},
		{Kind: "http-request", Time: at(5), Subject: "spiffe://example.org/mcp", Decision: "deny", Reason: "writ_revoked",
			Refs: map[string]string{"jti": "fetch", "method": "GET", "authority": "api.example.org", "path": "/q"}},
	}
	return
}

// TestTreeAcrossHops: exec → sub-agent exec → tool call → HTTP request is
// one tree, each writ with its gateways' decisions, in every format; a
// gateway entry states no parent, and a refused request without a jti is
// no writ.
func TestTreeAcrossHops(t *testing.T) {
	b, n, m, h := hops()
	tree, err := Build(b, n, m, h).Tree("fetch")
	if err != nil {
		t.Fatal(err)
	}
	depth, x := 0, tree.Root
	for ; len(x.Children) == 1; x = x.Children[0] {
		depth++
	}
	if tree.Root.JTI != "agent" || depth != 3 || x.JTI != "fetch" || len(tree.Problems) != 0 {
		t.Fatalf("root %s, %d levels below it down to %s, problems %v; want agent → sub → call → fetch", tree.Root.JTI, depth, x.JTI, tree.Problems)
	}
	for _, f := range []string{FormatText, FormatDOT, FormatMermaid, FormatJSON} {
		var out bytes.Buffer
		if err := tree.Write(&out, f); err != nil {
			t.Fatal(err)
		}
		wants := []string{"mcp-call allow", "http-request allow", "writ_revoked", "writ-request allow"}
		if f == FormatJSON {
			wants = []string{`"mcp-call"`, `"http-request"`, `"writ_revoked"`, `"writ-request"`, `"target": "GET api.example.org /q"`}
		}
		for _, want := range wants {
			if !strings.Contains(out.String(), want) {
				t.Errorf("%s: %q not shown:\n%s", f, want, out.String())
			}
		}
		golden(t, "hops."+f, out.Bytes())
	}
}
