package broker

import (
	"testing"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/policy"
)

// TestAbsentKernelCmdline: when the log yields no bound kernel command line,
// boot.kernel_cmdline is absent from the document policies see, so
// "!claims.boot.kernel_cmdline.contains(…)" fails (claims_missing) instead
// of passing over "".
func TestAbsentKernelCmdline(t *testing.T) {
	p, err := policy.Parse([]byte(`
id: p
version: 1
pcrs:
  0: ["sha256:0000000000000000000000000000000000000000000000000000000000000000"]
conditions:
  - name: no-init-override
    expr: '!claims.boot.kernel_cmdline.contains("init=")'
`))
	if err != nil {
		t.Fatal(err)
	}
	zero := "0000000000000000000000000000000000000000000000000000000000000000"
	for _, tc := range []struct {
		name   string
		kernel *attest.KernelClaims
		reason string
	}{
		{"no command line", &attest.KernelClaims{Path: "/boot/vmlinuz", Loads: 1}, policy.ReasonClaimsMissing},
		{"init override", &attest.KernelClaims{Path: "/boot/vmlinuz", Cmdline: "/boot/vmlinuz init=/bin/sh", Loads: 1}, policy.ReasonConditionFalse},
		{"clean", &attest.KernelClaims{Path: "/boot/vmlinuz", Cmdline: "/boot/vmlinuz ro", Loads: 1}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc, err := policy.EvaluationDocument(attest.Claims{PCRs: map[int]string{0: zero}, Boot: &attest.BootClaims{Kernel: tc.kernel}})
			if err != nil {
				t.Fatal(err)
			}
			r := p.Evaluate(doc)
			switch {
			case tc.reason == "" && !r.Passed:
				t.Fatalf("findings %v", r.Findings)
			case tc.reason != "" && (r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != tc.reason):
				t.Fatalf("passed %v findings %v, want %s", r.Passed, r.Findings, tc.reason)
			}
		})
	}
}
