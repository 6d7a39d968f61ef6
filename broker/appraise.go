package broker

import (
	"github.com/writ-dev/writ/policy"
)

// ReasonRuntimeReplay refuses a runtime log that does not replay to the
// quoted runtime PCR.
const ReasonRuntimeReplay = string(policy.ReasonRuntimeReplay)

// appraiser is the broker's appraisal: policy.Appraiser, which the SPIRE
// plugin's server side runs too.
type appraiser = policy.Appraiser

func newAppraiser(p *policy.Policy) (*appraiser, error) { return policy.NewAppraiser(p) }
