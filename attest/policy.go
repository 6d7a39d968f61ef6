package attest

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
)

// Policy is what a node's PCRs must hold to pass. It selects the PCRs it
// names (sha256 bank) and allows, for each, a set of values. Anything else
// is denied: a PCR named with no allowed value denies every node.
type Policy struct {
	ID      string
	Version int
	// PCRs maps each selected PCR to its allowed sha256 values.
	PCRs map[int][][]byte
	// RequireEventLog refuses evidence that comes without a boot event log.
	RequireEventLog bool
	// Runtime PCRs are quoted too but not appraised here: their values move
	// with runtime measurements and are replayed from their own log.
	Runtime []int
}

// QuoteSelection returns the PCRs a quote must cover, ascending: the
// policy's and the runtime ones.
func (p *Policy) QuoteSelection() []int {
	sel := append(p.Selection(), p.Runtime...)
	slices.Sort(sel)
	return slices.Compact(sel)
}

// Ref names the policy as id@version, as results record it.
func (p *Policy) Ref() string { return fmt.Sprintf("%s@%d", p.ID, p.Version) }

// Selection returns the selected PCRs in ascending order.
func (p *Policy) Selection() []int {
	sel := make([]int, 0, len(p.PCRs))
	for pcr := range p.PCRs {
		sel = append(sel, pcr)
	}
	slices.Sort(sel)
	return sel
}

// Validate refuses a policy that cannot be evaluated or that checks nothing.
func (p *Policy) Validate() error {
	if p.ID == "" || p.Version < 1 {
		return fmt.Errorf("attest: policy needs an id and a version >= 1")
	}
	if len(p.PCRs) == 0 {
		return fmt.Errorf("attest: policy %s selects no PCRs: it would check nothing", p.Ref())
	}
	for _, pcr := range p.Runtime {
		if _, ok := p.PCRs[pcr]; ok || pcr < 0 || pcr > 23 || pcr == 16 || pcr == 23 {
			return fmt.Errorf("attest: policy %s: runtime PCR %d is a boot PCR, out of range, or resettable", p.Ref(), pcr)
		}
	}
	for pcr, values := range p.PCRs {
		if pcr < 0 || pcr > 23 {
			return fmt.Errorf("attest: policy %s: PCR %d out of range 0-23", p.Ref(), pcr)
		}
		if pcr == 16 || pcr == 23 {
			return fmt.Errorf("attest: policy %s: PCR %d can be reset at locality 0 and proves nothing", p.Ref(), pcr)
		}
		if len(values) == 0 {
			return fmt.Errorf("attest: policy %s: PCR %d has no allowed value", p.Ref(), pcr)
		}
		for _, v := range values {
			if len(v) != 32 {
				return fmt.Errorf("attest: policy %s: PCR %d: allowed value is not a sha256 digest", p.Ref(), pcr)
			}
		}
	}
	return nil
}

// check compares each selected PCR with its allowed values. A finding's
// Expected lists the allowed values, comma separated; Seen is the value.
func (p *Policy) check(pcrs map[int][]byte) []Finding {
	var out []Finding
	for _, pcr := range p.Selection() {
		allowed := p.PCRs[pcr]
		if !slices.ContainsFunc(allowed, func(v []byte) bool { return bytes.Equal(v, pcrs[pcr]) }) {
			want := make([]string, len(allowed))
			for i, v := range allowed {
				want[i] = hex.EncodeToString(v)
			}
			seen := hex.EncodeToString(pcrs[pcr])
			out = append(out, Finding{Reason: ReasonPolicyDenied, PCR: pcr, Expected: strings.Join(want, ", "), Seen: seen,
				Detail: fmt.Sprintf("value %s is not among the %d value(s) policy %s allows", seen, len(allowed), p.Ref())})
		}
	}
	return out
}

// ParseDigest parses a sha256 digest written as hex, with or without a
// "sha256:" prefix.
func ParseDigest(s string) ([]byte, error) {
	d, err := hex.DecodeString(strings.TrimPrefix(strings.TrimSpace(s), "sha256:"))
	if err != nil || len(d) != 32 {
		return nil, fmt.Errorf("attest: %q is not a hex sha256 digest", s)
	}
	return d, nil
}
