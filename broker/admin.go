package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/audit"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Files of the admin identity in the data directory: the X.509-SVID of
// spiffe://<trust-domain>/admin, for `writ node` on the broker's host.
const (
	AdminCertFile = "admin.crt"
	AdminKeyFile  = "admin.key" // 0600: whoever reads it is an operator
)

// adminSVIDLifetime is how long the admin SVID written at start lives.
const adminSVIDLifetime = 24 * time.Hour

// writeAdminSVID issues the admin SVID for a fresh key and writes both to
// the data directory (the key 0600).
func (b *Broker) writeAdminSVID() error {
	key, err := identity.NewKey()
	if err != nil {
		return err
	}
	chain, err := b.ca.IssueX509SVIDChain(identity.AdminID(b.td), key.Public(), adminSVIDLifetime)
	if err != nil {
		return fmt.Errorf("broker: admin SVID: %w", err)
	}
	if err := identity.WriteKey(filepath.Join(b.cfg.DataDir, AdminKeyFile), key); err != nil {
		return fmt.Errorf("broker: admin SVID: %w", err)
	}
	if err := identity.WriteCerts(filepath.Join(b.cfg.DataDir, AdminCertFile), chain...); err != nil {
		return fmt.Errorf("broker: admin SVID: %w", err)
	}
	return nil
}

// renewAdminSVID rewrites the admin SVID at half its lifetime, so that
// `writ node` keeps working against a long-running broker.
func (b *Broker) renewAdminSVID(ctx context.Context) {
	t := time.NewTicker(adminSVIDLifetime / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := b.writeAdminSVID(); err != nil {
				b.log.Error("renew admin SVID", "err", err)
			}
		}
	}
}

// admin serves the Admin API to the admin SPIFFE ID only.
type admin struct {
	brokerv1.UnimplementedAdminServer
	b *Broker
}

func (a *admin) authorize(ctx context.Context) error {
	_, id, err := a.b.caller(ctx)
	if err != nil {
		return a.b.deny(ctx, "admin", "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	if id != identity.AdminID(a.b.td) {
		return a.b.deny(ctx, "admin", id.String(), ReasonNotAdmin, codes.PermissionDenied, "only "+identity.AdminID(a.b.td).String()+" may call the admin API")
	}
	return nil
}

// ReasonNotAdmin refuses an admin call from any other SPIFFE ID.
const ReasonNotAdmin = "not_admin"

func (a *admin) ListNodes(ctx context.Context, _ *brokerv1.ListNodesRequest) (*brokerv1.ListNodesResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	nodes, err := a.b.store.Nodes(ctx)
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", "", err)
	}
	resp := &brokerv1.ListNodesResponse{}
	for _, n := range nodes {
		info, err := a.info(ctx, n)
		if err != nil {
			return nil, a.b.refuse(ctx, "admin", n.ID, err)
		}
		resp.Nodes = append(resp.Nodes, info)
	}
	return resp, nil
}

func (a *admin) GetNode(ctx context.Context, req *brokerv1.GetNodeRequest) (*brokerv1.NodeInfo, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	n, err := a.resolveNode(ctx, req.GetNodeId())
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", req.GetNodeId(), err)
	}
	return a.info(ctx, n)
}

// RevokeNode revokes a node for good: its attestations, SVIDs and writs
// are refused from now on, subscribers are told, and it is audited.
func (a *admin) RevokeNode(ctx context.Context, req *brokerv1.RevokeNodeRequest) (*brokerv1.NodeInfo, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	n, err := a.resolveNode(ctx, req.GetNodeId())
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", req.GetNodeId(), err)
	}
	reason := strings.TrimSpace(req.GetReason())
	if reason == "" {
		reason = "revoked by an operator"
	}
	if err := a.b.setState(ctx, n, store.NodeRevoked, reason, ""); err != nil {
		return nil, a.b.refuse(ctx, "admin", n.ID, err)
	}
	if n, err = a.b.store.Node(ctx, n.ID); err != nil {
		return nil, a.b.refuse(ctx, "admin", n.ID, err)
	}
	return a.info(ctx, n)
}

// NodeEvidence exports one attestation's stored evidence with what is
// needed to appraise it again offline (the node's AK and EK) and to verify
// the node's audit log against what the broker attested (its recorded audit
// keys and anchored checkpoint).
func (a *admin) NodeEvidence(ctx context.Context, req *brokerv1.NodeEvidenceRequest) (*brokerv1.NodeEvidenceResponse, error) {
	if err := a.authorize(ctx); err != nil {
		return nil, err
	}
	n, err := a.resolveNode(ctx, req.GetNodeId())
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", req.GetNodeId(), err)
	}
	var res store.Result
	if id := req.GetResultId(); id != "" {
		res, err = a.b.store.Result(ctx, id)
		if err == nil && res.NodeID != n.ID {
			err = store.ErrNotFound
		}
	} else {
		res, err = a.b.store.LatestResult(ctx, n.ID)
	}
	if errors.Is(err, store.ErrNotFound) {
		return nil, brokerv1.Refuse(codes.NotFound, "result_unknown", "no such attestation result for this node")
	}
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", n.ID, err)
	}
	keys, anchor, err := a.auditEvidence(ctx, n.ID)
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", n.ID, err)
	}
	raw, err := json.MarshalIndent(ExportedEvidence{
		Node: n.SPIFFEID, NodeID: n.ID, AKPublic: n.AKPublic, EKPublic: n.EKPublic, EKCert: n.EKCert,
		Result: res.ID, Time: res.Time, Passed: res.Passed, Policy: res.Policy, PCRDigest: res.PCRDigest,
		Findings: res.Findings, Claims: res.Claims, Evidence: json.RawMessage(res.Evidence),
		AuditKeys: keys, AuditAnchor: anchor,
	}, "", "  ")
	if err != nil {
		return nil, a.b.refuse(ctx, "admin", n.ID, err)
	}
	return &brokerv1.NodeEvidenceResponse{EvidenceJson: raw}, nil
}

// ExportedEvidence is `writ node evidence`: one attestation, self-contained.
type ExportedEvidence struct {
	Node      string          `json:"node"`
	NodeID    string          `json:"node_id"`
	AKPublic  []byte          `json:"ak_public"`
	EKPublic  []byte          `json:"ek_public"`
	EKCert    []byte          `json:"ek_certificate,omitempty"`
	Result    string          `json:"result"`
	Time      time.Time       `json:"time"`
	Passed    bool            `json:"passed"`
	Policy    string          `json:"policy"`
	PCRDigest string          `json:"pcr_digest"`
	Findings  any             `json:"findings"`
	Claims    any             `json:"claims"`
	Evidence  json.RawMessage `json:"evidence"` // {"nonce", "quote", "signature", "pcrs", "event_log"}

	// What `writ audit verify --evidence` checks the node's own audit log
	// against (audit.Evidence): the audit keys the broker recorded, each
	// with the nonce and boot PCR values of the passing attestation it was
	// certified in, and the node's latest anchored checkpoint.
	AuditKeys   []audit.AttestedKey `json:"audit_keys"`
	AuditAnchor string              `json:"audit_anchor,omitempty"`
}

// auditEvidence is the audit part of a node's exported evidence.
func (a *admin) auditEvidence(ctx context.Context, nodeID string) ([]audit.AttestedKey, string, error) {
	return store.AuditEvidence(ctx, a.b.store, nodeID)
}

func (a *admin) info(ctx context.Context, n store.Node) (*brokerv1.NodeInfo, error) {
	info := &brokerv1.NodeInfo{NodeId: n.ID, SpiffeId: n.SPIFFEID, State: string(n.State), EnrolledUnix: n.EnrolledAt.Unix()}
	res, err := a.b.store.LatestResult(ctx, n.ID)
	if errors.Is(err, store.ErrNotFound) {
		return info, nil
	}
	if err != nil {
		return nil, err
	}
	claims, err := json.Marshal(res.Claims)
	if err != nil {
		return nil, err
	}
	info.ResultId, info.Passed, info.ResultUnix, info.Policy, info.PcrDigest, info.ClaimsJson =
		res.ID, res.Passed, res.Time.Unix(), res.Policy, res.PCRDigest, claims
	for _, f := range res.Findings {
		info.Findings = append(info.Findings, brokerv1.NewFinding(f))
	}
	if info.Governed, info.GovernedReport, err = governedOf(res); err != nil { // governed.go
		return nil, err
	}
	return info, nil
}

// nodeKey accepts a node's EK fingerprint or its SPIFFE ID.
func nodeKey(s string) string {
	if i := strings.LastIndex(s, "/node/"); strings.HasPrefix(s, "spiffe://") && i >= 0 {
		return s[i+len("/node/"):]
	}
	return s
}
