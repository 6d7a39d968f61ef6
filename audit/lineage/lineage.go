// Package lineage rebuilds the tree of writs that an execution lineage
// formed (a writ's "par" names the writ of the governed process that asked
// for it) from audit entries: the broker's writ-issue entries (jti, parent,
// action, result, kind, display), nodes' exec-allow, exec-deny and
// exec-failed entries (jti, parent, path, sha256) and writ-request entries
// (a tool-call or HTTP writ asked through the agent: jti, parent, kind,
// display), MCP gateways' mcp-call entries (jti, server, tool) and HTTP
// gateways' http-request entries (jti, method, authority, path): one tree
// from an exec down to the HTTP requests its tool calls made
// (docs/adr/0031).
//
// It reads entries only; whether they can be trusted is for audit.Verify
// to say before they are given here. Entries are untrusted input all the
// same: a cycle or a parent that no log records is reported as a Problem,
// never followed twice.
package lineage

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/writ-dev/writ/audit"
)

// Reason codes of the problems a tree may have.
const (
	// ReasonCycle: following parents (or children) comes back to a writ
	// already in the tree.
	ReasonCycle = "lineage_cycle"
	// ReasonDanglingParent: the root names a parent that no log records.
	ReasonDanglingParent = "lineage_dangling_parent"
	// ReasonParentConflict: two entries give one writ different parents;
	// the broker's writ-issue entry is the one followed.
	ReasonParentConflict = "lineage_parent_conflict"
)

// ErrUnknownJTI is returned by Tree for a jti that no entry records.
var ErrUnknownJTI = fmt.Errorf("lineage: no log records this writ")

// Entry kinds lineage reads; all others are ignored.
const (
	kindIssue      = "writ-issue"
	kindExecAllow  = "exec-allow"
	kindExecDeny   = "exec-deny"
	kindExecFailed = "exec-failed"
	kindRequest    = "writ-request" // a writ asked through the node agent
	kindMCPCall    = "mcp-call"     // an MCP gateway's decision
	kindHTTP       = "http-request" // an HTTP gateway's decision
)

// Event is one entry about a writ: its issuance, or an exec under it.
type Event struct {
	Kind     string    `json:"kind"`
	Time     time.Time `json:"time"`
	Subject  string    `json:"subject"` // the writ's subject (issue) or the node it ran on (exec)
	Decision string    `json:"decision"`
	Reason   string    `json:"reason,omitempty"`
	Path     string    `json:"path,omitempty"`
	SHA256   string    `json:"sha256,omitempty"`
	// Target is what a gateway's decision was about: "SERVER TOOL" for an
	// mcp-call, "METHOD AUTHORITY PATH" for an http-request.
	Target string `json:"target,omitempty"`
}

// Node is one writ in a tree.
type Node struct {
	JTI      string  `json:"jti"`
	Parent   string  `json:"parent,omitempty"`
	Subject  string  `json:"subject,omitempty"` // from the broker's writ-issue entry
	Action   string  `json:"action,omitempty"`  // the action digest
	Kind     string  `json:"kind,omitempty"`    // the action's kind (exec, mcp, http) when an entry says
	Display  string  `json:"display,omitempty"` // the action as the broker or agent displayed it
	Path     string  `json:"path,omitempty"`    // what ran, from a node's exec entry
	Events   []Event `json:"events"`
	Children []*Node `json:"children,omitempty"`

	first         time.Time
	issuedParents []string // stated by writ-issue entries
	execParents   []string // stated by exec entries
}

// Problem is something wrong with the lineage the logs record.
type Problem struct {
	Reason string `json:"reason"`
	JTI    string `json:"jti"`
	Detail string `json:"detail"`
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s: %s", p.Reason, p.JTI, p.Detail) }

// Graph is every writ the entries given to Build record.
type Graph struct {
	nodes    map[string]*Node
	children map[string][]string
	problems []Problem
}

// Build indexes the lineage entries of one or more logs.
func Build(logs ...[]audit.Entry) *Graph {
	g := &Graph{nodes: map[string]*Node{}, children: map[string][]string{}}
	for _, entries := range logs {
		for _, e := range entries {
			g.add(e)
		}
	}
	for _, jti := range slices.Sorted(maps.Keys(g.nodes)) {
		n := g.nodes[jti]
		g.settle(n)
		if n.Parent != "" {
			g.children[n.Parent] = append(g.children[n.Parent], jti)
		}
	}
	for p, kids := range g.children {
		slices.SortFunc(kids, func(a, b string) int {
			return cmp.Or(g.nodes[a].first.Compare(g.nodes[b].first), cmp.Compare(a, b))
		})
		g.children[p] = kids
	}
	return g
}

func (g *Graph) add(e audit.Entry) {
	switch e.Kind {
	case kindIssue, kindExecAllow, kindExecDeny, kindExecFailed, kindRequest, kindMCPCall, kindHTTP:
	default:
		return
	}
	jti := e.Refs["jti"]
	if jti == "" {
		return // refused before there was a writ
	}
	n := g.nodes[jti]
	if n == nil {
		n = &Node{JTI: jti, first: e.Time}
		g.nodes[jti] = n
	}
	if e.Time.Before(n.first) {
		n.first = e.Time
	}
	ev := Event{Kind: e.Kind, Time: e.Time.UTC(), Subject: e.Subject, Decision: e.Decision, Reason: e.Reason}
	switch e.Kind {
	case kindMCPCall:
		ev.Target = strings.TrimSpace(e.Refs["server"] + " " + e.Refs["tool"])
	case kindHTTP:
		ev.Target = strings.TrimSpace(e.Refs["method"] + " " + e.Refs["authority"] + " " + e.Refs["path"])
	default:
		ev.Path, ev.SHA256 = e.Refs["path"], e.Refs["sha256"]
	}
	n.Events = append(n.Events, ev)
	if n.Action == "" {
		n.Action = e.Refs["action"]
	}
	if n.Path == "" {
		n.Path = ev.Path
	}
	if n.Kind == "" {
		n.Kind = e.Refs["kind"]
	}
	if n.Display == "" {
		n.Display = e.Refs["display"]
	}
	parent, named := e.Refs["parent"]
	switch {
	case e.Kind == kindIssue:
		n.Subject = e.Subject
		n.issuedParents = append(n.issuedParents, parent)
	case e.Kind == kindMCPCall || e.Kind == kindHTTP: // a gateway does not say
	case named || e.Kind != kindExecFailed: // exec-failed entries do not repeat the parent
		n.execParents = append(n.execParents, parent)
	}
}

// settle chooses n's parent: the broker's record when there is one, else
// the nodes'; any other parent stated is a conflict.
func (g *Graph) settle(n *Node) {
	stated := append(slices.Clone(n.issuedParents), n.execParents...)
	if len(stated) == 0 {
		return
	}
	n.Parent = stated[0]
	for _, p := range stated[1:] {
		if p != n.Parent {
			g.problems = append(g.problems, Problem{ReasonParentConflict, n.JTI,
				fmt.Sprintf("entries name parents %q and %q; following %q", n.Parent, p, n.Parent)})
			return
		}
	}
}

// Tree is the lineage of one writ: rooted at its ancestor-most writ that
// the logs record, down through every descendant.
type Tree struct {
	JTI      string    `json:"jti"` // the writ asked about
	Root     *Node     `json:"root"`
	Problems []Problem `json:"problems,omitempty"`
}

// Tree returns the lineage of jti:
//
//  1. ErrUnknownJTI when no entry records jti.
//  2. Up: follow parents while the logs record them; a parent already
//     followed is ReasonCycle (the root is the writ that closed the cycle),
//     a parent no log records is ReasonDanglingParent (the root is the
//     writ that names it).
//  3. Down: every child of every writ in the tree, in order of first
//     entry; a child already in the tree is ReasonCycle, not descended.
//  4. ReasonParentConflict for any writ in the tree whose entries disagree.
func (g *Graph) Tree(jti string) (*Tree, error) {
	start := g.nodes[jti]
	if start == nil {
		return nil, fmt.Errorf("%w: %q", ErrUnknownJTI, jti)
	}
	t := &Tree{JTI: jti}
	root := start
	seen := map[string]bool{root.JTI: true}
	for root.Parent != "" {
		p := g.nodes[root.Parent]
		if p == nil {
			t.Problems = append(t.Problems, Problem{ReasonDanglingParent, root.JTI,
				fmt.Sprintf("its parent %q is in none of the logs", root.Parent)})
			break
		}
		if seen[p.JTI] {
			t.Problems = append(t.Problems, Problem{ReasonCycle, root.JTI,
				fmt.Sprintf("its parent %q is already among its descendants", p.JTI)})
			break
		}
		seen[p.JTI] = true
		root = p
	}
	inTree := map[string]bool{}
	t.Root = g.descend(t, root, inTree)
	for _, p := range g.problems {
		if inTree[p.JTI] {
			t.Problems = append(t.Problems, p)
		}
	}
	return t, nil
}

// descend copies n and its descendants, each writ once.
func (g *Graph) descend(t *Tree, n *Node, inTree map[string]bool) *Node {
	inTree[n.JTI] = true
	out := *n
	out.Children = nil
	out.Events = slices.Clone(n.Events)
	slices.SortStableFunc(out.Events, func(a, b Event) int { return a.Time.Compare(b.Time) })
	for _, c := range g.children[n.JTI] {
		if inTree[c] {
			t.Problems = append(t.Problems, Problem{ReasonCycle, c,
				fmt.Sprintf("it is already in the tree, and names %q as its parent", n.JTI)})
			continue
		}
		out.Children = append(out.Children, g.descend(t, g.nodes[c], inTree))
	}
	return &out
}
