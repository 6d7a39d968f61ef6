package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/google/cel-go/interpreter"
)

// Reason codes of findings. Tests, logs, metrics and the audit log all use
// these strings; never change one. policy_denied is the same code package
// attest uses for a PCR value a policy does not allow.
const (
	ReasonPolicyDenied        = "policy_denied"
	ReasonSecureBootRequired  = "secure_boot_required"
	ReasonBootComponentDenied = "boot_component_denied"
	ReasonRuntimeEventDenied  = "runtime_event_denied"
	ReasonConditionFalse      = "condition_false"
	ReasonConditionError      = "condition_error"
	ReasonClaimsMissing       = "claims_missing"
)

// NoPCR marks a finding that concerns no single PCR (as in package attest).
const NoPCR = -1

// Rule names (a PCR rule is "pcrs.N", a component rule
// "boot_components.KIND", a runtime rule "runtime_events.KIND", a condition
// "conditions.NAME").
const (
	rulePCRs       = "pcrs"
	ruleEventLog   = "require_event_log"
	ruleSecureBoot = "secure_boot"
	ruleComponents = "boot_components"
	ruleRuntime    = "runtime_events"
	ruleConditions = "conditions"
	rulePolicy     = "policy"
)

// Finding is one reason a policy denies a node.
type Finding struct {
	// Rule is the policy rule that failed: "pcrs.7", "require_event_log",
	// "secure_boot", "boot_components.kernel", "runtime_events.exec",
	// "conditions.lockdown"; "policy" when there is no usable policy.
	Rule string `json:"rule"`
	// Reason is a stable code (the Reason* constants).
	Reason string `json:"reason"`
	// PCR is the PCR the finding concerns, or NoPCR.
	PCR int `json:"pcr"`
	// Detail says what failed, for a user to read.
	Detail string `json:"detail"`
	// Claims are the claim values the rule looked at, keyed by their path in
	// the claims document ("pcrs.7", "boot.components[2].digest"). Lists and
	// objects appear as "<list of N>" / "<object with N keys>".
	Claims map[string]any `json:"claims,omitempty"`
}

// String renders the finding on one line, claim values quoted.
func (f Finding) String() string {
	var b strings.Builder
	b.WriteString(f.Rule + ": " + f.Reason + ": " + f.Detail)
	if len(f.Claims) > 0 {
		b.WriteString(" [")
		for i, k := range slices.Sorted(maps.Keys(f.Claims)) {
			if i > 0 {
				b.WriteString(", ")
			}
			b.WriteString(printable(k) + "=" + claimString(f.Claims[k]))
		}
		b.WriteString("]")
	}
	return b.String()
}

func claimString(v any) string {
	switch v := v.(type) {
	case string:
		return strconv.Quote(v)
	case nil:
		return "null"
	default:
		return fmt.Sprint(v)
	}
}

// Result is the outcome of evaluating a policy over one claims document.
type Result struct {
	Policy   string    `json:"policy"` // id@version
	Passed   bool      `json:"passed"`
	Findings []Finding `json:"findings,omitempty"` // every rule that failed; empty when Passed
}

// Evaluate evaluates every rule of the policy over a claims document (see
// the package documentation for its shape) and reports every rule that
// fails; it passes only when none does. It never changes claims. Its CEL
// conditions together get at most EvalTimeout.
func (p *Policy) Evaluate(claims map[string]any) *Result {
	ctx, cancel := context.WithTimeout(context.Background(), EvalTimeout)
	defer cancel()
	return p.EvaluateContext(ctx, claims)
}

// EvaluateContext is Evaluate with a context that bounds the CEL conditions:
// once ctx ends, each condition still to finish is a condition_error.
func (p *Policy) EvaluateContext(ctx context.Context, claims map[string]any) *Result {
	if p == nil || len(p.pcrs) == 0 {
		ref := "<none>"
		if p != nil {
			ref = p.Ref()
		}
		return &Result{Policy: ref, Findings: []Finding{{Rule: rulePolicy, Reason: ReasonPolicyDenied, PCR: NoPCR,
			Detail: "no usable policy (one that selects no PCRs checks nothing): denied"}}}
	}
	r := &Result{Policy: p.Ref()}
	r.Findings = p.checkPCRs(r.Findings, claims)
	if p.RequireEventLog {
		if _, ok := asMap(claims["event_log"]); !ok {
			r.Findings = append(r.Findings, missing(ruleEventLog, "the policy requires a replayed boot event log and the claims have none (event_log)"))
		}
	}
	if p.SecureBoot == SecureBootRequired {
		r.Findings = p.checkSecureBoot(r.Findings, claims)
	}
	if p.components != nil {
		r.Findings = p.checkComponents(r.Findings, claims)
	}
	if p.runtime != nil {
		r.Findings = p.checkRuntime(r.Findings, claims)
	}
	if len(p.conditions) > 0 {
		r.Findings = p.checkConditions(ctx, r.Findings, claims)
	}
	r.Passed = len(r.Findings) == 0
	return r
}

func missing(rule, detail string) Finding {
	return Finding{Rule: rule, Reason: ReasonClaimsMissing, PCR: NoPCR, Detail: detail}
}

func (p *Policy) checkPCRs(out []Finding, claims map[string]any) []Finding {
	values, ok := asMap(claims["pcrs"])
	for _, pcr := range p.sel {
		rule := rulePCRs + "." + strconv.Itoa(pcr)
		if !ok {
			f := missing(rule, "the claims have no PCR values (pcrs)")
			f.PCR = pcr
			out = append(out, f)
			continue
		}
		key := strconv.Itoa(pcr)
		v, ok := values[key].(string)
		if !ok {
			f := missing(rule, fmt.Sprintf("the claims hold no value for PCR %d: it was not quoted", pcr))
			f.PCR = pcr
			out = append(out, f)
			continue
		}
		set := p.pcrs[pcr]
		if !set.has(normDigest(v)) {
			out = append(out, Finding{Rule: rule, Reason: ReasonPolicyDenied, PCR: pcr,
				Detail: fmt.Sprintf("value %s is not among the %d value(s) policy %s allows", printable(v), len(set.list), p.Ref()),
				Claims: map[string]any{"pcrs." + key: v}})
		}
	}
	return out
}

func (p *Policy) checkSecureBoot(out []Finding, claims map[string]any) []Finding {
	boot, ok := asMap(claims["boot"])
	if !ok {
		return append(out, missing(ruleSecureBoot, "secure boot is required and the claims have no boot section: its state is unknown"))
	}
	sb, ok := asMap(boot["secure_boot"])
	if !ok {
		return append(out, missing(ruleSecureBoot, "secure boot is required and the claims have no secure boot state (boot.secure_boot)"))
	}
	raw, present := sb["enabled"]
	enabled, ok := raw.(bool)
	if !ok {
		f := missing(ruleSecureBoot, "secure boot is required and boot.secure_boot.enabled is absent or not a boolean")
		if present {
			f.Claims = map[string]any{"boot.secure_boot.enabled": summarize(raw)}
		}
		return append(out, f)
	}
	if !enabled {
		out = append(out, Finding{Rule: ruleSecureBoot, Reason: ReasonSecureBootRequired, PCR: NoPCR,
			Detail: "secure boot is required and it is disabled", Claims: map[string]any{"boot.secure_boot.enabled": false}})
	}
	return out
}

func (p *Policy) checkComponents(out []Finding, claims map[string]any) []Finding {
	boot, ok := asMap(claims["boot"])
	if !ok {
		return append(out, missing(ruleComponents, "the policy lists boot components and the claims have no boot section"))
	}
	list, ok := asList(boot["components"])
	if !ok {
		return append(out, missing(ruleComponents, "the policy lists boot components and the claims have none (boot.components)"))
	}
	seen := map[string]bool{}
	for i, item := range list {
		kind, digest, ok := measurement(item)
		if ok && p.components[kind].has(normDigest(digest)) {
			seen[kind] = true
			continue
		}
		fields := fieldsOf(item, "boot.components["+strconv.Itoa(i)+"]")
		switch {
		case !ok:
			out = append(out, Finding{Rule: ruleComponents, Reason: ReasonBootComponentDenied, PCR: NoPCR,
				Detail: fmt.Sprintf("component %d has no kind or no digest", i), Claims: fields})
		case p.components[kind].set == nil:
			out = append(out, Finding{Rule: kindRule(ruleComponents, kind), Reason: ReasonBootComponentDenied, PCR: NoPCR,
				Detail: fmt.Sprintf("component %d is of kind %s, which the policy does not list", i, printable(kind)), Claims: fields})
		default:
			seen[kind] = true
			out = append(out, Finding{Rule: kindRule(ruleComponents, kind), Reason: ReasonBootComponentDenied, PCR: NoPCR,
				Detail: fmt.Sprintf("component %d (%s) has digest %s, not among the %d the policy allows",
					i, kind, printable(digest), len(p.components[kind].list)),
				Claims: fields})
		}
	}
	for _, kind := range slices.Sorted(maps.Keys(p.components)) {
		if !seen[kind] {
			out = append(out, missing(kindRule(ruleComponents, kind), fmt.Sprintf("the policy lists %s digests and the claims have no %s component", kind, kind)))
		}
	}
	return out
}

func (p *Policy) checkRuntime(out []Finding, claims map[string]any) []Finding {
	rt, ok := asMap(claims["runtime"])
	if !ok {
		return append(out, missing(ruleRuntime, "the policy lists runtime events and the claims have no runtime section"))
	}
	list, ok := asList(rt["events"])
	if !ok {
		return append(out, missing(ruleRuntime, "the policy lists runtime events and the claims have no runtime log (runtime.events)"))
	}
	for i, item := range list {
		kind, digest, ok := measurement(item)
		if ok && p.runtime[kind].has(normDigest(digest)) {
			continue
		}
		fields := fieldsOf(item, "runtime.events["+strconv.Itoa(i)+"]")
		switch {
		case !ok:
			out = append(out, Finding{Rule: ruleRuntime, Reason: ReasonRuntimeEventDenied, PCR: NoPCR,
				Detail: fmt.Sprintf("runtime event %d has no kind or no digest", i), Claims: fields})
		case p.runtime[kind].set == nil:
			out = append(out, Finding{Rule: kindRule(ruleRuntime, kind), Reason: ReasonRuntimeEventDenied, PCR: NoPCR,
				Detail: fmt.Sprintf("runtime event %d is of kind %s, which the policy does not list", i, printable(kind)), Claims: fields})
		default:
			out = append(out, Finding{Rule: kindRule(ruleRuntime, kind), Reason: ReasonRuntimeEventDenied, PCR: NoPCR,
				Detail: fmt.Sprintf("runtime event %d (%s) has digest %s, not among the %d the policy allows",
					i, kind, printable(digest), len(p.runtime[kind].list)),
				Claims: fields})
		}
	}
	return out
}

// measurement reads a component or runtime event: its kind, its digest, and
// whether it has both.
func measurement(item any) (kind, digest string, ok bool) {
	m, isMap := asMap(item)
	if !isMap {
		return "", "", false
	}
	kind, kok := m["kind"].(string)
	digest, dok := m["digest"].(string)
	return kind, digest, kok && dok && kind != ""
}

// fieldsOf returns the scalar fields of a component or runtime event at path
// at, for a finding about it.
func fieldsOf(item any, at string) map[string]any {
	m, isMap := asMap(item)
	if !isMap {
		return map[string]any{at: summarize(item)}
	}
	fields := make(map[string]any, len(m))
	for k, v := range m {
		fields[at+"."+k] = summarize(v)
	}
	return fields
}

// kindRule names the rule of a kind; a kind no policy could list (it is not
// a valid name) falls back to the section, so untrusted claims cannot shape
// rule names.
func kindRule(section, kind string) string {
	if !namePattern.MatchString(kind) {
		return section
	}
	return section + "." + kind
}

func (p *Policy) checkConditions(ctx context.Context, out []Finding, claims map[string]any) []Finding {
	act, actErr := interpreter.NewActivation(map[string]any{"claims": claims})
	for _, c := range p.conditions {
		ok, err := false, actErr
		if err == nil {
			ok, err = c.eval(ctx, act)
		}
		if ok && err == nil {
			continue
		}
		found, absent := c.explain(claims)
		f := Finding{Rule: ruleConditions + "." + c.name, PCR: NoPCR, Claims: found}
		switch {
		case err != nil && len(absent) > 0:
			// A claim the condition reads is absent: the log did not yield
			// it from measured data. It is never read as empty or false.
			f.Reason = ReasonClaimsMissing
			f.Detail = fmt.Sprintf("%s reads claims the node's evidence does not establish", c.expr)
		case err != nil:
			f.Reason = ReasonConditionError
			f.Detail = fmt.Sprintf("%s did not evaluate: %v", c.expr, err)
		default:
			f.Reason = ReasonConditionFalse
			f.Detail = fmt.Sprintf("%s is false", c.expr)
		}
		if len(absent) > 0 {
			f.Detail += fmt.Sprintf(" (absent from the claims: %s)", strings.Join(absent, ", "))
		}
		out = append(out, f)
	}
	return out
}

// ClaimsDocument converts v (an attest.Claims, or any value that encodes to
// a JSON object) into the document form policies are evaluated over, by a
// JSON round trip: numbers become float64, objects map[string]any, arrays
// []any.
func ClaimsDocument(v any) (map[string]any, error) {
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("policy: claims: %w", err)
	}
	var doc map[string]any
	if err := json.Unmarshal(raw, &doc); err != nil {
		return nil, fmt.Errorf("policy: claims do not encode to a JSON object: %w", err)
	}
	if doc == nil {
		return nil, fmt.Errorf("policy: claims encode to null, not a JSON object")
	}
	return doc, nil
}

func asMap(v any) (map[string]any, bool) {
	m, ok := v.(map[string]any)
	return m, ok && m != nil
}

func asList(v any) ([]any, bool) {
	switch l := v.(type) {
	case []any:
		return l, l != nil
	case []map[string]any:
		if l == nil {
			return nil, false
		}
		out := make([]any, len(l))
		for i, m := range l {
			out[i] = m
		}
		return out, true
	}
	return nil, false
}

// printable quotes s when it holds anything but printable ASCII without
// spaces, so claims from a node cannot forge lines of a report.
func printable(s string) string {
	for _, r := range s {
		if r <= ' ' || r > '~' || r == '"' {
			return strconv.Quote(s)
		}
	}
	if s == "" {
		return `""`
	}
	return s
}
