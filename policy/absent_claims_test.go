package policy

import (
	"testing"
)

// TestAbsentClaimFailsCondition: a claim the evidence did not establish is
// absent from the document, and a condition that reads it fails with
// claims_missing, whether it is negated or not; an empty string is a value
// and is judged as one.
func TestAbsentClaimFailsCondition(t *testing.T) {
	p, err := Parse([]byte(`
id: absent
version: 1
pcrs:
  0: ["sha256:` + dPCR0a + `"]
conditions:
  - name: no-init
    expr: '!claims.boot.kernel.cmdline.contains("init=")'
`))
	if err != nil {
		t.Fatal(err)
	}
	doc := func(kernel map[string]any) map[string]any {
		boot := map[string]any{}
		if kernel != nil {
			boot["kernel"] = kernel
		}
		return map[string]any{"pcrs": map[string]any{"0": dPCR0a}, "boot": boot}
	}
	cases := []struct {
		name   string
		claims map[string]any
		pass   bool
		reason string
	}{
		{"clean command line", doc(map[string]any{"cmdline": "/vmlinuz ro quiet"}), true, ""},
		{"init override", doc(map[string]any{"cmdline": "/vmlinuz init=/bin/sh"}), false, ReasonConditionFalse},
		{"command line absent", doc(map[string]any{"path": "/vmlinuz"}), false, ReasonClaimsMissing},
		{"kernel absent", doc(nil), false, ReasonClaimsMissing},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := p.Evaluate(tc.claims)
			if r.Passed != tc.pass {
				t.Fatalf("passed = %v, findings %v", r.Passed, r.Findings)
			}
			if !tc.pass && (len(r.Findings) != 1 || r.Findings[0].Reason != tc.reason || r.Findings[0].Rule != "conditions.no-init") {
				t.Fatalf("findings %v, want one %s", r.Findings, tc.reason)
			}
		})
	}
}
