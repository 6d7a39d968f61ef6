package report

import (
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// NotVerified is how text and HTML show a count no verified log gives.
const NotVerified = "not verified"

// WriteText writes the report as aligned tables for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	p := func(format string, args ...any) { fmt.Fprintf(tw, format, args...) }
	p("writ coverage report, %s", r.GeneratedAt.Format(time.RFC3339))
	if r.Since != nil {
		p(", decisions since %s", r.Since.Format(time.RFC3339))
	}
	p("; anchors stale after %s\n", time.Duration(r.StaleAfterSeconds)*time.Second)
	s := r.Summary
	p("%d node(s), %d in good standing (%s); %d log(s) verified, %d NOT verified; %d node(s) without a recent anchor\n\n",
		s.Nodes, s.GoodStanding, percent(s.GoodStandingShare), s.LogsVerified, s.LogsFailed, s.StaleAnchors)

	p("TRUST DOMAIN\tNODES\tATTESTED\tGOOD\tFAILED\tSTALE\tREVOKED\tENROLLED\tGOOD %%\tEXEC allow/deny\tMCP allow/deny\tHTTP allow/deny\tWRIT allow/deny\n")
	for _, d := range r.TrustDomains {
		p("%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", clean(d.TrustDomain), d.Nodes, d.Attested, d.GoodStanding, d.Failed, d.Stale,
			d.Revoked, d.Enrolled, percent(d.GoodStandingShare), d.Decisions.Exec.text(), d.Decisions.MCP.text(), d.Decisions.HTTP.text(), d.Decisions.Writ.text())
	}
	p("all\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n\n", s.Nodes, s.Attested, s.GoodStanding, s.Failed, s.Stale, s.Revoked, s.Enrolled,
		percent(s.GoodStandingShare), s.Decisions.Exec.text(), s.Decisions.MCP.text(), s.Decisions.HTTP.text(), s.Decisions.Writ.text())

	p("NODE\tSTATE\tGOOD\tLATEST RESULT\tANCHOR size, age\tLOG\tEXEC allow/deny\tWRIT allow/deny\tMCP allow/deny\tHTTP allow/deny\n")
	for _, n := range r.Nodes {
		good := "no"
		if n.GoodStanding {
			good = "yes"
		}
		res := "none"
		if lr := n.LatestResult; lr != nil {
			res = "pass " + lr.Time.Format(time.RFC3339)
			if !lr.Passed {
				res = "FAIL " + lr.Time.Format(time.RFC3339) + " " + lr.Reason
			}
		}
		anchor := "none"
		if a := n.Anchor; a != nil {
			anchor = fmt.Sprintf("%d, %s", a.Size, time.Duration(a.AgeSeconds)*time.Second)
		}
		if n.AnchorStale {
			anchor += " STALE"
		}
		log := n.Log
		if log == LogFailed {
			log = "NOT VERIFIED"
		}
		p("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", clean(shortNode(n.SPIFFEID)), clean(n.State), good, clean(res), anchor, log,
			n.Decisions.Exec.text(), n.Decisions.Writ.text(), n.Decisions.MCP.text(), n.Decisions.HTTP.text())
	}
	p("\n")

	p("REFUSED\tREASON\tCOUNT\n")
	reasons := s.Decisions.reasons()
	for _, rc := range reasons {
		p("%s\t%s\t%d\n", rc.Kind, clean(rc.Reason), rc.Count)
	}
	if len(reasons) == 0 {
		p("-\tnone counted\t-\n")
	}
	p("\n")

	p("LOG\tROLE\tVERIFIED\tENTRIES\tCHECKPOINTED\tBYTES\tLAST CHECKPOINTED\tCOUNTED\tPROBLEM\n")
	for _, l := range r.Logs {
		verified, last, problem := "NO", "-", "-"
		if l.Verified {
			verified = "yes, " + l.VerifiedAgainst
		} else {
			problem = l.Problem + ": " + l.Detail
		}
		if l.LastCheckpointed != nil {
			last = l.LastCheckpointed.Format(time.RFC3339)
		}
		p("%s\t%s\t%s\t%d\t%d\t%d\t%s\t%d\t%s\n", clean(l.Dir), l.Role, verified, l.Entries, l.Checkpointed, l.Bytes, last, l.Counted, clean(problem))
	}
	return tw.Flush()
}

// text is a tally for a table cell.
func (t *Tally) text() string {
	if t == nil {
		return NotVerified
	}
	s := fmt.Sprintf("%d/%d", t.Allowed, t.Denied)
	if t.Failed > 0 {
		s += fmt.Sprintf(" (%d failed)", t.Failed)
	}
	if t.Incomplete {
		s += " INCOMPLETE"
	}
	return s
}

func percent(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }

// shortNode shortens a node's SPIFFE ID for a table: the fingerprint's
// first 16 hex digits.
func shortNode(id string) string {
	if i := strings.LastIndex(id, "/node/"); i >= 0 && len(id) > i+len("/node/")+16 {
		return id[:i+len("/node/")+16] + "…"
	}
	return id
}

// clean keeps a table row on one line, and a terminal from interpreting
// escape sequences, whatever a store or log holds: control characters
// become '?'.
func clean(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return '?'
		}
		return r
	}, s)
}

// ReasonCount is one reason's count of refusals of one kind.
type ReasonCount struct {
	Kind   string
	Reason string
	Count  int
}

// reasons lists the refusals (and execs that failed to start) by kind and
// reason, most frequent first.
func (d Decisions) reasons() []ReasonCount {
	var out []ReasonCount
	for _, k := range []struct {
		name string
		t    *Tally
	}{{kindExec, d.Exec}, {kindMCP, d.MCP}, {kindHTTP, d.HTTP}, {kindWrit, d.Writ}} {
		if k.t == nil {
			continue
		}
		for reason, n := range k.t.Reasons {
			out = append(out, ReasonCount{Kind: k.name, Reason: reason, Count: n})
		}
		for reason, n := range k.t.FailedReasons {
			out = append(out, ReasonCount{Kind: k.name + " (failed)", Reason: reason, Count: n})
		}
	}
	slices.SortFunc(out, func(a, b ReasonCount) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Kind+" "+a.Reason, b.Kind+" "+b.Reason)
	})
	return out
}
