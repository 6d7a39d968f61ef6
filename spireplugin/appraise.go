package spireplugin

import (
	"errors"
	"fmt"
	"strings"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/policy"
)

// reasonRuntimeReplay refuses a runtime log that does not replay to the
// quoted runtime PCR (the broker's code of the same name).
const reasonRuntimeReplay attest.Reason = "runtime_replay_failed"

// appraiser appraises evidence as the writ broker does (broker/appraise.go):
// the quote and boot log (package attest), the runtime log (attest/runtime),
// then the policy's rules and conditions over the claims (package policy).
// Deny by default. It is the broker's appraisal repeated, not shared, so
// the plugin does not pull the broker and its store into SPIRE's process
// (docs/adr/0034); a change to one must be made to both.
type appraiser struct {
	policy *policy.Policy
	quote  *attest.Policy // the PCR part: values, runtime PCR, event log
}

func newAppraiser(p *policy.Policy) (*appraiser, error) {
	q := &attest.Policy{ID: p.ID, Version: p.Version, PCRs: p.PCRValues(), RequireEventLog: p.RequireEventLog,
		Runtime: []int{runtime.PCR}}
	if err := q.Validate(); err != nil {
		return nil, err
	}
	return &appraiser{policy: p, quote: q}, nil
}

// appraise verifies the quote over nonce with the AK, then appraises the
// boot log, the runtime log and the policy. A refusal is an *attest.Error.
func (ap *appraiser) appraise(akPublic, nonce []byte, ev attest.Evidence, runtimeLog []byte) (*attest.Appraisal, error) {
	if _, err := attest.VerifyEvidence(akPublic, nonce, ev, ap.quote); err != nil {
		return nil, err
	}
	a := attest.AppraiseEventLog(ev.EventLog, ev.PCRs, ap.quote)
	if !a.Passed {
		return nil, a.Err()
	}
	events, err := runtime.Replay(runtimeLog, ev.PCRs[runtime.PCR])
	if err != nil {
		return nil, &attest.Error{Findings: []attest.Finding{runtimeFinding(err)}, Err: err}
	}
	a.Claims.Runtime = &attest.RuntimeClaims{PCR: runtime.PCR, Events: events}
	doc, err := claimsDocument(a.Claims)
	if err != nil {
		return nil, err
	}
	res := ap.policy.Evaluate(doc)
	if !res.Passed {
		var fs []attest.Finding
		for _, f := range res.Findings {
			fs = append(fs, attest.Finding{Reason: attest.Reason(f.Reason), PCR: f.PCR, Detail: fmt.Sprintf("rule %s: %s", f.Rule, f.Detail)})
		}
		if len(fs) == 0 {
			fs = []attest.Finding{{Reason: attest.ReasonPolicyDenied, PCR: attest.NoPCR, Detail: "policy denied the node without a finding"}}
		}
		return nil, &attest.Error{Findings: fs}
	}
	return a, nil
}

func runtimeFinding(err error) attest.Finding {
	var d *runtime.Divergence
	if errors.As(err, &d) {
		return attest.Finding{Reason: reasonRuntimeReplay, PCR: runtime.PCR, Detail: d.Detail, Expected: d.Expected, Seen: d.Seen}
	}
	return attest.Finding{Reason: reasonRuntimeReplay, PCR: runtime.PCR, Detail: err.Error()}
}

// claimsDocument is what policies are evaluated over, built exactly as the
// broker builds it (broker/appraise.go claimsDocument): the claims as
// stored plus the flat sections the policy's data rules read
// (boot.secure_boot, boot.components, boot.kernel_cmdline, runtime.events).
func claimsDocument(c attest.Claims) (map[string]any, error) {
	doc, err := policy.ClaimsDocument(c)
	if err != nil {
		return nil, err
	}
	if b := c.Boot; b != nil {
		boot, _ := doc["boot"].(map[string]any)
		if b.SecureBoot != nil {
			boot["secure_boot"] = map[string]any{"enabled": b.SecureBoot.Enabled}
		}
		var comps []any
		for _, comp := range bootComponents(b) {
			comps = append(comps, map[string]any{"kind": comp.kind, "digest": comp.digest})
		}
		if b.Kernel != nil && b.Kernel.Cmdline != "" { // absent, not empty, when none was bound
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
	return doc, nil
}

type bootComponent struct{ kind, digest string }

// bootComponents lists the measured boot components by the kinds a writ
// policy's boot_components section names: firmware, driver, bootloader,
// initrd, kernel. The writ:boot selectors use the same kinds and digests.
func bootComponents(b *attest.BootClaims) []bootComponent {
	var out []bootComponent
	add := func(kind string, list []attest.Component) {
		for _, c := range list {
			out = append(out, bootComponent{kind, c.Digest})
		}
	}
	add("firmware", b.Firmware)
	add("driver", b.Drivers)
	add("bootloader", b.Bootloaders)
	add("initrd", b.Initrd)
	if b.Kernel != nil {
		out = append(out, bootComponent{"kernel", b.Kernel.Digest})
	}
	return out
}

// explain renders a refusal for the gRPC status SPIRE logs on both sides:
// "writ: <reason>: <detail>", then the other findings.
func explain(err *attest.Error) string {
	var b strings.Builder
	for i, f := range err.Findings {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(f.String())
	}
	return "writ: " + b.String()
}
