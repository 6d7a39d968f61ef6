package policy

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
)

func digestOf(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// BenchmarkEvaluate: 10 PCRs, 4 boot components, 50 runtime events (of 20
// allowed executables) and 3 CEL conditions, all passing.
func BenchmarkEvaluate(b *testing.B) {
	var src strings.Builder
	src.WriteString("id: bench\nversion: 1\nrequire_event_log: true\nsecure_boot: required\npcrs:\n")
	pcrs := map[string]any{}
	for _, pcr := range []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9} {
		fmt.Fprintf(&src, "  %d: [\"sha256:%s\", \"sha256:%s\"]\n", pcr, digestOf(fmt.Sprint("old", pcr)), digestOf(fmt.Sprint("pcr", pcr)))
		pcrs[fmt.Sprint(pcr)] = digestOf(fmt.Sprint("pcr", pcr))
	}
	src.WriteString("boot_components:\n")
	var components []any
	for _, kind := range []string{"firmware", "bootloader", "kernel", "initrd"} {
		fmt.Fprintf(&src, "  %s: [\"%s\", \"%s\"]\n", kind, digestOf(kind+"-old"), digestOf(kind))
		components = append(components, map[string]any{"kind": kind, "digest": digestOf(kind)})
	}
	src.WriteString("runtime_events:\n  exec:\n")
	for i := range 20 {
		fmt.Fprintf(&src, "    - \"sha256:%s\"\n", digestOf(fmt.Sprint("exec", i)))
	}
	var events []any
	for i := range 50 {
		events = append(events, map[string]any{"kind": "exec", "digest": digestOf(fmt.Sprint("exec", i%20)), "argv_digest": digestOf(fmt.Sprint("argv", i))})
	}
	src.WriteString(`conditions:
  - name: lockdown
    expr: 'claims.boot.secure_boot.enabled && claims.boot.kernel_cmdline.contains("lockdown=")'
  - name: no-init-override
    expr: '!claims.boot.kernel_cmdline.contains("init=")'
  - name: exec-argv-measured
    expr: 'claims.runtime.events.all(e, e.kind != "exec" || e.argv_digest != "")'
`)
	p, err := Parse([]byte(src.String()))
	if err != nil {
		b.Fatal(err)
	}
	doc := map[string]any{
		"pcrs":      pcrs,
		"event_log": map[string]any{"events": 100.0},
		"boot": map[string]any{
			"secure_boot":    map[string]any{"enabled": true},
			"components":     components,
			"kernel_cmdline": "BOOT_IMAGE=/vmlinuz ro quiet lockdown=integrity",
		},
		"runtime": map[string]any{"events": events},
	}
	if r := p.Evaluate(doc); !r.Passed {
		b.Fatalf("benchmark claims fail: %v", r.Findings)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if r := p.Evaluate(doc); !r.Passed {
			b.Fatal("failed")
		}
	}
}
