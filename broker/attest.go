package broker

import (
	"context"
	"crypto"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
)

const nonceSize = 32

// Challenge issues a single-use nonce to an enrolled node.
func (b *Broker) Challenge(ctx context.Context, req *brokerv1.ChallengeRequest) (*brokerv1.ChallengeResponse, error) {
	node, err := b.node(ctx, req.GetNodeId())
	if err != nil {
		return nil, b.refuse(ctx, "challenge", req.GetNodeId(), err)
	}
	if node.State == store.NodeRevoked {
		return nil, b.deny(ctx, "challenge", node.SPIFFEID, ReasonNodeRevoked, codes.PermissionDenied, "the node was revoked: "+node.StateReason)
	}
	n := store.Nonce{Value: make([]byte, nonceSize), NodeID: req.GetNodeId(), ExpiresAt: time.Now().Add(b.cfg.NonceTTL)}
	if _, err := rand.Read(n.Value); err != nil {
		return nil, b.refuse(ctx, "challenge", n.NodeID, err)
	}
	if err := b.store.PutNonce(ctx, n); err != nil {
		return nil, b.refuse(ctx, "challenge", n.NodeID, err)
	}
	sel := b.appr.quote.QuoteSelection()
	pcrs := make([]int32, len(sel))
	for i, p := range sel {
		pcrs[i] = int32(p)
	}
	return &brokerv1.ChallengeResponse{Nonce: n.Value, Pcrs: pcrs, ExpiresUnix: n.ExpiresAt.Unix(),
		AuditAnchorSize: b.anchoredSize(ctx, node.ID)}, nil
}

func (b *Broker) node(ctx context.Context, id string) (store.Node, error) {
	n, err := b.store.Node(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return n, &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonNodeUnknown, PCR: attest.NoPCR,
			Detail: fmt.Sprintf("node %q is not enrolled", id)}}}
	}
	return n, err
}

// Attest appraises a node's evidence, records the result, and on a pass
// issues the node's X.509-SVID for the TPM key it sent.
func (b *Broker) Attest(ctx context.Context, req *brokerv1.AttestRequest) (*brokerv1.AttestResponse, error) {
	node, err := b.node(ctx, req.GetNodeId())
	if err != nil {
		return nil, b.refuse(ctx, "attest", req.GetNodeId(), err)
	}
	if node.State == store.NodeRevoked {
		return nil, b.deny(ctx, "attest", node.SPIFFEID, ReasonNodeRevoked, codes.PermissionDenied, "the node was revoked: "+node.StateReason)
	}
	now := time.Now()
	res := store.Result{ID: uuid.Must(uuid.NewV7()).String(), NodeID: node.ID, Time: now, Policy: b.appr.policy.Ref()}

	var svidKey crypto.PublicKey
	if err := b.store.ConsumeNonce(ctx, node.ID, req.GetNonce(), now); err != nil {
		nerr := nonceError(err)
		if attest.ReasonOf(nerr) == attest.ReasonInternal {
			return nil, b.refuse(ctx, "attest", node.ID, err)
		}
		res.Findings = attest.FindingsOf(nerr)
	} else {
		a := b.appr.appraise(node.AKPublic, req.GetNonce(), req.GetEvidence().Attest(), req.GetRuntimeLog())
		res.Passed, res.Findings, res.PCRDigest, res.Claims = a.Passed, a.Findings, a.PCRDigest, a.Claims
		if res.Passed && req.GetSvidKey() != nil {
			pub, err := attest.CheckKeyCertification(node.AKPublic, req.GetSvidKey().Params(), req.GetNonce())
			if err != nil {
				res.Passed, res.Findings = false, attest.FindingsOf(err)
			} else {
				svidKey = pub
			}
		}
		if res.Passed {
			if err := b.anchorAudit(ctx, node, &res, req); err != nil { // checkpoint.go
				return nil, b.refuse(ctx, "attest", node.ID, err)
			}
		}
	}
	decision, reason := "pass", ""
	if !res.Passed {
		decision, reason = "fail", string(res.Findings[0].Reason)
	}
	refs := map[string]string{"result": res.ID, "policy": res.Policy}
	if !res.Passed {
		refs["explanation"] = explanation(res.Findings)
	}
	if err := b.record(ctx, "attest", node.SPIFFEID, decision, reason, refs); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the attestation could not be recorded")
	}
	if res.Evidence, err = json.Marshal(newStoredEvidence(req.GetNonce(), req.GetEvidence().Attest(), req.GetRuntimeLog())); err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	if err := b.store.PutResult(ctx, res); err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	state := store.NodeAttested
	if !res.Passed {
		state = store.NodeFailed
	}
	if err := b.setState(ctx, node, state, reason, res.ID); err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	resp := &brokerv1.AttestResponse{ResultId: res.ID, Passed: res.Passed, PcrDigest: res.PCRDigest, Policy: res.Policy}
	for _, f := range res.Findings {
		resp.Findings = append(resp.Findings, brokerv1.NewFinding(f))
	}
	if !res.Passed {
		b.log.Warn("attestation failed", logNode, node.SPIFFEID, logResult, res.ID, logReason, string(res.Findings[0].Reason))
		return resp, nil
	}
	b.log.Info("attestation passed", logNode, node.SPIFFEID, logResult, res.ID, logPolicy, res.Policy)
	if svidKey == nil {
		return resp, nil
	}
	id, err := spiffeid.FromString(node.SPIFFEID)
	if err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	cert, err := b.ca.IssueX509SVID(id, svidKey, b.cfg.SVIDTTL)
	if err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	serial := fmt.Sprintf("%x", cert.SerialNumber)
	if err := b.record(ctx, "svid", node.SPIFFEID, "allow", "", map[string]string{"serial": serial, "result": res.ID}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the SVID could not be recorded")
	}
	if err := b.store.PutSVID(ctx, store.SVID{Serial: serial, NodeID: node.ID, SPIFFEID: node.SPIFFEID,
		ResultID: res.ID, IssuedAt: now, NotAfter: cert.NotAfter}); err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	bundle, err := b.bundleDocument()
	if err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	resp.Svid, resp.Bundle, resp.SvidExpiresUnix = [][]byte{cert.Raw}, bundle, cert.NotAfter.Unix()
	b.log.Info("node SVID issued", logNode, node.SPIFFEID, logSerial, serial, "not_after", cert.NotAfter)
	return resp, nil
}

// explanation is the first finding, in words, as the audit log keeps it.
func explanation(findings []attest.Finding) string {
	const limit = 512
	s := findings[0].String()
	if len(findings) > 1 {
		s += fmt.Sprintf(" (and %d more)", len(findings)-1)
	}
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "") + "…"
	}
	return s
}

// storedEvidence is what the broker keeps of an attestation's evidence:
// with the node's AK (in its node record) it can be appraised again, by
// a dry run of another policy or offline.
type storedEvidence struct {
	Nonce     []byte         `json:"nonce"`
	Quote     []byte         `json:"quote"`     // TPMS_ATTEST
	Signature []byte         `json:"signature"` // TPMT_SIGNATURE by the node's AK
	PCRs      map[int][]byte `json:"pcrs"`      // sha256 bank
	EventLog  []byte         `json:"event_log,omitempty"`
	Runtime   []byte         `json:"runtime_log,omitempty"` // the runtime CEL
}

func newStoredEvidence(nonce []byte, ev attest.Evidence, runtimeLog []byte) storedEvidence {
	return storedEvidence{Nonce: nonce, Quote: ev.Quote, Signature: ev.Signature, PCRs: ev.PCRs, EventLog: ev.EventLog, Runtime: runtimeLog}
}

// Attest returns the evidence for appraisal.
func (s storedEvidence) Attest() attest.Evidence {
	return attest.Evidence{Quote: s.Quote, Signature: s.Signature, PCRs: s.PCRs, EventLog: s.EventLog}
}

func nonceError(err error) error {
	var reason attest.Reason
	switch {
	case errors.Is(err, store.ErrNonceReplayed):
		reason = attest.ReasonNonceReplayed
	case errors.Is(err, store.ErrNonceExpired):
		reason = attest.ReasonNonceExpired
	case errors.Is(err, store.ErrNonceUnknown):
		reason = attest.ReasonNonceUnknown
	default:
		return err
	}
	return &attest.Error{Findings: []attest.Finding{{Reason: reason, PCR: attest.NoPCR, Detail: err.Error()}}, Err: err}
}
