package broker

import (
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/policy"
)

// ReasonRuntimeReplay refuses a runtime log that does not replay to the
// quoted runtime PCR.
const ReasonRuntimeReplay = string(policy.ReasonRuntimeReplay)

// appraiser is the broker's appraisal, policy.Appraiser, with its policy
// and PCR part at hand.
type appraiser struct {
	*policy.Appraiser
	policy *policy.Policy
	quote  *attest.Policy // the PCR part, for attest: values, runtime PCR, event log
}

func newAppraiser(p *policy.Policy) (*appraiser, error) {
	a, err := policy.NewAppraiser(p)
	if err != nil {
		return nil, err
	}
	return &appraiser{Appraiser: a, policy: p, quote: a.Quote()}, nil
}

// appraise appraises evidence whose quote was verified: see
// policy.Appraiser.Appraise.
func (ap *appraiser) appraise(ev attest.Evidence, runtimeLog []byte) *attest.Appraisal {
	return ap.Appraise(ev, runtimeLog)
}
