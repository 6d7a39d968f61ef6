package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/policy"
)

// DryRun appraises the stored evidence of every node's latest attestation
// again under a candidate policy, and reports which nodes would pass and
// fail and why, next to how they stand now. It changes nothing. Only
// evidence whose quote verified is stored (Attest), so its PCR values are
// taken as stored; a result without a PCR digest (from a broker before
// that rule) is reported, not appraised.
func DryRun(ctx context.Context, st store.Store, candidate *policy.Policy) ([]policy.DryRunRow, error) {
	appr, err := newAppraiser(candidate)
	if err != nil {
		return nil, fmt.Errorf("broker: candidate policy: %w", err)
	}
	nodes, err := st.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var rows []policy.DryRunRow
	for _, n := range nodes {
		row := policy.DryRunRow{Name: n.SPIFFEID}
		res, err := st.LatestResult(ctx, n.ID)
		switch {
		case errors.Is(err, store.ErrNotFound):
			row.Findings = []policy.Finding{{Rule: "evidence", Reason: "evidence_missing", PCR: policy.NoPCR, Detail: "the node has never attested"}}
			rows = append(rows, row)
			continue
		case err != nil:
			return nil, err
		}
		row.BeforeKnown, row.Before = true, res.Passed && n.State != store.NodeRevoked
		if res.PCRDigest == "" {
			// Stored by a broker before issue 7 from evidence whose quote
			// did not verify: its PCR values are the sender's word.
			row.Findings = []policy.Finding{{Rule: "evidence", Reason: "evidence_unverified", PCR: policy.NoPCR,
				Detail: "the latest result's quote did not verify; its evidence is not appraised"}}
			rows = append(rows, row)
			continue
		}
		a := reappraise(appr, res.Evidence)
		row.After = a.Passed
		row.Findings = dryRunFindings(a.Findings)
		rows = append(rows, row)
	}
	return rows, nil
}

// reappraise appraises stored evidence (storedEvidence JSON) with ap.
func reappraise(ap *appraiser, raw []byte) *attest.Appraisal {
	var ev storedEvidence
	if len(raw) == 0 || json.Unmarshal(raw, &ev) != nil {
		return &attest.Appraisal{Findings: []attest.Finding{{Reason: "evidence_missing", PCR: attest.NoPCR,
			Detail: "no stored evidence for this result (recorded before the broker kept evidence)"}}}
	}
	return ap.Appraise(ev.Attest(), ev.Runtime)
}

// DryRunEvidence is DryRun over exported evidence (writ node evidence), for
// nodes of another broker or evidence kept offline.
func DryRunEvidence(candidate *policy.Policy, exports []ExportedEvidence) ([]policy.DryRunRow, error) {
	appr, err := newAppraiser(candidate)
	if err != nil {
		return nil, fmt.Errorf("broker: candidate policy: %w", err)
	}
	rows := make([]policy.DryRunRow, 0, len(exports))
	for _, ex := range exports {
		row := policy.DryRunRow{Name: ex.Node, BeforeKnown: true, Before: ex.Passed}
		a := reappraise(appr, ex.Evidence)
		row.After = a.Passed
		row.Findings = dryRunFindings(a.Findings)
		rows = append(rows, row)
	}
	return rows, nil
}

func dryRunFindings(findings []attest.Finding) []policy.Finding {
	var out []policy.Finding
	for _, f := range findings {
		rule := "appraisal"
		if f.PCR != attest.NoPCR {
			rule = fmt.Sprintf("pcrs.%d", f.PCR)
		}
		out = append(out, policy.Finding{Rule: rule, Reason: string(f.Reason), PCR: f.PCR, Detail: f.Detail})
	}
	return out
}
