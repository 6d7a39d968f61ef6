package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// goodClaims is a claims document, written by hand in the shape the package
// documents, that passes testdata/example.yaml.
func goodClaims() map[string]any {
	return map[string]any{
		"pcrs": map[string]any{"0": dPCR0a, "4": dPCR4, "7": dPCR7},
		"event_log": map[string]any{
			"events":        42.0,
			"events_by_pcr": map[string]any{"0": 10.0, "4": 3.0, "7": 5.0},
		},
		"boot": map[string]any{
			"secure_boot": map[string]any{"enabled": true},
			"components": []any{
				map[string]any{"kind": "bootloader", "digest": dBootloader},
				map[string]any{"kind": "kernel", "digest": "sha256:" + dKernel69},
				map[string]any{"kind": "initrd", "digest": dInitrd},
			},
			"kernel_cmdline": "ro quiet lockdown=integrity",
		},
		"runtime": map[string]any{
			"events": []any{
				map[string]any{"kind": "exec", "digest": dExecSh, "argv_digest": dOther, "path": "/bin/sh"},
				map[string]any{"kind": "exec", "digest": dExecPython, "argv_digest": dOther, "path": "/usr/bin/python3"},
			},
		},
	}
}

func boot(doc map[string]any) map[string]any { return doc["boot"].(map[string]any) }
func events(doc map[string]any) []any {
	return doc["runtime"].(map[string]any)["events"].([]any)
}

type want struct{ rule, reason string }

func TestEvaluate(t *testing.T) {
	p := loadExample(t)
	cases := []struct {
		name   string
		edit   func(doc map[string]any) map[string]any
		want   []want
		claims map[string]any // expected Claims of the first finding, when set
	}{
		{name: "pass", edit: func(d map[string]any) map[string]any { return d }},
		{name: "pcr digest case and prefix do not matter", edit: func(d map[string]any) map[string]any {
			d["pcrs"].(map[string]any)["0"] = "sha256:" + strings.ToUpper(dPCR0b)
			return d
		}},
		{name: "pcr value denied", edit: func(d map[string]any) map[string]any {
			d["pcrs"].(map[string]any)["7"] = dOther
			return d
		}, want: []want{{"pcrs.7", ReasonPolicyDenied}}, claims: map[string]any{"pcrs.7": dOther}},
		{name: "pcr not quoted", edit: func(d map[string]any) map[string]any {
			delete(d["pcrs"].(map[string]any), "4")
			return d
		}, want: []want{{"pcrs.4", ReasonClaimsMissing}}},
		{name: "pcr value not a string", edit: func(d map[string]any) map[string]any {
			d["pcrs"].(map[string]any)["4"] = 4.0
			return d
		}, want: []want{{"pcrs.4", ReasonClaimsMissing}}},
		{name: "no pcrs section", edit: func(d map[string]any) map[string]any {
			delete(d, "pcrs")
			return d
		}, want: []want{{"pcrs.0", ReasonClaimsMissing}, {"pcrs.4", ReasonClaimsMissing}, {"pcrs.7", ReasonClaimsMissing}}},
		{name: "no event log", edit: func(d map[string]any) map[string]any {
			delete(d, "event_log")
			return d
		}, want: []want{{"require_event_log", ReasonClaimsMissing}}},
		{name: "secure boot disabled", edit: func(d map[string]any) map[string]any {
			boot(d)["secure_boot"] = map[string]any{"enabled": false}
			return d
		}, want: []want{{"secure_boot", ReasonSecureBootRequired}, {"conditions.lockdown", ReasonConditionFalse}},
			claims: map[string]any{"boot.secure_boot.enabled": false}},
		{name: "secure boot state not a boolean", edit: func(d map[string]any) map[string]any {
			boot(d)["secure_boot"] = map[string]any{"enabled": "yes"}
			return d
		}, want: []want{{"secure_boot", ReasonClaimsMissing}, {"conditions.lockdown", ReasonConditionError}},
			claims: map[string]any{"boot.secure_boot.enabled": "yes"}},
		{name: "no secure boot state", edit: func(d map[string]any) map[string]any {
			delete(boot(d), "secure_boot")
			return d
		}, want: []want{{"secure_boot", ReasonClaimsMissing}, {"conditions.lockdown", ReasonClaimsMissing}}},
		{name: "no boot section fails closed", edit: func(d map[string]any) map[string]any {
			delete(d, "boot")
			return d
		}, want: []want{{"secure_boot", ReasonClaimsMissing}, {"boot_components", ReasonClaimsMissing},
			{"conditions.lockdown", ReasonClaimsMissing}, {"conditions.no-init-override", ReasonClaimsMissing}}},
		{name: "kernel not allowed", edit: func(d map[string]any) map[string]any {
			boot(d)["components"].([]any)[1] = map[string]any{"kind": "kernel", "digest": dOther}
			return d
		}, want: []want{{"boot_components.kernel", ReasonBootComponentDenied}},
			claims: map[string]any{"boot.components[1].kind": "kernel", "boot.components[1].digest": dOther}},
		{name: "component of an unlisted kind", edit: func(d map[string]any) map[string]any {
			boot(d)["components"] = append(boot(d)["components"].([]any), map[string]any{"kind": "option-rom", "digest": dOther})
			return d
		}, want: []want{{"boot_components.option-rom", ReasonBootComponentDenied}}},
		{name: "component kind that is no name", edit: func(d map[string]any) map[string]any {
			boot(d)["components"] = append(boot(d)["components"].([]any), map[string]any{"kind": "x\ny", "digest": dOther})
			return d
		}, want: []want{{"boot_components", ReasonBootComponentDenied}}},
		{name: "component without digest", edit: func(d map[string]any) map[string]any {
			boot(d)["components"] = append(boot(d)["components"].([]any), map[string]any{"kind": "kernel"})
			return d
		}, want: []want{{"boot_components", ReasonBootComponentDenied}}},
		{name: "listed kind never measured", edit: func(d map[string]any) map[string]any {
			boot(d)["components"] = boot(d)["components"].([]any)[:2]
			return d
		}, want: []want{{"boot_components.initrd", ReasonClaimsMissing}}},
		{name: "components as []map[string]any", edit: func(d map[string]any) map[string]any {
			boot(d)["components"] = []map[string]any{
				{"kind": "bootloader", "digest": dBootloader},
				{"kind": "kernel", "digest": dKernel68},
				{"kind": "initrd", "digest": dInitrd},
			}
			return d
		}},
		{name: "no components", edit: func(d map[string]any) map[string]any {
			delete(boot(d), "components")
			return d
		}, want: []want{{"boot_components", ReasonClaimsMissing}}},
		{name: "unlisted executable", edit: func(d map[string]any) map[string]any {
			events(d)[1] = map[string]any{"kind": "exec", "digest": dOther, "argv_digest": dOther, "path": "/tmp/x"}
			return d
		}, want: []want{{"runtime_events.exec", ReasonRuntimeEventDenied}},
			claims: map[string]any{"runtime.events[1].kind": "exec", "runtime.events[1].digest": dOther,
				"runtime.events[1].argv_digest": dOther, "runtime.events[1].path": "/tmp/x"}},
		{name: "runtime event of an unlisted kind", edit: func(d map[string]any) map[string]any {
			d["runtime"].(map[string]any)["events"] = append(events(d), map[string]any{"kind": "config", "digest": dOther})
			return d
		}, want: []want{{"runtime_events.config", ReasonRuntimeEventDenied}}},
		{name: "runtime event not an object", edit: func(d map[string]any) map[string]any {
			d["runtime"].(map[string]any)["events"] = append(events(d), "exec")
			return d
		}, want: []want{{"runtime_events", ReasonRuntimeEventDenied}, {"conditions.exec-argv-measured", ReasonConditionError}}},
		{name: "empty runtime log", edit: func(d map[string]any) map[string]any {
			d["runtime"].(map[string]any)["events"] = []any{}
			return d
		}},
		{name: "no runtime section", edit: func(d map[string]any) map[string]any {
			delete(d, "runtime")
			return d
		}, want: []want{{"runtime_events", ReasonClaimsMissing}, {"conditions.exec-argv-measured", ReasonClaimsMissing}}},
		{name: "runtime log null", edit: func(d map[string]any) map[string]any {
			d["runtime"].(map[string]any)["events"] = nil
			return d
		}, want: []want{{"runtime_events", ReasonClaimsMissing}, {"conditions.exec-argv-measured", ReasonConditionError}}},
		{name: "exec without argv digest", edit: func(d map[string]any) map[string]any {
			delete(events(d)[0].(map[string]any), "argv_digest")
			return d
		}, want: []want{{"conditions.exec-argv-measured", ReasonConditionFalse}}},
		{name: "no lockdown", edit: func(d map[string]any) map[string]any {
			boot(d)["kernel_cmdline"] = "ro quiet"
			return d
		}, want: []want{{"conditions.lockdown", ReasonConditionFalse}},
			claims: map[string]any{"boot.secure_boot.enabled": true, "boot.kernel_cmdline": "ro quiet"}},
		{name: "init override", edit: func(d map[string]any) map[string]any {
			boot(d)["kernel_cmdline"] = "ro lockdown=integrity init=/bin/sh"
			return d
		}, want: []want{{"conditions.no-init-override", ReasonConditionFalse}}},
		{name: "no cmdline", edit: func(d map[string]any) map[string]any {
			delete(boot(d), "kernel_cmdline")
			return d
		}, want: []want{{"conditions.lockdown", ReasonClaimsMissing}, {"conditions.no-init-override", ReasonClaimsMissing}},
			claims: map[string]any{"boot.secure_boot.enabled": true}},
		{name: "everything wrong, every finding reported", edit: func(d map[string]any) map[string]any {
			d["pcrs"] = map[string]any{"0": dOther, "4": dOther, "7": dOther}
			delete(d, "event_log")
			boot(d)["secure_boot"] = map[string]any{"enabled": false}
			boot(d)["components"].([]any)[1] = map[string]any{"kind": "kernel", "digest": dOther}
			boot(d)["kernel_cmdline"] = "init=/bin/sh"
			events(d)[0] = map[string]any{"kind": "exec", "digest": dOther}
			return d
		}, want: []want{
			{"pcrs.0", ReasonPolicyDenied}, {"pcrs.4", ReasonPolicyDenied}, {"pcrs.7", ReasonPolicyDenied},
			{"require_event_log", ReasonClaimsMissing},
			{"secure_boot", ReasonSecureBootRequired},
			{"boot_components.kernel", ReasonBootComponentDenied},
			{"runtime_events.exec", ReasonRuntimeEventDenied},
			{"conditions.lockdown", ReasonConditionFalse},
			{"conditions.no-init-override", ReasonConditionFalse},
			{"conditions.exec-argv-measured", ReasonConditionFalse},
		}},
		{name: "empty document", edit: func(map[string]any) map[string]any { return map[string]any{} }, want: []want{
			{"pcrs.0", ReasonClaimsMissing}, {"pcrs.4", ReasonClaimsMissing}, {"pcrs.7", ReasonClaimsMissing},
			{"require_event_log", ReasonClaimsMissing}, {"secure_boot", ReasonClaimsMissing},
			{"boot_components", ReasonClaimsMissing}, {"runtime_events", ReasonClaimsMissing},
			{"conditions.lockdown", ReasonClaimsMissing}, {"conditions.no-init-override", ReasonClaimsMissing},
			{"conditions.exec-argv-measured", ReasonClaimsMissing},
		}},
		{name: "nil document", edit: func(map[string]any) map[string]any { return nil }, want: []want{
			{"pcrs.0", ReasonClaimsMissing}, {"pcrs.4", ReasonClaimsMissing}, {"pcrs.7", ReasonClaimsMissing},
			{"require_event_log", ReasonClaimsMissing}, {"secure_boot", ReasonClaimsMissing},
			{"boot_components", ReasonClaimsMissing}, {"runtime_events", ReasonClaimsMissing},
			{"conditions.lockdown", ReasonClaimsMissing}, {"conditions.no-init-override", ReasonClaimsMissing},
			{"conditions.exec-argv-measured", ReasonClaimsMissing},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := p.Evaluate(tc.edit(goodClaims()))
			if r.Policy != "fleet-boot@3" {
				t.Errorf("Policy = %q", r.Policy)
			}
			var got []want
			for _, f := range r.Findings {
				got = append(got, want{f.Rule, f.Reason})
				if f.Detail == "" {
					t.Errorf("finding %s has no detail", f.Rule)
				}
				if wantPCR := strings.HasPrefix(f.Rule, "pcrs."); wantPCR != (f.PCR != NoPCR) {
					t.Errorf("finding %s has PCR %d", f.Rule, f.PCR)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("findings %v\nwant     %v\n%s", got, tc.want, findingLines(r.Findings))
			}
			if r.Passed != (len(tc.want) == 0) {
				t.Errorf("Passed = %v with findings %v", r.Passed, got)
			}
			if tc.claims != nil && !reflect.DeepEqual(r.Findings[0].Claims, tc.claims) {
				t.Errorf("claims of the first finding = %v, want %v", r.Findings[0].Claims, tc.claims)
			}
		})
	}
}

func findingLines(fs []Finding) string {
	var b strings.Builder
	for _, f := range fs {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}

func TestEvaluateDoesNotChangeClaims(t *testing.T) {
	p := loadExample(t)
	doc := goodClaims()
	boot(doc)["kernel_cmdline"] = "init=/bin/sh"
	events(doc)[0].(map[string]any)["digest"] = dOther
	before := fmt.Sprint(doc)
	r := p.Evaluate(doc)
	if r.Passed || len(r.Findings) != 3 {
		t.Fatalf("findings: %v", r.Findings)
	}
	// Findings hold their own values: changing them changes nothing in doc.
	for _, f := range r.Findings {
		for k := range f.Claims {
			f.Claims[k] = "changed"
		}
	}
	if after := fmt.Sprint(doc); after != before {
		t.Errorf("claims changed:\n%s\n%s", before, after)
	}
}

// The condition the issue gives as its example, over claims in the shape it
// uses, and the same condition adapted to the documented shape.
func TestIssueExampleCondition(t *testing.T) {
	for _, tc := range []struct {
		expr       string
		pass, fail map[string]any
	}{{
		expr: `claims.secureboot.enabled && claims.kernel.cmdline.contains("lockdown=")`,
		pass: map[string]any{"secureboot": map[string]any{"enabled": true}, "kernel": map[string]any{"cmdline": "lockdown=confidentiality"}},
		fail: map[string]any{"secureboot": map[string]any{"enabled": true}, "kernel": map[string]any{"cmdline": "quiet"}},
	}, {
		expr: `claims.boot.secure_boot.enabled && claims.boot.kernel_cmdline.contains("lockdown=")`,
		pass: map[string]any{"boot": map[string]any{"secure_boot": map[string]any{"enabled": true}, "kernel_cmdline": "ro lockdown=integrity"}},
		fail: map[string]any{"boot": map[string]any{"secure_boot": map[string]any{"enabled": false}, "kernel_cmdline": "ro lockdown=integrity"}},
	}} {
		src := fmt.Sprintf("id: issue\nversion: 1\npcrs:\n  7: [\"%s\"]\nconditions:\n  - name: lockdown\n    expr: '%s'\n", dPCR7, tc.expr)
		p, err := Parse([]byte(src))
		if err != nil {
			t.Fatal(err)
		}
		tc.pass["pcrs"] = map[string]any{"7": dPCR7}
		tc.fail["pcrs"] = map[string]any{"7": dPCR7}
		if r := p.Evaluate(tc.pass); !r.Passed {
			t.Errorf("%s: %v", tc.expr, r.Findings)
		}
		r := p.Evaluate(tc.fail)
		if r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != ReasonConditionFalse || r.Findings[0].Rule != "conditions.lockdown" {
			t.Errorf("%s: passed %v, findings %v", tc.expr, r.Passed, r.Findings)
		}
		if len(r.Findings[0].Claims) != 2 {
			t.Errorf("%s: the finding shows claims %v, want the two the condition reads", tc.expr, r.Findings[0].Claims)
		}
	}
}

func TestConditionNumbers(t *testing.T) {
	// JSON numbers are doubles: comparing them with int literals must work.
	src := fmt.Sprintf("id: n\nversion: 1\npcrs:\n  7: [\"%s\"]\nconditions:\n"+
		"  - name: pcr4-events\n    expr: 'has(claims.event_log) && claims.event_log.events_by_pcr[\"4\"] >= 2'\n", dPCR7)
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	doc := goodClaims()
	doc["pcrs"] = map[string]any{"7": dPCR7}
	if r := p.Evaluate(doc); !r.Passed {
		t.Errorf("%v", r.Findings)
	}
	doc["event_log"].(map[string]any)["events_by_pcr"] = map[string]any{"4": 1.0}
	if r := p.Evaluate(doc); r.Passed || r.Findings[0].Reason != ReasonConditionFalse {
		t.Errorf("passed %v: %v", r.Passed, r.Findings)
	}
	delete(doc, "event_log")
	if r := p.Evaluate(doc); r.Passed || r.Findings[0].Reason != ReasonConditionFalse {
		t.Errorf("passed %v: %v", r.Passed, r.Findings)
	}
}

// A condition whose cost depends on the claims compiles, and a node that
// sends enough claims to make it expensive hits the cost limit: a
// condition_error in bounded time, not a hung broker.
func TestConditionCostBounded(t *testing.T) {
	src := fmt.Sprintf("id: cost\nversion: 1\npcrs:\n  7: [\"%s\"]\nconditions:\n  - name: quadratic\n"+
		"    expr: 'claims.runtime.events.all(a, claims.runtime.events.all(b, !a.argv_digest.contains(b.argv_digest + \"x\")))'\n", dPCR7)
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]any{"pcrs": map[string]any{"7": dPCR7}, "runtime": map[string]any{"events": manyEvents(200)}}
	// With no deadline, the cost limit stops it.
	r := p.EvaluateContext(context.Background(), doc)
	if r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != ReasonConditionError || !strings.Contains(r.Findings[0].Detail, "cost limit") {
		t.Fatalf("passed %v: %v", r.Passed, r.Findings)
	}
	// Evaluate also bounds it in time (under the race detector the deadline
	// may come before the cost limit).
	start := time.Now()
	r = p.Evaluate(doc)
	if elapsed := time.Since(start); elapsed > EvalTimeout+time.Second {
		t.Errorf("took %v", elapsed)
	}
	if r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != ReasonConditionError {
		t.Fatalf("passed %v: %v", r.Passed, r.Findings)
	}
	// The same condition over few events passes.
	doc["runtime"] = map[string]any{"events": manyEvents(5)}
	if r := p.Evaluate(doc); !r.Passed {
		t.Errorf("%v", r.Findings)
	}
}

// A context that has ended interrupts a long condition: condition_error.
func TestConditionInterrupted(t *testing.T) {
	src := fmt.Sprintf("id: ctx\nversion: 1\npcrs:\n  7: [\"%s\"]\nconditions:\n  - name: all-exec\n"+
		"    expr: 'claims.runtime.events.all(e, e.kind == \"exec\")'\n", dPCR7)
	p, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	doc := map[string]any{"pcrs": map[string]any{"7": dPCR7}, "runtime": map[string]any{"events": manyEvents(1000)}}
	if r := p.Evaluate(doc); !r.Passed {
		t.Fatalf("%v", r.Findings)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := p.EvaluateContext(ctx, doc)
	if r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != ReasonConditionError {
		t.Errorf("passed %v: %v", r.Passed, r.Findings)
	}
}

func manyEvents(n int) []any {
	out := make([]any, n)
	for i := range out {
		out[i] = map[string]any{"kind": "exec", "digest": dExecSh, "argv_digest": fmt.Sprintf("%064x", i)}
	}
	return out
}

func TestEvaluateNoPolicy(t *testing.T) {
	for _, p := range []*Policy{nil, {ID: "hand-made", Version: 1}} {
		r := p.Evaluate(goodClaims())
		if r.Passed || len(r.Findings) != 1 || r.Findings[0].Reason != ReasonPolicyDenied {
			t.Errorf("%v: passed %v, %v", p, r.Passed, r.Findings)
		}
	}
}

func TestEvaluateConcurrent(t *testing.T) {
	p := loadExample(t)
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			doc := goodClaims()
			if i%2 == 1 {
				boot(doc)["kernel_cmdline"] = "quiet"
			}
			for range 50 {
				if r := p.Evaluate(doc); r.Passed != (i%2 == 0) {
					errs <- fmt.Sprintf("goroutine %d: passed %v: %v", i, r.Passed, r.Findings)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

// attestClaims mirrors the JSON tags of attest.Claims (and the boot section
// being added to it) without importing it.
type attestClaims struct {
	PCRs     map[int]string `json:"pcrs"`
	EventLog *struct {
		Events      int         `json:"events"`
		EventsByPCR map[int]int `json:"events_by_pcr"`
	} `json:"event_log,omitempty"`
	Boot *struct {
		SecureBoot struct {
			Enabled bool `json:"enabled"`
		} `json:"secure_boot"`
		Components []struct {
			Kind   string `json:"kind"`
			Digest string `json:"digest"`
		} `json:"components"`
		KernelCmdline string `json:"kernel_cmdline"`
	} `json:"boot,omitempty"`
}

func TestClaimsDocument(t *testing.T) {
	var c attestClaims
	raw := fmt.Sprintf(`{"pcrs": {"0": %q, "4": %q, "7": %q}, "event_log": {"events": 18, "events_by_pcr": {"0": 10, "4": 3, "7": 5}},
		"boot": {"secure_boot": {"enabled": true}, "kernel_cmdline": "lockdown=integrity",
		"components": [{"kind": "bootloader", "digest": %q}, {"kind": "kernel", "digest": %q}, {"kind": "initrd", "digest": %q}]}}`,
		dPCR0a, dPCR4, dPCR7, dBootloader, dKernel68, dInitrd)
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		t.Fatal(err)
	}
	doc, err := ClaimsDocument(c)
	if err != nil {
		t.Fatal(err)
	}
	if doc["pcrs"].(map[string]any)["7"] != dPCR7 {
		t.Errorf("pcrs = %v", doc["pcrs"])
	}
	p := loadExample(t)
	r := p.Evaluate(doc)
	// The struct has no runtime section: that rule (and the condition over
	// it) fails closed; everything else passes.
	var got []want
	for _, f := range r.Findings {
		got = append(got, want{f.Rule, f.Reason})
	}
	if w := []want{{"runtime_events", ReasonClaimsMissing}, {"conditions.exec-argv-measured", ReasonClaimsMissing}}; !slices.Equal(got, w) {
		t.Errorf("findings %v, want %v", got, w)
	}

	for _, bad := range []any{nil, []int{1}, "claims", make(chan int)} {
		if doc, err := ClaimsDocument(bad); err == nil {
			t.Errorf("ClaimsDocument(%T) = %v, want an error", bad, doc)
		}
	}
}

func TestFindingString(t *testing.T) {
	f := Finding{Rule: "runtime_events.exec", Reason: ReasonRuntimeEventDenied, PCR: NoPCR, Detail: "d",
		Claims: map[string]any{"runtime.events[0].path": "/tmp/x\nLOCKOUT", "runtime.events[0].n": 2.0}}
	want := `runtime_events.exec: runtime_event_denied: d [runtime.events[0].n=2, runtime.events[0].path="/tmp/x\nLOCKOUT"]`
	if got := f.String(); got != want {
		t.Errorf("String() = %s\nwant       %s", got, want)
	}
}
