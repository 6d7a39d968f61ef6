package broker

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
)

// Reasons a node's audit attachments fail its attestation (ADR 0010).
const (
	// ReasonAuditKeyInvalid: the new audit key is not certified by the
	// node's AK over this attestation's nonce, or not bound to the boot PCR
	// values just quoted.
	ReasonAuditKeyInvalid attest.Reason = "audit_key_invalid"
	// ReasonAuditCheckpointInvalid: the checkpoint is malformed, of another
	// log, or not signed by an audit key the broker recorded for the node.
	ReasonAuditCheckpointInvalid attest.Reason = "audit_checkpoint_invalid"
	// ReasonAuditRollback: the node's log no longer extends the checkpoint
	// the broker anchored (smaller, missing, or not consistent with it).
	ReasonAuditRollback attest.Reason = "audit_rollback"
)

// Bounds on the audit attachments of an AttestRequest.
const (
	maxCheckpointSize  = 4 << 10
	maxConsistencySize = 2 * 64 // hashes in a consistency proof of a tree of at most 2^64 leaves
)

// anchorAudit checks a node's audit attachments once its evidence verified
// and its appraisal passed (res.Passed), in order:
//
//  1. a new audit key, when sent, is certified by the node's AK over this
//     attestation's nonce and bound to the boot PCR values just quoted
//     (the quoted selection without the runtime PCR): audit_key_invalid;
//  2. once a checkpoint is anchored for the node, one is sent:
//     audit_rollback;
//  3. the checkpoint is of the node's log (its origin) and signed by an
//     audit key the broker recorded for the node, no older than the key of
//     the anchored checkpoint: audit_checkpoint_invalid
//     (a node with no recorded key and no anchor has nothing to check
//     against: its checkpoint is ignored);
//  4. it is no smaller than the anchored one and its consistency proof
//     leads from the anchored size and root to its root: audit_rollback.
//
// A failed check fails the result (its findings say why). When all hold it
// records the key and the checkpoint, in the store and in the broker's
// audit log. The error is for what it could not read or record.
func (b *Broker) anchorAudit(ctx context.Context, node store.Node, res *store.Result, req *brokerv1.AttestRequest, quoted map[int][]byte) error {
	key, err := b.checkAuditKey(node, req, quoted)
	var anchor *store.AuditAnchor
	if err == nil {
		anchor, err = b.checkAuditCheckpoint(ctx, node, req)
	}
	if f := (*attest.Error)(nil); errors.As(err, &f) {
		res.Passed, res.Findings = false, f.Findings
		return nil
	}
	if err != nil {
		return err
	}
	now := time.Now()
	if key != nil {
		key.NodeID, key.ResultID, key.CreatedAt = node.ID, res.ID, now
		if err := b.store.PutAuditKey(ctx, *key); err != nil {
			return err
		}
		sum := sha256.Sum256(key.PublicKey)
		if err := b.record(ctx, "audit-key", node.SPIFFEID, audit.DecisionInfo, "",
			map[string]string{"result": res.ID, "key": hex.EncodeToString(sum[:])}); err != nil {
			return err
		}
	}
	if anchor != nil {
		anchor.NodeID, anchor.ResultID, anchor.AnchoredAt = node.ID, res.ID, now
		if err := b.store.PutAuditAnchor(ctx, *anchor); err != nil {
			return err
		}
		if err := b.record(ctx, "audit-anchor", node.SPIFFEID, audit.DecisionInfo, "", map[string]string{
			"result": res.ID, "size": strconv.FormatUint(anchor.Size, 10), "root": hex.EncodeToString(anchor.Root)}); err != nil {
			return err
		}
	}
	return nil
}

func auditFail(reason attest.Reason, format string, args ...any) error {
	return &attest.Error{Findings: []attest.Finding{{Reason: reason, PCR: attest.NoPCR, Detail: fmt.Sprintf(format, args...)}}}
}

// bootSelection is the quoted selection without the runtime PCR: what a
// node's audit key binds.
func (b *Broker) bootSelection() []int {
	return slices.DeleteFunc(slices.Clone(b.rules().appr.Quote().QuoteSelection()), func(p int) bool { return p == runtime.PCR })
}

// checkAuditKey is check 1. It returns the key to record, or nil. quoted
// are the verified evidence's sha256 PCR values, whatever its format.
func (b *Broker) checkAuditKey(node store.Node, req *brokerv1.AttestRequest, quoted map[int][]byte) (*store.AuditKey, error) {
	if req.GetAuditKey() == nil {
		return nil, nil
	}
	sel := b.bootSelection()
	values := make(map[int][]byte, len(sel))
	for _, pcr := range sel {
		values[pcr] = quoted[pcr]
	}
	pub, err := attest.CheckPCRKey(node.AKPublic, req.GetAuditKey().Params(), values, sel, req.GetNonce())
	if err != nil {
		return nil, auditFail(ReasonAuditKeyInvalid, "audit key: %v", err)
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	return &store.AuditKey{PublicKey: spki, Nonce: bytes.Clone(req.GetNonce()), PCRValues: values}, nil
}

// checkAuditCheckpoint is checks 2-4. It returns the checkpoint to anchor,
// or nil when there is none new.
func (b *Broker) checkAuditCheckpoint(ctx context.Context, node store.Node, req *brokerv1.AttestRequest) (*store.AuditAnchor, error) {
	prev, err := b.store.LatestAuditAnchor(ctx, node.ID)
	if errors.Is(err, store.ErrNotFound) {
		prev, err = store.AuditAnchor{}, nil
	}
	if err != nil {
		return nil, err
	}
	cp := req.GetAuditCheckpoint()
	if cp == nil {
		if prev.Size > 0 {
			return nil, auditFail(ReasonAuditRollback, "the node sent no audit checkpoint; the broker anchored one of %d entries", prev.Size)
		}
		return nil, nil
	}
	if len(cp.GetCheckpoint()) > maxCheckpointSize || len(cp.GetConsistency()) > maxConsistencySize {
		return nil, auditFail(ReasonAuditCheckpointInvalid, "checkpoint or consistency proof too large")
	}
	keys, err := b.store.AuditKeys(ctx, node.ID)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 && prev.Size == 0 {
		// No key recorded yet (a log made before the broker recorded keys):
		// nothing to check it against, and nothing to roll back from. Its
		// log fails verify --evidence (key_not_attested) until a new key.
		return nil, nil
	}
	pubs := make([]*ecdsa.PublicKey, 0, len(keys))
	for _, k := range keys {
		if pub, err := x509.ParsePKIXPublicKey(k.PublicKey); err == nil {
			if ec, ok := pub.(*ecdsa.PublicKey); ok {
				pubs = append(pubs, ec)
			}
		}
	}
	c, err := audit.OpenCheckpoint(cp.GetCheckpoint(), pubs)
	if err != nil {
		return nil, auditFail(ReasonAuditCheckpointInvalid, "checkpoint is not signed by an audit key recorded for the node: %v", err)
	}
	if want := audit.NodeOrigin(node.SPIFFEID); c.Origin != want {
		return nil, auditFail(ReasonAuditCheckpointInvalid, "checkpoint origin %q is not the node's %q", c.Origin, want)
	}
	if p, err := audit.OpenCheckpoint(prev.Checkpoint, pubs); err == nil && c.Key < p.Key {
		return nil, auditFail(ReasonAuditCheckpointInvalid, "checkpoint is signed by an audit key older than the anchored one's: keys sign in the order they were recorded")
	}
	if c.Size < prev.Size {
		return nil, auditFail(ReasonAuditRollback, "checkpoint of %d entries; the broker anchored one of %d", c.Size, prev.Size)
	}
	if prev.Size > 0 {
		if cp.GetFromSize() != prev.Size {
			return nil, auditFail(ReasonAuditRollback, "consistency proof from %d entries; the broker anchored %d", cp.GetFromSize(), prev.Size)
		}
		if err := audit.VerifyConsistency(prev.Size, c.Size, prev.Root, c.Root, cp.GetConsistency()); err != nil {
			return nil, auditFail(ReasonAuditRollback, "checkpoint of %d entries is not consistent with the anchored one of %d (root %x): the log was rewritten", c.Size, prev.Size, prev.Root)
		}
	}
	if c.Size == prev.Size {
		return nil, nil
	}
	return &store.AuditAnchor{Size: c.Size, Root: c.Root, Checkpoint: bytes.Clone(cp.GetCheckpoint())}, nil
}

// anchoredSize is the size of the node's latest anchored checkpoint, 0 when
// there is none or it cannot be read (the attestation then fails check 4).
func (b *Broker) anchoredSize(ctx context.Context, nodeID string) uint64 {
	a, err := b.store.LatestAuditAnchor(ctx, nodeID)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		b.log.Error("read audit anchor", logNode, nodeID, "err", err)
	}
	return a.Size
}
