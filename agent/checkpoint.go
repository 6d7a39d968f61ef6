package agent

import (
	"errors"
	"fmt"
	"slices"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/audit/nodelog"
	"github.com/writ-dev/writ/internal/nodestate"
)

// auditAttachments adds the node's audit log to an attestation (ADR 0010):
// its latest signed checkpoint with a consistency proof from the size the
// broker anchored, and — when the node has no audit key for its current
// boot PCRs (no log yet, or the boot changed) — a new PCR-bound key
// certified by the AK over the nonce. It returns that key, to install once
// the attestation passed (the broker has then recorded it), or nil.
func (a *Agent) auditAttachments(req *brokerv1.AttestRequest, sel []int, anchored uint64) (*nodelog.Key, error) {
	if nodelog.Exists(a.dir) {
		p, err := audit.ProveConsistency(a.dir.Path(nodestate.AuditDir), anchored, 0)
		switch {
		case err == nil:
			req.AuditCheckpoint = &brokerv1.AuditCheckpoint{Checkpoint: p.Checkpoint, FromSize: p.OldSize, Consistency: p.Hashes}
		case errors.Is(err, audit.ErrNotCheckpointed):
			// Nothing signed yet, or less than the broker anchored: the
			// broker decides.
		default:
			a.log.Warn("audit checkpoint not sent", "err", err)
		}
	}
	// The audit key binds the boot PCRs only: the runtime PCR moves with
	// every governed exec.
	boot := slices.DeleteFunc(slices.Clone(sel), func(p int) bool { return p == runtime.PCR })
	var key *nodelog.Key
	err := a.withTPM(func(tpm *prover.TPM) error {
		if need, err := nodelog.NeedsKey(a.dir, tpm, boot); err != nil || !need {
			return err
		}
		k, err := nodelog.NewKey(a.dir, tpm, boot, req.GetNonce())
		if err != nil {
			return fmt.Errorf("agent: audit key: %w", err)
		}
		key = k
		return nil
	})
	if err != nil || key == nil {
		return nil, err
	}
	req.AuditKey = brokerv1.NewTPMKey(*key.Info.Certification)
	return key, nil
}

// installAuditKey makes key the node's audit key after a pass.
func (a *Agent) installAuditKey(tpm *prover.TPM, n *NodeRecord, key *nodelog.Key) error {
	if err := nodelog.Install(a.dir, tpm, n.SPIFFEID, key); err != nil {
		return fmt.Errorf("agent: audit key: %w", err)
	}
	a.log.Info("audit key installed", "node", n.SPIFFEID, "pcrs", key.Info.PCRs)
	return nil
}
