package lineage

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Formats Write accepts.
const (
	FormatText    = "text"
	FormatDOT     = "dot"
	FormatMermaid = "mermaid"
	FormatJSON    = "json"
)

// Write prints t in format: text (an indented tree), dot (Graphviz),
// mermaid (a flowchart) or json.
func (t *Tree) Write(w io.Writer, format string) error {
	var s string
	switch format {
	case FormatText, "":
		s = t.text()
	case FormatDOT:
		s = t.dot()
	case FormatMermaid:
		s = t.mermaid()
	case FormatJSON:
		raw, err := json.MarshalIndent(t, "", "  ")
		if err != nil {
			return fmt.Errorf("lineage: %w", err)
		}
		s = string(raw) + "\n"
	default:
		return fmt.Errorf("lineage: format %q is not text, dot, mermaid or json", format)
	}
	_, err := io.WriteString(w, s)
	return err
}

// fields are what a node shows: jti, subject, what ran, the decisions and
// where they were taken.
func (n *Node) fields() (jti, subject, action, decisions string) {
	subject = n.Subject
	if subject == "" {
		subject = "(no writ-issue entry)"
	}
	action = n.Path
	switch {
	case action != "":
	case n.Display != "":
		action = n.Display
	case n.Kind != "" && n.Kind != "exec":
		action = n.Kind + " action " + n.Action
	default:
		action = "action " + n.Action
	}
	var ds []string
	for _, e := range n.Events {
		d := e.Kind
		if e.Kind == kindMCPCall || e.Kind == kindHTTP || e.Kind == kindRequest {
			d += " " + e.Decision
		}
		if e.Reason != "" {
			d += " " + e.Reason
		}
		switch e.Kind {
		case kindIssue:
		case kindMCPCall, kindHTTP:
			d += " " + e.Target + " from " + e.Subject
		default:
			d += " on " + e.Subject
		}
		ds = append(ds, d)
	}
	return n.JTI, subject, action, strings.Join(ds, ", ")
}

// visit calls fn for every node of t, parents first.
func (t *Tree) visit(fn func(n, parent *Node, prefix string, last bool)) {
	var walk func(n, parent *Node, prefix string, last bool)
	walk = func(n, parent *Node, prefix string, last bool) {
		fn(n, parent, prefix, last)
		next := prefix
		if parent != nil {
			next += map[bool]string{true: "    ", false: "│   "}[last]
		}
		for i, c := range n.Children {
			walk(c, n, next, i == len(n.Children)-1)
		}
	}
	walk(t.Root, nil, "", true)
}

func (t *Tree) text() string {
	var b strings.Builder
	t.visit(func(n, parent *Node, prefix string, last bool) {
		branch := ""
		if parent != nil {
			branch = map[bool]string{true: "└── ", false: "├── "}[last]
		}
		jti, subject, action, decisions := n.fields()
		mark := ""
		if jti == t.JTI {
			mark = "  <="
		}
		fmt.Fprintf(&b, "%s%s%s %s %s: %s%s\n", prefix, branch, clean(jti), clean(subject), clean(action), clean(decisions), mark)
	})
	t.problemLines(&b, "")
	return b.String()
}

func (t *Tree) problemLines(b *strings.Builder, comment string) {
	for _, p := range t.Problems {
		fmt.Fprintf(b, "%sproblem: %s\n", comment, clean(p.String()))
	}
}

// clean keeps a logged string on one printable line.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

func (t *Tree) ids() map[*Node]string {
	ids := map[*Node]string{}
	t.visit(func(n, _ *Node, _ string, _ bool) { ids[n] = fmt.Sprintf("n%d", len(ids)) })
	return ids
}

func (t *Tree) dot() string {
	var b strings.Builder
	b.WriteString("digraph lineage {\n  node [shape=box];\n")
	ids := t.ids()
	t.visit(func(n, parent *Node, _ string, _ bool) {
		jti, subject, action, decisions := n.fields()
		style := ""
		if jti == t.JTI {
			style = ", style=bold"
		}
		fmt.Fprintf(&b, "  %s [label=%s%s];\n", ids[n], dotQuote(jti, subject, action, decisions), style)
		if parent != nil {
			fmt.Fprintf(&b, "  %s -> %s;\n", ids[parent], ids[n])
		}
	})
	t.problemLines(&b, "  // ")
	b.WriteString("}\n")
	return b.String()
}

// dotQuote is a DOT string of lines.
func dotQuote(lines ...string) string {
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`)
	for i, l := range lines {
		lines[i] = r.Replace(clean(l))
	}
	return `"` + strings.Join(lines, `\n`) + `"`
}

func (t *Tree) mermaid() string {
	var b strings.Builder
	b.WriteString("flowchart TD\n")
	ids := t.ids()
	t.visit(func(n, parent *Node, _ string, _ bool) {
		jti, subject, action, decisions := n.fields()
		fmt.Fprintf(&b, "  %s[%s]\n", ids[n], mermaidQuote(jti, subject, action, decisions))
		if parent != nil {
			fmt.Fprintf(&b, "  %s --> %s\n", ids[parent], ids[n])
		}
	})
	fmt.Fprintf(&b, "  style %s stroke-width:3px\n", findID(t, ids))
	t.problemLines(&b, "  %% ")
	return b.String()
}

func findID(t *Tree, ids map[*Node]string) string {
	for n, id := range ids {
		if n.JTI == t.JTI {
			return id
		}
	}
	return ids[t.Root]
}

// mermaidQuote is a Mermaid quoted label of lines; a quote and the
// characters Mermaid reads as markup are entity codes.
func mermaidQuote(lines ...string) string {
	r := strings.NewReplacer(`"`, "#quot;", "<", "#lt;", ">", "#gt;", "&", "#amp;", "#", "#35;")
	for i, l := range lines {
		lines[i] = r.Replace(clean(l))
	}
	return `"` + strings.Join(lines, "<br/>") + `"`
}
