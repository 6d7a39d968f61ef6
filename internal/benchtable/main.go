// Command benchtable turns `go test -bench` output into the table of writ's
// performance goals (bench/goals.yaml): each goal beside its figure from the
// same run and the run's baselines (ECDSA P-256 sign and verify, plain
// exec), met or not. `make bench` runs it; it prints the goals table and
// writes bench/results.md with the machine described.
//
// Usage: go run ./internal/benchtable -goals bench/goals.yaml -out bench/results.md bench.out [load.out]
//
// Each file is in the standard benchmark format; a later one adds its
// results (bench/load.out: `writ bench load --bench-out`, make bench-load).
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

func main() {
	goalsPath := flag.String("goals", "bench/goals.yaml", "the goals file")
	out := flag.String("out", "", "write the results document here (Markdown)")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: benchtable [-goals file] [-out results.md] bench.out [more.out ...]")
		os.Exit(2)
	}
	if err := run(*goalsPath, flag.Args(), *out, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(goalsPath string, benchPaths []string, outPath string, stdout io.Writer) error {
	goals, err := loadGoals(goalsPath)
	if err != nil {
		return err
	}
	var results []result
	for _, p := range benchPaths {
		more, err := parseBenchFile(p)
		if err != nil {
			return err
		}
		results = append(results, more...)
	}
	if baselineNs(results, "verify") == 0 {
		return fmt.Errorf("benchtable: no baseline (BenchmarkECDSAP256Verify) in %s", strings.Join(benchPaths, ", "))
	}
	rows := evaluate(goals, results)
	fmt.Fprintln(stdout)
	writeGoals(stdout, rows, results)
	if outPath == "" {
		return nil
	}
	var doc bytes.Buffer
	writeDocument(&doc, describeMachine(time.Now()), rows, results)
	if err := os.WriteFile(outPath, doc.Bytes(), 0o644); err != nil { //nolint:gosec // a published document
		return fmt.Errorf("benchtable: %w", err)
	}
	fmt.Fprintf(stdout, "\nwrote %s\n", outPath)
	return nil
}

func parseBenchFile(path string) ([]result, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("benchtable: %w", err)
	}
	defer f.Close()
	return parseBench(f)
}

// writeDocument writes bench/results.md.
func writeDocument(w io.Writer, m machine, rows []row, results []result) {
	fmt.Fprintln(w, "# writ benchmark results")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Written by `make bench` (internal/benchtable, goals in bench/goals.yaml); see docs/adr/0044-benchmark-table.md.")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Machine")
	fmt.Fprintln(w)
	fmt.Fprintf(w, "- CPU: %s\n- cores: %d\n- kernel: %s\n- Go: %s\n- date: %s\n\n", m.CPU, m.Cores, m.Kernel, m.Go, m.Date)
	fmt.Fprintln(w, "## Goals")
	fmt.Fprintln(w)
	writeGoals(w, rows, results)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "## Every benchmark of the run")
	fmt.Fprintln(w)
	writeAll(w, results)
}

func sortedUnits(m map[string]float64) []string {
	units := make([]string, 0, len(m))
	for u := range m {
		units = append(units, u)
	}
	slices.Sort(units)
	return units
}
