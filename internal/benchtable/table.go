package main

import (
	"fmt"
	"io"
	"math"
	"strings"
)

// Statuses of a row.
const (
	statusMet        = "met"
	statusNotMet     = "NOT met"
	statusNotRun     = "not run"
	statusMeasuredBy = "measured by "
)

// row is one goal evaluated against one run.
type row struct {
	goal
	figure   float64 // in g.Unit; NaN when there is none
	baseline string  // the per-operation cost as a multiple of the baseline
	status   string
}

// evaluate computes each goal's row from results.
func evaluate(goals []goal, results []result) []row {
	rows := make([]row, 0, len(goals))
	for _, g := range goals {
		r := row{goal: g, figure: math.NaN()}
		switch res := find(results, g.Benchmark); {
		case g.MeasuredBy != "":
			r.status = statusMeasuredBy + g.MeasuredBy
		case res == nil:
			r.status = statusNotRun
		default:
			v, ok := res.Metrics[g.Metric]
			if !ok {
				r.status = statusNotRun
				break
			}
			v *= g.Scale
			nsPerOp := v // the cost of one operation, for the baseline column
			switch {
			case strings.HasSuffix(g.Metric, "/s"):
				nsPerOp = 1e9 / v
			case strings.HasPrefix(g.Metric, "x-"), strings.HasPrefix(g.Metric, "pct-"): // a ratio (x-plain) or a percentage (pct-asked-done): the operation's cost is its ns/op
				nsPerOp = res.Metrics["ns/op"]
			}
			if r.figure = convert(v, g.Unit, results); math.IsNaN(r.figure) {
				r.status = statusNotRun // the baseline the unit needs is missing
				break
			}
			if base := baselineNs(results, g.Baseline); base > 0 && nsPerOp > 0 {
				r.baseline = fmt.Sprintf("%s× %s", num(nsPerOp/base), baselines[g.Baseline].label)
			}
			r.status = statusNotMet
			if g.Direction == "max" && r.figure <= g.Target || g.Direction == "min" && r.figure >= g.Target {
				r.status = statusMet
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// convert takes a figure in the goal's metric to its display unit.
func convert(v float64, unit string, results []result) float64 {
	switch unit {
	case "ms":
		return v / 1e6
	case "s":
		return v / 1e9
	case "/s":
		return 1e9 / v
	case "x verify", "x sign", "x exec":
		base := baselineNs(results, strings.TrimPrefix(unit, "x "))
		if base <= 0 {
			return math.NaN()
		}
		return v / base
	}
	return v
}

// baselineNs is the ns/op of a baseline in this run, or 0.
func baselineNs(results []result, name string) float64 {
	res := find(results, baselines[name].bench)
	if res == nil {
		return 0
	}
	return res.Metrics["ns/op"]
}

// num formats a figure with three significant digits and thousands
// separators for large ones.
func num(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v >= 1000:
		s := fmt.Sprintf("%.0f", v)
		var b strings.Builder
		for i, c := range s {
			if i > 0 && (len(s)-i)%3 == 0 {
				b.WriteByte(',')
			}
			b.WriteRune(c)
		}
		return b.String()
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.3g", v)
	}
}

func (r row) target() string {
	op := "≤"
	if r.Direction == "min" {
		op = "≥"
	}
	if r.MeasuredBy != "" {
		return "see goal"
	}
	return fmt.Sprintf("%s %s %s", op, num(r.Target), r.Unit)
}

// writeGoals writes the goals table in Markdown, then the notes.
func writeGoals(w io.Writer, rows []row, results []result) {
	var base []string
	for _, k := range []string{"verify", "sign", "exec"} {
		if ns := baselineNs(results, k); ns > 0 {
			base = append(base, fmt.Sprintf("%s %s µs", baselines[k].label, num(ns/1e3)))
		} else {
			base = append(base, baselines[k].label+" not run")
		}
	}
	fmt.Fprintf(w, "Baselines of this run: %s.\n\n", strings.Join(base, "; "))
	fmt.Fprintln(w, "| goal | target | figure | one operation vs baseline | benchmark | status |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for i, r := range rows {
		fig := "-"
		if !math.IsNaN(r.figure) {
			fig = num(r.figure) + " " + r.Unit
		}
		bench := r.Benchmark
		if bench == "" {
			bench = "-"
		} else if r.Scale != 1 {
			bench = fmt.Sprintf("%s (%s × %g)", bench, r.Metric, r.Scale)
		} else if r.Metric != "ns/op" {
			bench = fmt.Sprintf("%s (%s)", bench, r.Metric)
		}
		note := ""
		if r.Note != "" {
			note = fmt.Sprintf(" [%d]", i+1)
		}
		fmt.Fprintf(w, "| %s%s | %s | %s | %s | %s | %s |\n", cell(r.Goal), note, r.target(), fig, orDash(r.baseline), cell(bench), r.status)
	}
	fmt.Fprintln(w)
	for i, r := range rows {
		if r.Note != "" {
			fmt.Fprintf(w, "[%d] %s\n", i+1, strings.TrimSpace(r.Note))
		}
	}
}

// writeAll writes every benchmark of the run: ns/op, as a ratio to ECDSA
// P-256 verify, and process benchmarks (BenchmarkExec/*) to their floor.
func writeAll(w io.Writer, results []result) {
	verify := baselineNs(results, "verify")
	var floor float64
	if f := find(results, "BenchmarkExec/floor"); f != nil {
		floor = f.Metrics["ns/op"]
	}
	fmt.Fprintln(w, "| package | benchmark | ns/op | x verify | x floor | other metrics |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, r := range results {
		ns := r.Metrics["ns/op"]
		xv, xf := "-", "-"
		if strings.HasPrefix(r.Name, "BenchmarkExec/") && floor > 0 {
			xf = num(ns / floor)
		} else if verify > 0 {
			xv = num(ns / verify)
		}
		var other []string
		for _, u := range sortedUnits(r.Metrics) {
			if u != "ns/op" && u != "B/op" && u != "allocs/op" {
				other = append(other, num(r.Metrics[u])+" "+u)
			}
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s |\n", strings.TrimPrefix(r.Pkg, "github.com/writ-dev/writ/"), r.Name, num(ns), xv, xf, orDash(strings.Join(other, ", ")))
	}
}

func cell(s string) string { return strings.ReplaceAll(s, "|", `\|`) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
