package spireplugin

import (
	"strings"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/policy"
)

// reasonRuntimeReplay refuses a runtime log that does not replay to the
// quoted runtime PCR (the broker's code of the same name).
const reasonRuntimeReplay = policy.ReasonRuntimeReplay

// appraiser appraises evidence as the writ broker does, with the same
// policy.Appraiser: the quote first, then the boot log, the runtime log and
// the policy's rules and conditions over the claims. Deny by default.
type appraiser struct{ *policy.Appraiser }

func newAppraiser(p *policy.Policy) (*appraiser, error) {
	a, err := policy.NewAppraiser(p)
	if err != nil {
		return nil, err
	}
	return &appraiser{a}, nil
}

// appraise verifies the quote over nonce with the AK, then appraises the
// boot log, the runtime log and the policy. A refusal is an *attest.Error.
func (ap *appraiser) appraise(akPublic, nonce []byte, ev attest.Evidence, runtimeLog []byte) (*attest.Appraisal, error) {
	if _, err := attest.VerifyEvidence(akPublic, nonce, ev, ap.Quote()); err != nil {
		return nil, err
	}
	a := ap.Appraise(ev, runtimeLog)
	if !a.Passed {
		return nil, &attest.Error{Findings: a.Findings}
	}
	return a, nil
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
