package main

import (
	"bytes"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func loadFixture(t *testing.T) []result {
	t.Helper()
	f, err := os.Open("testdata/run.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	results, err := parseBench(f)
	if err != nil {
		t.Fatal(err)
	}
	return results
}

func TestParseBench(t *testing.T) {
	results := loadFixture(t)
	if len(results) != 11 {
		t.Fatalf("parsed %d results, want 11 (garbled and failed lines skipped): %+v", len(results), results)
	}
	r := find(results, "BenchmarkAppend16")
	if r == nil || r.Pkg != "github.com/writ-dev/writ/audit" || r.Metrics["appends/s"] != 22953 || r.Metrics["entries/fsync"] != 7.891 {
		t.Fatalf("BenchmarkAppend16 = %+v", r)
	}
	if find(results, "BenchmarkGarbled") != nil {
		t.Fatal("a line with a non-numeric value was parsed")
	}
	// BenchmarkVerify ran in artifact and audit: the bare name is
	// ambiguous, a package prefix picks one.
	if find(results, "BenchmarkVerify") != nil {
		t.Fatal("an ambiguous bare name matched")
	}
	if r := find(results, "audit.BenchmarkVerify"); r == nil || r.Metrics["ns/op"] != 9999 {
		t.Fatalf("audit.BenchmarkVerify = %+v", r)
	}
	if r := find(results, "BenchmarkExec/plain"); r == nil || r.Metrics["ns/op"] != 1e6 {
		t.Fatalf("BenchmarkExec/plain = %+v", r)
	}
}

func TestEvaluate(t *testing.T) {
	goals, err := loadGoals("testdata/goals.yaml")
	if err != nil {
		t.Fatal(err)
	}
	rows := evaluate(goals, loadFixture(t))
	want := []struct {
		status   string
		figure   float64
		baseline string
	}{
		{statusMeasuredBy + "writ bench load", math.NaN(), ""},
		{statusMet, 1.1, "1.1× ECDSA P-256 verify"},        // 77 µs / 70 µs
		{statusNotMet, 22953, "0.622× ECDSA P-256 verify"}, // 1/22953 s per append
		{statusMet, 1.5, "21,429× ECDSA P-256 verify"},     // 150 ms × 10
		{statusNotMet, 60, "60.0× plain exec"},             // 60 ms vs 50 ms
		{statusNotRun, math.NaN(), ""},
		{statusMet, 1.4, "1.4× plain exec"}, // the ratio is the figure; 1.4 ms vs 1 ms is the baseline column, not 1.4 vs 1 ms
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d", len(rows), len(want))
	}
	for i, w := range want {
		r := rows[i]
		if r.status != w.status || r.baseline != w.baseline ||
			!(math.IsNaN(w.figure) && math.IsNaN(r.figure) || math.Abs(r.figure-w.figure) < 1e-9*math.Max(1, w.figure)) {
			t.Errorf("row %d (%s): status %q figure %v baseline %q; want %q %v %q", i, r.Goal, r.status, r.figure, r.baseline, w.status, w.figure, w.baseline)
		}
	}
}

func TestLoadGoalsRefuses(t *testing.T) {
	for name, body := range map[string]string{
		"unknown field":         "goals:\n  - goal: g\n    benchmark: B\n    target: 1\n    direction: max\n    baseline: verify\n    unit: ms\n    tagret: 2\n",
		"no direction":          "goals:\n  - goal: g\n    benchmark: B\n    target: 1\n    baseline: verify\n    unit: ms\n",
		"bad baseline":          "goals:\n  - goal: g\n    benchmark: B\n    target: 1\n    direction: max\n    baseline: rsa\n    unit: ms\n",
		"unit not of metric":    "goals:\n  - goal: g\n    benchmark: B\n    metric: appends/s\n    target: 1\n    direction: min\n    baseline: verify\n    unit: ms\n",
		"both benchmark and by": "goals:\n  - goal: g\n    benchmark: B\n    measured_by: load\n",
		"neither":               "goals:\n  - goal: g\n",
		"zero target":           "goals:\n  - goal: g\n    benchmark: B\n    direction: max\n    baseline: verify\n    unit: ms\n",
		"no goals":              "goals: []\n",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "goals.yaml")
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, err := loadGoals(path); err == nil {
				t.Fatal("loadGoals accepted it")
			}
		})
	}
}

// TestRun writes the document and refuses a run without the verify
// baseline.
func TestRun(t *testing.T) {
	out := filepath.Join(t.TempDir(), "results.md")
	var stdout bytes.Buffer
	if err := run("testdata/goals.yaml", []string{"testdata/run.txt"}, out, &stdout); err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## Machine", "- CPU: ", "- cores: ", "- kernel: ", "- Go: ", "- date: ",
		"| appends [3] | ≥ 100,000 appends/s | 22,953 appends/s |", "NOT met", "[3] fsync-bound", "## Every benchmark of the run",
		"| test | BenchmarkExec/plain | 1,000,000 | - | 0.5 |"} {
		if !strings.Contains(string(doc), want) {
			t.Errorf("results.md lacks %q:\n%s", want, doc)
		}
	}
	if !strings.Contains(stdout.String(), "| check | ≤ 1.2 x verify | 1.1 x verify | 1.1× ECDSA P-256 verify | artifact.BenchmarkVerifyCold | met |") {
		t.Errorf("stdout lacks the check row:\n%s", stdout.String())
	}
	noBase := filepath.Join(t.TempDir(), "bench.out")
	if err := os.WriteFile(noBase, []byte("BenchmarkX-2 10 5 ns/op\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := run("testdata/goals.yaml", []string{noBase}, "", &stdout); err == nil {
		t.Fatal("a run without BenchmarkECDSAP256Verify was accepted")
	}
}
