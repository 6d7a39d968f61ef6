package lineage

import (
	"bytes"
	"strings"
	"testing"

	"github.com/writ-dev/writ/audit"
)

// FuzzTree builds lineages from arbitrary parent links (entries are
// untrusted: a verified log still holds what callers asked for) and checks
// that every tree is finite, holds each writ once, and renders.
func FuzzTree(f *testing.F) {
	f.Add("a>b b>a c>a", "a")
	f.Add("a>a", "a")
	f.Add("a> b>a c>b d>zz", "c")
	f.Fuzz(func(t *testing.T, links, jti string) {
		var issued, execs []audit.Entry
		for i, l := range strings.Fields(links) {
			child, parent, _ := strings.Cut(l, ">")
			if i%2 == 0 {
				issued = append(issued, issue(i, child, parent))
			} else {
				execs = append(execs, execd(i, "exec-allow", node1, child, parent, "/bin/"+child))
			}
		}
		tree, err := Build(issued, execs).Tree(jti)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		var walk func(n *Node)
		walk = func(n *Node) {
			if seen[n.JTI] {
				t.Fatalf("%s drawn twice", n.JTI)
			}
			seen[n.JTI] = true
			for _, c := range n.Children {
				walk(c)
			}
		}
		walk(tree.Root)
		if !seen[jti] {
			t.Fatalf("the tree of %q does not hold it", jti)
		}
		for _, format := range []string{FormatText, FormatDOT, FormatMermaid, FormatJSON} {
			if err := tree.Write(new(bytes.Buffer), format); err != nil {
				t.Fatal(err)
			}
		}
	})
}
