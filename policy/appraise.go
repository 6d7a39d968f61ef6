package policy

import (
	"errors"
	"fmt"
	"strings"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
)

// ReasonRuntimeReplay refuses a runtime log that does not replay to the
// quoted runtime PCR.
const ReasonRuntimeReplay attest.Reason = "runtime_replay_failed"

// Appraiser is writ's appraisal of a node: the boot event log against the
// quoted PCR values (package attest), the runtime log (attest/runtime),
// then the policy's rules and conditions over the claims. Deny by default.
// The broker and the SPIRE plugin's server side both appraise with it, so
// a node passes or fails the same policy the same way in either.
type Appraiser struct {
	policy *Policy
	quote  *attest.Policy // the PCR part, for attest: values, runtime PCR, event log
}

// NewAppraiser prepares the appraisal of p.
func NewAppraiser(p *Policy) (*Appraiser, error) {
	q := &attest.Policy{ID: p.ID, Version: p.Version, PCRs: p.PCRValues(), RequireEventLog: p.RequireEventLog,
		Runtime: []int{runtime.PCR}}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return &Appraiser{policy: p, quote: q}, nil
}

// Policy is the policy appraised against.
func (ap *Appraiser) Policy() *Policy { return ap.policy }

// Quote is the policy's PCR part: what attest.VerifyEvidence checks a
// quote against, and the PCRs to ask a node to quote.
func (ap *Appraiser) Quote() *attest.Policy { return ap.quote }

// Appraise appraises evidence whose quote was verified (attest.VerifyEvidence
// or attest.VerifyTPMTools when it was received; a dry run takes stored
// evidence, verified then): the boot event log against the quoted PCR
// values, the runtime log, then the policy over the claims.
func (ap *Appraiser) Appraise(ev attest.Evidence, runtimeLog []byte) *attest.Appraisal {
	a := attest.AppraiseEventLog(ev.EventLog, ev.PCRs, ap.quote)
	if !a.Passed {
		return a
	}
	events, err := runtime.Replay(runtimeLog, ev.PCRs[runtime.PCR])
	if err != nil {
		a.Passed, a.Findings = false, []attest.Finding{runtimeFinding(err)}
		return a
	}
	a.Claims.Runtime = &attest.RuntimeClaims{PCR: runtime.PCR, Events: events}
	doc, err := EvaluationDocument(a.Claims)
	if err != nil {
		a.Passed, a.Findings = false, attest.FindingsOf(err)
		return a
	}
	res := ap.policy.Evaluate(doc)
	a.Passed = res.Passed
	for _, f := range res.Findings {
		a.Findings = append(a.Findings, attest.Finding{Reason: attest.Reason(f.Reason), PCR: f.PCR,
			Detail: fmt.Sprintf("rule %s: %s", f.Rule, f.Detail), Seen: claimValues(f.Claims)})
	}
	if !a.Passed && len(a.Findings) == 0 { // a refusal always says why
		a.Findings = []attest.Finding{{Reason: attest.ReasonPolicyDenied, PCR: attest.NoPCR, Detail: "policy denied the node without a finding"}}
	}
	return a
}

func runtimeFinding(err error) attest.Finding {
	var d *runtime.Divergence
	if errors.As(err, &d) {
		return attest.Finding{Reason: ReasonRuntimeReplay, PCR: runtime.PCR, Detail: d.Detail, Expected: d.Expected, Seen: d.Seen,
			Event: &attest.EventRef{Index: d.Index, PCR: d.PCR, Type: "runtime:" + d.Kind, DigestLogged: d.Logged, DigestExpected: d.Expected}}
	}
	return attest.Finding{Reason: ReasonRuntimeReplay, PCR: runtime.PCR, Detail: err.Error()}
}

func claimValues(m map[string]any) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s=%v", k, v))
	}
	return strings.Join(parts, ", ")
}

// EvaluationDocument is what policies are evaluated over: the claims as
// stored (ClaimsDocument, so conditions can use every field, e.g.
// claims.boot.kernel.cmdline), plus the flat sections the policy's data
// rules read (boot.secure_boot, boot.components, boot.kernel_cmdline,
// runtime.events with digest and argv_digest). It builds the claims
// directly (claimsDocument), not by ClaimsDocument's JSON round trip; the
// error is kept for callers and is always nil.
func EvaluationDocument(c attest.Claims) (map[string]any, error) {
	stored := c
	if c.Runtime != nil { // its events are replaced by addFlatSections: not built twice
		stored.Runtime = &attest.RuntimeClaims{PCR: c.Runtime.PCR}
	}
	doc := claimsDocument(stored)
	addFlatSections(doc, c)
	return doc, nil
}

// addFlatSections adds to a claims document the flat sections the
// policy's data rules read: boot.secure_boot, boot.components,
// boot.kernel_cmdline, and runtime.events with digest and argv_digest.
func addFlatSections(doc map[string]any, c attest.Claims) {
	if b := c.Boot; b != nil {
		boot, _ := doc["boot"].(map[string]any)
		if b.SecureBoot != nil {
			boot["secure_boot"] = map[string]any{"enabled": b.SecureBoot.Enabled}
		}
		var comps []any
		for _, comp := range BootComponents(b) {
			comps = append(comps, map[string]any{"kind": comp.Kind, "digest": comp.Digest})
		}
		if b.Kernel != nil && b.Kernel.Cmdline != "" { // absent, not empty, when no bound command line was found
			boot["kernel_cmdline"] = b.Kernel.Cmdline
		}
		boot["components"] = comps
	}
	if r := c.Runtime; r != nil {
		rt, _ := doc["runtime"].(map[string]any)
		events := make([]any, 0, len(r.Events))
		for _, e := range r.Events {
			ev := map[string]any{"kind": e.Kind, "digest": e.Exe, "argv_digest": e.Argv, "jti": e.JTI}
			if e.Kind == runtime.KindConfig {
				ev["digest"] = e.Config
			}
			events = append(events, ev)
		}
		rt["events"] = events
	}
}

// BootComponent is one measured boot component, by the kinds a policy's
// boot_components section names.
type BootComponent struct {
	Kind   string // firmware, driver, bootloader, initrd or kernel
	Digest string // as the boot claims record it
}

// BootComponents lists the measured boot components of b in the order
// firmware, drivers, boot loaders, initrd, kernel.
func BootComponents(b *attest.BootClaims) []BootComponent {
	var out []BootComponent
	add := func(kind string, list []attest.Component) {
		for _, c := range list {
			out = append(out, BootComponent{kind, c.Digest})
		}
	}
	add("firmware", b.Firmware)
	add("driver", b.Drivers)
	add("bootloader", b.Bootloaders)
	add("initrd", b.Initrd)
	if b.Kernel != nil {
		out = append(out, BootComponent{"kernel", b.Kernel.Digest})
	}
	return out
}
