package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"

	"gopkg.in/yaml.v3"
)

// goal is one line of bench/goals.yaml: a performance goal and the
// benchmark figure that measures it.
type goal struct {
	// Goal says what is wanted, in words.
	Goal string `yaml:"goal"`
	// Benchmark names the benchmark ("BenchmarkX", "BenchmarkX/sub", or
	// "pkg.BenchmarkX" when the bare name is ambiguous). Empty when the
	// figure comes from elsewhere: then MeasuredBy says where.
	Benchmark string `yaml:"benchmark"`
	// MeasuredBy names the tool that measures a goal no in-process
	// benchmark can (e.g. "writ bench load"); the table shows no figure.
	MeasuredBy string `yaml:"measured_by"`
	// Metric is the benchmark's unit to read (default ns/op).
	Metric string `yaml:"metric"`
	// Scale multiplies the figure, e.g. 10 to take 100k entries to 1M.
	Scale float64 `yaml:"scale"`
	// Unit is the unit of Target and of the figure shown: "ms" or "s" for an
	// ns/op metric, "/s" for its inverse rate, "x <baseline>" for a ratio to
	// a baseline's ns/op, or the metric's own unit (e.g. "appends/s").
	Unit string `yaml:"unit"`
	// Target and Direction: the figure must be at most ("max") or at least
	// ("min") Target.
	Target    float64 `yaml:"target"`
	Direction string  `yaml:"direction"`
	// Baseline is the baseline the row is also shown against: "verify",
	// "sign" (ECDSA P-256) or "exec" (plain /bin/true).
	Baseline string `yaml:"baseline"`
	// Note is shown under the table, e.g. what limits a figure.
	Note string `yaml:"note"`
}

// baselines name the benchmarks every row is compared with.
var baselines = map[string]struct{ bench, label string }{
	"verify": {"BenchmarkECDSAP256Verify", "ECDSA P-256 verify"},
	"sign":   {"BenchmarkECDSAP256Sign", "ECDSA P-256 sign"},
	"exec":   {"BenchmarkExec/plain", "plain exec"},
}

// loadGoals reads and checks a goals file: an unknown field, unit,
// direction or baseline is an error, not a row that silently reads 0.
func loadGoals(path string) ([]goal, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("benchtable: %w", err)
	}
	var doc struct {
		Goals []goal `yaml:"goals"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil {
		return nil, fmt.Errorf("benchtable: %s: %w", path, err)
	}
	if len(doc.Goals) == 0 {
		return nil, fmt.Errorf("benchtable: %s: no goals", path)
	}
	for i := range doc.Goals {
		g := &doc.Goals[i]
		if err := g.check(); err != nil {
			return nil, fmt.Errorf("benchtable: %s: goal %d (%q): %w", path, i+1, g.Goal, err)
		}
	}
	return doc.Goals, nil
}

func (g *goal) check() error {
	if g.Goal == "" {
		return errors.New("no goal text")
	}
	if (g.Benchmark == "") == (g.MeasuredBy == "") {
		return errors.New("exactly one of benchmark and measured_by")
	}
	if g.MeasuredBy != "" {
		return nil
	}
	if g.Metric == "" {
		g.Metric = "ns/op"
	}
	if g.Scale == 0 {
		g.Scale = 1
	}
	if g.Direction != "max" && g.Direction != "min" {
		return fmt.Errorf("direction %q is not max or min", g.Direction)
	}
	if g.Target <= 0 || g.Scale < 0 {
		return errors.New("target and scale must be positive")
	}
	if _, ok := baselines[g.Baseline]; !ok {
		return fmt.Errorf("baseline %q is not verify, sign or exec", g.Baseline)
	}
	switch g.Unit {
	case "ms", "s", "/s", "x verify", "x sign", "x exec":
		if g.Metric != "ns/op" {
			return fmt.Errorf("unit %q needs metric ns/op", g.Unit)
		}
	default:
		if g.Unit != g.Metric {
			return fmt.Errorf("unit %q is neither a conversion of ns/op nor the metric %q", g.Unit, g.Metric)
		}
	}
	return nil
}
