package policy

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The candidate drops kernel 6.8 from the example policy.
func candidate(t *testing.T) *Policy {
	t.Helper()
	src := strings.Replace(readExample(t), `    - "sha256:`+dKernel68+`"`+"\n", "", 1)
	src = strings.Replace(src, "version: 3", "version: 4", 1)
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if p.Ref() != "fleet-boot@4" || len(p.components["kernel"].list) != 1 {
		t.Fatalf("candidate %s has kernels %v", p.Ref(), p.components["kernel"].list)
	}
	return p
}

func readExample(t *testing.T) string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(raw)
}

// subjects builds the same fleet each time it is called: a, running 6.9,
// passes before and after; b, running 6.8, passes now and would be locked
// out; c fails now (no lockdown) and still fails; d has no current result.
func subjects(current *Policy) []Subject {
	a := goodClaims()
	b := goodClaims()
	boot(b)["components"].([]any)[1] = map[string]any{"kind": "kernel", "digest": dKernel68}
	c := goodClaims()
	boot(c)["kernel_cmdline"] = "quiet"
	d := goodClaims()
	return []Subject{
		{Name: "spiffe://example.org/node/a", Claims: a, Current: current.Evaluate(a)},
		{Name: "spiffe://example.org/node/b", Claims: b, Current: current.Evaluate(b)},
		{Name: "spiffe://example.org/node/c", Claims: c, Current: current.Evaluate(c)},
		{Name: "spiffe://example.org/node/d", Claims: d},
	}
}

func TestDryRun(t *testing.T) {
	current := loadExample(t)
	cand := candidate(t)
	in := subjects(current)
	pristine := subjects(current)

	rows := DryRun(cand, in)

	if !reflect.DeepEqual(in, pristine) {
		t.Error("DryRun changed its subjects")
	}
	type row struct {
		known, before, after, lockout bool
		findings                      int
	}
	want := []row{
		{true, true, true, false, 0},
		{true, true, false, true, 1},
		{true, false, false, false, 1},
		{false, false, true, false, 0},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows", len(rows))
	}
	for i, r := range rows {
		got := row{r.BeforeKnown, r.Before, r.After, r.Lockout(), len(r.Findings)}
		if r.Name != in[i].Name || got != want[i] {
			t.Errorf("row %d %s = %+v, want %+v", i, r.Name, got, want[i])
		}
	}
	if f := rows[1].Findings[0]; f.Rule != "boot_components.kernel" || f.Reason != ReasonBootComponentDenied {
		t.Errorf("lockout finding %v", f)
	}
	if s := Summarize(rows); s != (DryRunSummary{Nodes: 4, Pass: 2, Fail: 2, Lockouts: 1, NewlyPassing: 0, Unknown: 1}) {
		t.Errorf("Summarize = %+v", s)
	}

	var out bytes.Buffer
	if err := WriteReport(&out, rows); err != nil {
		t.Fatal(err)
	}
	report := out.String()
	t.Logf("\n%s", report)
	lines := strings.Split(strings.TrimSuffix(report, "\n"), "\n")
	wantLines := []string{
		"NODE                         CURRENT  CANDIDATE",
		"spiffe://example.org/node/a  pass     pass",
		"spiffe://example.org/node/b  pass     FAIL       LOCKOUT",
		"    boot_components.kernel: boot_component_denied: component 1 (kernel) has digest " + dKernel68 +
			", not among the 1 the policy allows [boot.components[1].digest=\"" + dKernel68 + "\", boot.components[1].kind=\"kernel\"]",
		"spiffe://example.org/node/c  FAIL     FAIL",
		"    conditions.lockdown: condition_false: claims.boot.secure_boot.enabled && claims.boot.kernel_cmdline.contains(\"lockdown=\") is false" +
			" [boot.kernel_cmdline=\"quiet\", boot.secure_boot.enabled=true]",
		"spiffe://example.org/node/d  unknown  pass",
		"4 node(s): 2 pass, 2 fail under the candidate; 1 lockout(s), 0 newly passing, 1 without a current result",
	}
	if !reflect.DeepEqual(lines, wantLines) {
		t.Errorf("report:\n%s\nwant:\n%s", report, strings.Join(wantLines, "\n"))
	}
}

func TestDryRunNewlyPassingAndHostileName(t *testing.T) {
	p := loadExample(t)
	doc := goodClaims()
	rows := DryRun(p, []Subject{{Name: "evil\nspiffe://x  pass  pass", Claims: doc, Current: &Result{Passed: false}}})
	if !rows[0].After || rows[0].Lockout() {
		t.Fatalf("%+v", rows[0])
	}
	var out bytes.Buffer
	if err := WriteReport(&out, rows); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[1], `"evil\nspiffe://x  pass  pass"  FAIL     pass       newly passing`) {
		t.Errorf("report:\n%s", out.String())
	}
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n == 0 {
		return 0, errors.New("disk full")
	}
	w.n--
	return len(p), nil
}

func TestWriteReportError(t *testing.T) {
	rows := DryRun(loadExample(t), []Subject{{Name: "a", Claims: map[string]any{}}})
	for n := range 3 {
		if err := WriteReport(&failWriter{n: n}, rows); err == nil || !strings.Contains(err.Error(), "disk full") {
			t.Errorf("after %d writes: %v", n, err)
		}
	}
}
