package policy

import (
	"fmt"
	"io"
	"strings"
	"unicode/utf8"
)

// Subject is one node's stored evidence for a dry run.
type Subject struct {
	Name   string
	Claims map[string]any // the claims document of the node's latest evidence
	// Current is the node's stored result under the policy in force, or nil
	// when unknown.
	Current *Result
}

// DryRunRow is what a candidate policy would decide for one subject.
type DryRunRow struct {
	Name string
	// BeforeKnown says whether the subject had a current result; when it did
	// not, Before is false and means "unknown".
	BeforeKnown bool
	Before      bool // passes under the policy in force
	After       bool // would pass under the candidate
	Findings    []Finding
}

// Lockout reports whether the candidate would fail a node that passes now.
func (r DryRunRow) Lockout() bool { return r.BeforeKnown && r.Before && !r.After }

// DryRun evaluates a candidate policy over the stored claims of each
// subject, in order, and changes nothing: not the subjects, their claims or
// their current results.
func DryRun(candidate *Policy, subjects []Subject) []DryRunRow {
	rows := make([]DryRunRow, 0, len(subjects))
	for _, s := range subjects {
		res := candidate.Evaluate(s.Claims)
		row := DryRunRow{Name: s.Name, After: res.Passed, Findings: res.Findings}
		if s.Current != nil {
			row.BeforeKnown, row.Before = true, s.Current.Passed
		}
		rows = append(rows, row)
	}
	return rows
}

// DryRunSummary counts the rows of a dry run.
type DryRunSummary struct {
	Nodes        int
	Pass, Fail   int // under the candidate
	Lockouts     int // pass now, would fail
	NewlyPassing int // fail now, would pass
	Unknown      int // no current result
}

// Summarize counts the rows of a dry run.
func Summarize(rows []DryRunRow) DryRunSummary {
	s := DryRunSummary{Nodes: len(rows)}
	for _, r := range rows {
		if r.After {
			s.Pass++
		} else {
			s.Fail++
		}
		switch {
		case !r.BeforeKnown:
			s.Unknown++
		case r.Lockout():
			s.Lockouts++
		case !r.Before && r.After:
			s.NewlyPassing++
		}
	}
	return s
}

// WriteReport writes a dry run as a table: node, current and candidate
// decisions, LOCKOUT where a passing node would fail, each finding on an
// indented line below its node, and a summary line. Names and claim values
// from nodes are quoted when they hold anything but printable ASCII, so they
// cannot forge lines of the report.
func WriteReport(w io.Writer, rows []DryRunRow) error {
	width := len("NODE")
	names := make([]string, len(rows))
	for i, r := range rows {
		names[i] = printable(r.Name)
		width = max(width, utf8.RuneCountInString(names[i]))
	}
	ew := &errWriter{w: w}
	row := func(name, before, after, mark string) {
		ew.println(strings.TrimRight(fmt.Sprintf("%-*s  %-7s  %-9s  %s", width, name, before, after, mark), " "))
	}
	row("NODE", "CURRENT", "CANDIDATE", "")
	for i, r := range rows {
		mark := ""
		switch {
		case r.Lockout():
			mark = "LOCKOUT"
		case r.BeforeKnown && !r.Before && r.After:
			mark = "newly passing"
		}
		row(names[i], decision(r.BeforeKnown, r.Before), decision(true, r.After), mark)
		for _, f := range r.Findings {
			ew.println("    " + f.String())
		}
	}
	s := Summarize(rows)
	ew.println(fmt.Sprintf("%d node(s): %d pass, %d fail under the candidate; %d lockout(s), %d newly passing, %d without a current result",
		s.Nodes, s.Pass, s.Fail, s.Lockouts, s.NewlyPassing, s.Unknown))
	if ew.err != nil {
		return fmt.Errorf("policy: report: %w", ew.err)
	}
	return nil
}

// errWriter writes lines until the first error, and keeps it.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) println(s string) {
	if e.err == nil {
		_, e.err = io.WriteString(e.w, s+"\n")
	}
}

func decision(known, pass bool) string {
	switch {
	case !known:
		return "unknown"
	case pass:
		return "pass"
	default:
		return "FAIL"
	}
}
