package store

import (
	"context"
	"encoding/hex"
	"errors"
	"slices"

	"github.com/writ-dev/writ/audit"
)

// AuditEvidence is the audit part of a node's evidence as the store holds
// it: the audit keys its attestations vouched for, and the checkpoint
// newest anchored at the broker ("" for none). The broker's admin API
// exports it; writ report verifies node logs against it.
func AuditEvidence(ctx context.Context, st Store, nodeID string) ([]audit.AttestedKey, string, error) {
	keys, err := st.AuditKeys(ctx, nodeID)
	if err != nil {
		return nil, "", err
	}
	out := make([]audit.AttestedKey, 0, len(keys))
	for _, k := range keys {
		ak := audit.AttestedKey{Result: k.ResultID, Time: k.CreatedAt, PublicKey: k.PublicKey, Nonce: k.Nonce,
			PCRValues: make(map[int]string, len(k.PCRValues))}
		for pcr, v := range k.PCRValues {
			ak.PCRs = append(ak.PCRs, pcr)
			ak.PCRValues[pcr] = hex.EncodeToString(v)
		}
		slices.Sort(ak.PCRs)
		out = append(out, ak)
	}
	anchor, err := st.LatestAuditAnchor(ctx, nodeID)
	if errors.Is(err, ErrNotFound) {
		return out, "", nil
	}
	if err != nil {
		return nil, "", err
	}
	return out, string(anchor.Checkpoint), nil
}
