package main

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
)

// result is one benchmark line of `go test -bench` output: the name without
// its -GOMAXPROCS suffix, the package it ran in, and its metrics by unit
// (ns/op, B/op, appends/s, ...).
type result struct {
	Pkg, Name string
	Metrics   map[string]float64
}

var procsSuffix = regexp.MustCompile(`-[0-9]+$`)

// parseBench reads the standard benchmark format
// (https://go.dev/design/14313-benchmark-format): "pkg:" lines name the
// package of the lines that follow; a result line is a name starting with
// "Benchmark", an iteration count, then value-unit pairs. Other lines are
// ignored. A benchmark that ran twice keeps its last figures.
func parseBench(r io.Reader) ([]result, error) {
	var out []result
	index := map[string]int{}
	var pkg string
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 2 && f[0] == "pkg:" {
			pkg = f[1]
			continue
		}
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") || len(f)%2 != 0 {
			continue
		}
		if _, err := strconv.ParseUint(f[1], 10, 64); err != nil {
			continue
		}
		res := result{Pkg: pkg, Name: procsSuffix.ReplaceAllString(f[0], ""), Metrics: map[string]float64{}}
		ok := true
		for i := 2; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				ok = false
				break
			}
			res.Metrics[f[i+1]] = v
		}
		if !ok {
			continue
		}
		key := res.Pkg + "\x00" + res.Name
		if i, seen := index[key]; seen {
			out[i] = res
			continue
		}
		index[key] = len(out)
		out = append(out, res)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("benchtable: read: %w", err)
	}
	return out, nil
}

// find returns the result named name (optionally "pkg-suffix.Name", e.g.
// "artifact.BenchmarkVerify"), or nil. A bare name that ran in several
// packages is ambiguous: nil.
func find(results []result, name string) *result {
	pkg := ""
	if i := strings.LastIndex(name, "."); i >= 0 {
		pkg, name = name[:i], name[i+1:]
	}
	var found *result
	for i := range results {
		r := &results[i]
		if r.Name != name || pkg != "" && r.Pkg != pkg && !strings.HasSuffix(r.Pkg, "/"+pkg) {
			continue
		}
		if found != nil {
			return nil
		}
		found = r
	}
	return found
}
