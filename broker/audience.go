package broker

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/writ-dev/writ/artifact"
)

// Reasons the broker refuses a writ's audience or parent.
const (
	// ReasonAudienceDenied: the requested audience is neither the
	// caller's own node nor one the rule allowing the action lists.
	ReasonAudienceDenied = "audience_denied"
	// ReasonParentInvalid: the parent is not a live writ this broker
	// issued on the same node (to the node or one of its workloads).
	ReasonParentInvalid = "parent_invalid"
	// ReasonAttestationPolicyChanged: the node's latest result was
	// appraised under another policy than the one now loaded, so its PCR
	// digest and the loaded selection do not belong together.
	ReasonAttestationPolicyChanged = "attestation_policy_changed"
)

// audiencePolicy says where each rule's writs may be enforced: one entry
// per rule of the configuration, in order.
type audiencePolicy []audienceRule

type audienceRule struct {
	action   actionPolicy // the rule alone: does it allow the action?
	exact    map[string]bool
	prefixes []string // "spiffe://td/path" of a "/*" pattern: IDs under it
}

// audiencePolicy parses the rules' audiences: SPIFFE IDs, or prefixes
// ending in "/*". actions is c.actionPolicy(): one compiled rule per rule
// of the configuration, in order.
func (c *Config) audiencePolicy(actions actionPolicy) (audiencePolicy, error) {
	var p audiencePolicy
	for i, rc := range c.Writ.Rules {
		r := audienceRule{action: actionPolicy{actions[i]}, exact: map[string]bool{}}
		for _, a := range rc.Audiences {
			id, prefix := strings.CutSuffix(a, "/*")
			parsed, err := spiffeid.FromString(id)
			if err != nil {
				return nil, fmt.Errorf("writ.rules[%d]: audiences: %q: %w", i, a, err)
			}
			if prefix {
				r.prefixes = append(r.prefixes, parsed.String()+"/")
			} else {
				r.exact[parsed.String()] = true
			}
		}
		p = append(p, r)
	}
	return p, nil
}

// allows reports whether a writ for subject (node itself, or a workload
// of node) to perform act may name aud: node always; any other audience
// only when a rule that allows the action for subject lists it.
func (p audiencePolicy) allows(subject, node spiffeid.ID, act *artifact.Action, aud string) bool {
	if aud == node.String() {
		return true
	}
	id, err := spiffeid.FromString(aud)
	if err != nil || id.String() != aud {
		return false
	}
	for _, r := range p {
		if !r.listed(aud) {
			continue
		}
		if r.action.allows(subject, act) {
			return true
		}
	}
	return false
}

func (r audienceRule) listed(aud string) bool {
	if r.exact[aud] {
		return true
	}
	for _, pre := range r.prefixes {
		if strings.HasPrefix(aud, pre) {
			return true
		}
	}
	return false
}
