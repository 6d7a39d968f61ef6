package report

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"time"
)

// CSP is the Content-Security-Policy of the HTML page: nothing is loaded,
// no script runs; only the page's own inline styles (and data: images)
// apply.
const CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

//go:embed report.html.tmpl
var pageSource string

var page = template.Must(template.New("report").Funcs(template.FuncMap{
	"tally":   func(t *Tally) string { return t.text() },
	"percent": percent,
	"time":    func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"age":     func(s int64) string { return (time.Duration(s) * time.Second).String() },
	"short":   shortNode,
	"f":       func(v float64) string { return fmt.Sprintf("%.1f", v) },
	"args":    func(id, title string, c chart) chartArgs { return chartArgs{ID: id, Title: title, C: c} },
}).Parse(pageSource))

// WriteHTML writes the report as one self-contained HTML page: inline CSS
// and inline SVG charts, no script, no external URL, a CSP that forbids
// loading anything; every value from the store and the logs is escaped by
// html/template.
func (r *Report) WriteHTML(w io.Writer) error {
	return page.Execute(w, struct {
		*Report
		CSP    string
		Charts charts
	}{r, CSP, r.charts()})
}

// Chart geometry (SVG user units).
const (
	chartWidth = 860.0
	labelWidth = 220.0
	barHeight  = 22.0
	barGap     = 8.0
)

type charts struct {
	Standing  chart // nodes by standing, one bar per trust domain
	Decisions chart // allowed vs refused, one bar per kind of decision
	Reasons   chart // refusals by reason
}

// chartArgs is what the chart template draws.
type chartArgs struct {
	ID, Title string
	C         chart
}

type chart struct {
	Width  float64
	Height float64
	Bars   []bar
	Legend []legend
}

type bar struct {
	Label string
	Y     float64 // top of the bar
	TextY float64
	Note  string // after the bar: the total, or "not verified"
	NoteX float64
	Segs  []seg
}

type seg struct {
	X, Y, W float64
	Class   string
	Title   string
}

type legend struct {
	Class, Label string
	X            float64
}

// charts lays out the page's charts from the report's numbers.
func (r *Report) charts() charts {
	var c charts
	standing := []struct{ class, label string }{
		{"good", "good standing"}, {"attested", "attested, not good"}, {"enrolled", "enrolled"},
		{"failed", "failed"}, {"stale", "stale"}, {"revoked", "revoked"},
	}
	for i, s := range standing {
		c.Standing.Legend = append(c.Standing.Legend, legend{Class: s.class, Label: s.label, X: float64(i) * 140})
	}
	rows := append([]Domain(nil), r.TrustDomains...)
	rows = append(rows, Domain{TrustDomain: "all", Standing: r.Summary.Standing})
	for _, d := range rows {
		counts := []int{d.GoodStanding, d.Attested - min(d.Attested, d.GoodStanding), d.Enrolled, d.Failed, d.Stale, d.Revoked}
		var segs []segValue
		for i, n := range counts {
			segs = append(segs, segValue{class: standing[i].class, label: standing[i].label, n: n})
		}
		c.Standing.add(d.TrustDomain, fmt.Sprintf("%d node(s), %s good", d.Nodes, percent(d.GoodStandingShare)), d.Nodes, segs)
	}

	c.Decisions.Legend = []legend{{Class: "allowed", Label: "allowed", X: 0}, {Class: "denied", Label: "refused", X: 120}}
	for _, k := range []struct {
		label string
		t     *Tally
	}{{"exec", r.Summary.Decisions.Exec}, {"tool calls (mcp)", r.Summary.Decisions.MCP}, {"http requests", r.Summary.Decisions.HTTP}, {"writ issuance", r.Summary.Decisions.Writ}} {
		if k.t == nil {
			c.Decisions.add(k.label, NotVerified, 0, nil)
			continue
		}
		c.Decisions.add(k.label, k.t.text(), k.t.Allowed+k.t.Denied,
			[]segValue{{class: "allowed", label: "allowed", n: k.t.Allowed}, {class: "denied", label: "refused", n: k.t.Denied}})
	}

	c.Reasons.Legend = []legend{{Class: "denied", Label: "refusals", X: 0}}
	reasons := r.Summary.Decisions.reasons()
	most := 0
	for _, rc := range reasons {
		most = max(most, rc.Count)
	}
	for _, rc := range reasons {
		c.Reasons.add(rc.Kind+" "+rc.Reason, fmt.Sprint(rc.Count), most, []segValue{{class: "denied", label: rc.Reason, n: rc.Count}})
	}
	return c
}

type segValue struct {
	class, label string
	n            int
}

// add lays out one bar: segments in proportion to scale (the bar's own
// total, or the chart's largest for the reasons).
func (c *chart) add(label, note string, scale int, segs []segValue) {
	y := 24 + float64(len(c.Bars))*(barHeight+barGap)
	b := bar{Label: label, Y: y, TextY: y + barHeight*0.7, Note: note, NoteX: labelWidth + 4}
	x := labelWidth
	width := chartWidth - labelWidth - 200
	for _, s := range segs {
		if s.n == 0 || scale == 0 {
			continue
		}
		w := width * float64(s.n) / float64(scale)
		b.Segs = append(b.Segs, seg{X: x, Y: y, W: w, Class: s.class, Title: fmt.Sprintf("%s: %d", s.label, s.n)})
		x += w
	}
	b.NoteX = x + 6
	c.Bars = append(c.Bars, b)
	c.Width, c.Height = chartWidth, y+barHeight+barGap
}
