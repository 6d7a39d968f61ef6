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
	"github.com/writ-dev/writ/attest/runtime"
	"github.com/writ-dev/writ/broker/store"
)

const nonceSize = 32

// Challenge issues a single-use nonce to an enrolled node. It is
// unauthenticated: callers are rate-limited per peer address and per node
// (rate_limited), the node ID bounded (evidence_too_large), and a node holds
// at most Limits.MaxNoncesPerNode nonces, a new one evicting the oldest, so
// no caller can grow the nonce table. It holds one of the slots of
// Limits.MaxAttestationsInFlight while it issues the nonce, and is refused
// overloaded at once, before the store is read, when every slot is taken:
// the nonce would most likely be spent on a refused Attest (docs/adr/0054).
func (b *Broker) Challenge(ctx context.Context, req *brokerv1.ChallengeRequest) (*brokerv1.ChallengeResponse, error) {
	if err := b.limits.allowPeer(ctx); err != nil {
		return nil, b.refuse(ctx, "challenge", "", err)
	}
	if err := checkSizes([]field{{"node_id", len(req.GetNodeId()), maxIDBytes}}); err != nil {
		return nil, b.refuse(ctx, "challenge", "", err)
	}
	slot, full := b.admission.challenge()
	if full != "" {
		return nil, b.overloaded(ctx, "challenge", full)
	}
	defer slot.done()
	node, err := b.node(ctx, req.GetNodeId())
	if err != nil {
		return nil, b.refuse(ctx, "challenge", req.GetNodeId(), err)
	}
	if err := b.limits.allowNode(node.ID); err != nil {
		return nil, b.refuse(ctx, "challenge", node.SPIFFEID, err)
	}
	if node.State == store.NodeRevoked {
		return nil, b.deny(ctx, "challenge", node.SPIFFEID, ReasonNodeRevoked, codes.PermissionDenied, "the node was revoked: "+node.StateReason)
	}
	n := store.Nonce{Value: make([]byte, nonceSize), NodeID: req.GetNodeId(), ExpiresAt: time.Now().Add(b.cfg.NonceTTL)}
	if _, err := rand.Read(n.Value); err != nil {
		return nil, b.refuse(ctx, "challenge", n.NodeID, err)
	}
	if err := b.store.IssueNonce(ctx, n, b.cfg.Limits.MaxNoncesPerNode); err != nil { // one commit: put, trim
		return nil, b.refuse(ctx, "challenge", n.NodeID, err)
	}
	sel := b.rules().appr.Quote().QuoteSelection()
	pcrs := make([]int32, len(sel))
	for i, p := range sel {
		pcrs[i] = int32(p)
	}
	return &brokerv1.ChallengeResponse{Nonce: n.Value, Pcrs: pcrs, ExpiresUnix: n.ExpiresAt.Unix(),
		AuditAnchorSize: b.anchoredSize(ctx, node.ID), WantSvidCsr: b.mints()}, nil
}

func (b *Broker) node(ctx context.Context, id string) (store.Node, error) {
	n, err := b.store.Node(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return n, &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonNodeUnknown, PCR: attest.NoPCR,
			Detail: fmt.Sprintf("node %q is not enrolled", id)}}}
	}
	return n, err
}

// Attest verifies a node's evidence, appraises it, records the result, and
// on a pass issues the node's X.509-SVID for the TPM key it sent. It takes
// no client certificate: anyone may call it, for any node, so evidence is
// verified before anything else, and evidence that fails verification
// leaves no trace but its refusal. In order:
//
//  1. the caller's peer address is within its rate: rate_limited
//  2. every field is within its limit (Limits): evidence_too_large
//  3. a slot of Limits.MaxAttestationsInFlight is free, or comes free within
//     Limits.AttestQueueWait, and the caller's deadline leaves at least
//     the recent time of an Attest: overloaded (gRPC Unavailable; not
//     audited, docs/adr/0054). The slot is held until Attest returns.
//  4. the node is enrolled: node_unknown; within its rate: rate_limited;
//     and not revoked: node_revoked
//  5. the quote is the node's TPM's, over the nonce, for the policy's PCR
//     selection, and the PCR values sent are the quoted ones
//     (attest.VerifyEvidence): quote_malformed, ak_invalid,
//     quote_bad_signature, nonce_mismatch, pcr_selection_mismatch,
//     pcr_mismatch; for evidence in go-tpm-tools' format
//     (attest.ParseTPMTools, attest.VerifyTPMTools) also bad_request,
//     evidence_too_large, evidence_malformed and ak_mismatch
//  6. the nonce was issued to this node, is live and unused; it is
//     consumed here: nonce_unknown, nonce_expired, nonce_replayed
//
// A failure of 1–6 is a gRPC error with its reason code, audited without
// the evidence (rate_limited and overloaded are not audited) and counted
// (writ_broker_refusals_total); nothing is stored,
// the node's standing does not change, no event is published, and no dry
// run ever sees the evidence. Verified evidence is then appraised (boot
// log replay, runtime log replay, policy, the SVID key's certification)
// and its result recorded whatever it is: a failed appraisal stores a
// failed result, sets the node failed and tells subscribers. When SPIRE
// mints the SVIDs (spire.mint_svids, docs/adr/0037), the node SVID is
// SPIRE's for the CSR the new key signed: csr_invalid when that CSR is
// absent, of another key or names anything but the node;
// spire_mint_failed when SPIRE does not mint it.
func (b *Broker) Attest(ctx context.Context, req *brokerv1.AttestRequest) (*brokerv1.AttestResponse, error) {
	if err := b.limits.allowPeer(ctx); err != nil {
		return nil, b.refuse(ctx, "attest", "", err)
	}
	if err := b.cfg.Limits.checkAttest(req); err != nil {
		return nil, b.refuse(ctx, "attest", "", err)
	}
	slot, full := b.admission.attest(ctx)
	if full != "" {
		return nil, b.overloaded(ctx, "attest", full)
	}
	defer slot.done() // on every return, and on a panic
	v, err := b.verifyAttest(ctx, req)
	if err != nil {
		return nil, err
	}
	// Verified: from here on the evidence is the node's TPM's, and what
	// follows is recorded whatever it finds.
	res, svidKey := b.appraiseVerified(v)
	if res.Passed {
		if err := b.anchorAudit(ctx, v.node, &res, req, v.ev.PCRs); err != nil { // checkpoint.go
			return nil, b.refuse(ctx, "attest", v.node.ID, err)
		}
	}
	if err := b.recordResult(ctx, v, &res); err != nil {
		return nil, err
	}
	b.metrics.ops.attested(&res)
	resp := &brokerv1.AttestResponse{ResultId: res.ID, Passed: res.Passed, PcrDigest: res.PCRDigest, Policy: res.Policy}
	for _, f := range res.Findings {
		resp.Findings = append(resp.Findings, brokerv1.NewFinding(f))
	}
	if !res.Passed {
		b.log.Warn("attestation failed", logNode, v.node.SPIFFEID, logResult, res.ID, logReason, string(res.Findings[0].Reason))
		return resp, nil
	}
	b.log.Info("attestation passed", logNode, v.node.SPIFFEID, logResult, res.ID, logPolicy, res.Policy)
	if svidKey == nil {
		return resp, nil
	}
	return b.issueNodeSVID(ctx, v.node, res, svidKey, req.GetSvidCsr(), resp)
}

// verifiedAttest is evidence that passed verification (steps 1–6 of
// Attest): its PCR values are the TPM's, for this node, now.
type verifiedAttest struct {
	node       store.Node
	req        *brokerv1.AttestRequest
	ev         attest.Evidence
	runtimeLog []byte // the runtime CEL, from whichever format carried it
	format     string // "" for writ's own evidence, formatTPMTools
	pcrDigest  string
	at         time.Time
}

// formatTPMTools marks evidence in go-tpm-tools' format (docs/adr/0036).
const formatTPMTools = "go-tpm-tools"

// verifyAttest is steps 4–6 of Attest. It changes nothing but the nonce,
// which it consumes last, once the quote is known to be over it.
func (b *Broker) verifyAttest(ctx context.Context, req *brokerv1.AttestRequest) (*verifiedAttest, error) {
	node, err := b.node(ctx, req.GetNodeId())
	if err != nil {
		return nil, b.refuse(ctx, "attest", req.GetNodeId(), err)
	}
	if err := b.limits.allowNode(node.ID); err != nil {
		return nil, b.refuse(ctx, "attest", node.SPIFFEID, err)
	}
	if node.State == store.NodeRevoked {
		return nil, b.deny(ctx, "attest", node.SPIFFEID, ReasonNodeRevoked, codes.PermissionDenied, "the node was revoked: "+node.StateReason)
	}
	v, err := b.verifyEvidence(node, req)
	if err != nil {
		return nil, b.refuse(ctx, "attest", node.SPIFFEID, err)
	}
	v.at = time.Now()
	if err := b.store.ConsumeNonce(ctx, node.ID, req.GetNonce(), v.at); err != nil {
		return nil, b.refuse(ctx, "attest", node.SPIFFEID, nonceError(err))
	}
	return v, nil
}

// verifyEvidence is step 5 of Attest, for evidence in writ's format or in
// go-tpm-tools' (tpm_tools_attestation, never with evidence or
// runtime_log: bad_request): the quote is the node's TPM's, over the
// nonce, and the PCR values sent are the quoted ones.
func (b *Broker) verifyEvidence(node store.Node, req *brokerv1.AttestRequest) (*verifiedAttest, error) {
	v := &verifiedAttest{node: node, req: req}
	raw := req.GetTpmToolsAttestation()
	if len(raw) == 0 {
		v.ev, v.runtimeLog = req.GetEvidence().Attest(), req.GetRuntimeLog()
		var err error
		v.pcrDigest, err = attest.VerifyEvidence(node.AKPublic, req.GetNonce(), v.ev, b.rules().appr.Quote())
		return v, err
	}
	if req.GetEvidence() != nil || len(req.GetRuntimeLog()) > 0 {
		return nil, &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonBadRequest, PCR: attest.NoPCR,
			Detail: "tpm_tools_attestation is sent instead of evidence and runtime_log, not with them"}}}
	}
	t, err := attest.ParseTPMTools(raw)
	if err != nil {
		return nil, err
	}
	if err := checkSizes([]field{
		{"tpm_tools_attestation.event_log", len(t.EventLog()), b.cfg.Limits.EventLogBytes},
		{"tpm_tools_attestation.canonical_event_log", len(t.CanonicalEventLog()), b.cfg.Limits.RuntimeLogBytes},
	}); err != nil {
		return nil, err
	}
	v.format, v.runtimeLog = formatTPMTools, t.CanonicalEventLog()
	v.ev, v.pcrDigest, err = attest.VerifyTPMTools(node.AKPublic, req.GetNonce(), t, b.rules().appr.Quote())
	return v, err
}

// appraiseVerified appraises verified evidence against the policy loaded
// now and, on a pass, checks the SVID key's certification by the AK.
func (b *Broker) appraiseVerified(v *verifiedAttest) (store.Result, crypto.PublicKey) {
	appr := b.rules().appr
	res := store.Result{ID: uuid.Must(uuid.NewV7()).String(), NodeID: v.node.ID, Time: v.at, Policy: appr.Policy().Ref()}
	a := appr.Appraise(v.ev, v.runtimeLog)
	res.Passed, res.Findings, res.PCRDigest, res.Claims = a.Passed, a.Findings, v.pcrDigest, a.Claims
	res.Sel = appr.Quote().Selection()                                               // what VerifyEvidence's digest covers
	if f := checkAgentConfig(v.req.GetAgentConfig(), res.Claims.Runtime); f != nil { // governed.go
		res.Passed, res.Findings = false, append(res.Findings, *f)
	}
	if !res.Passed || v.req.GetSvidKey() == nil {
		return res, nil
	}
	key := v.req.GetSvidKey().Params()
	err := attest.ScanKeyParams(key)
	var pub crypto.PublicKey
	if err == nil {
		pub, err = attest.CheckKeyCertification(v.node.AKPublic, key, v.req.GetNonce())
	}
	if err != nil {
		res.Passed, res.Findings = false, attest.FindingsOf(err)
		return res, nil
	}
	return res, pub
}

// recordResult audits a result of verified evidence, stores it with its
// evidence, and sets the node's standing (which tells subscribers).
func (b *Broker) recordResult(ctx context.Context, v *verifiedAttest, res *store.Result) error {
	decision, reason := "pass", ""
	refs := map[string]string{"result": res.ID, "policy": res.Policy}
	if !res.Passed {
		decision, reason = "fail", string(res.Findings[0].Reason)
		refs["explanation"] = explanation(res.Findings)
	}
	if err := b.record(ctx, "attest", v.node.SPIFFEID, decision, reason, refs); err != nil {
		return brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the attestation could not be recorded")
	}
	var err error
	if res.Evidence, err = json.Marshal(newStoredEvidence(v.req, v.ev, v.runtimeLog, v.format)); err != nil {
		return b.refuse(ctx, "attest", v.node.ID, err)
	}
	state := store.NodeAttested
	if !res.Passed {
		state = store.NodeFailed
	}
	// The result and the standing it gives, in one commit.
	if err := b.putResultState(ctx, v.node, store.ResultState{Result: *res, State: state, Reason: reason}); err != nil {
		return b.refuse(ctx, "attest", v.node.ID, err)
	}
	return nil
}

// issueNodeSVID issues, records and returns the node's X.509-SVID on a
// passing result.
func (b *Broker) issueNodeSVID(ctx context.Context, node store.Node, res store.Result, key crypto.PublicKey, csr []byte, resp *brokerv1.AttestResponse) (*brokerv1.AttestResponse, error) {
	id, err := spiffeid.FromString(node.SPIFFEID)
	if err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	chain, err := b.issueNodeChain(ctx, node, id, key, csr)
	if err != nil {
		return nil, err
	}
	cert := chain[0]
	serial := fmt.Sprintf("%x", cert.SerialNumber)
	if err := b.record(ctx, "svid", node.SPIFFEID, "allow", "", map[string]string{"serial": serial, "result": res.ID}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the SVID could not be recorded")
	}
	if err := b.store.PutSVID(ctx, store.SVID{Serial: serial, NodeID: node.ID, SPIFFEID: node.SPIFFEID,
		ResultID: res.ID, IssuedAt: res.Time, NotAfter: cert.NotAfter}); err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	bundle, err := b.bundleDocument()
	if err != nil {
		return nil, b.refuse(ctx, "attest", node.ID, err)
	}
	resp.Svid, resp.Bundle, resp.SvidExpiresUnix = rawCerts(chain), bundle, cert.NotAfter.Unix()
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
	// Format is "go-tpm-tools" for evidence that came in go-tpm-tools'
	// format: Quote is then its sha256 quote, over every PCR in PCRs.
	Format string `json:"format,omitempty"`
	// AgentConfig is the configuration the agent sent (checked against
	// the runtime log's config event when shown), GovernedReport what it
	// reported of its exec guard (docs/adr/0043).
	AgentConfig    *runtime.AgentConfig `json:"agent_config,omitempty"`
	GovernedReport *storedReport        `json:"governed_report,omitempty"`
}

func newStoredEvidence(req *brokerv1.AttestRequest, ev attest.Evidence, runtimeLog []byte, format string) storedEvidence {
	s := storedEvidence{Nonce: req.GetNonce(), Quote: ev.Quote, Signature: ev.Signature, PCRs: ev.PCRs, EventLog: ev.EventLog,
		Runtime: runtimeLog, Format: format, GovernedReport: newStoredReport(req.GetGovernedReport())}
	if c := req.GetAgentConfig(); c != nil {
		cfg := c.Runtime()
		s.AgentConfig = &cfg
	}
	return s
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
