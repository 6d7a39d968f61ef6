package broker

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
)

// Reason codes of workload SVID issuance.
const (
	ReasonEntryNotForNode   = "entry_not_for_node"
	ReasonSelectorsMismatch = "selectors_mismatch"
	ReasonCSRInvalid        = "csr_invalid"
	ReasonAudienceMissing   = "audience_missing"
)

// opWorkload names the workload RPCs' refusals (audit kind svid).
const opWorkload = "workload"

// Bounds of a workload request.
const (
	maxWorkloadCSR      = 4096
	maxRequestSelectors = 256
)

// standingNode is a calling node in good standing, with the latest passing
// result that puts it there.
type standingNode struct {
	leaf *x509.Certificate // the caller's SVID leaf
	id   spiffeid.ID
	node store.Node
	res  store.Result
	// claims are res's claims by dotted name (flatClaims), decoded once,
	// at the first entry whose parent names a claim.
	claims func() map[string]string
	// foreign: the caller is a workload of a federated trust domain; id
	// is that domain's ID and res stands for its bundle (foreignStanding).
	foreign bool
}

// inGoodStanding checks the mTLS caller of RequestWrit or a workload RPC
// (op) is a node in good standing, in order:
//
//  1. the caller presents an X.509-SVID of the trust domain: caller_unauthenticated;
//  2. it is a node SVID of this trust domain: caller_not_node;
//  3. the node is not revoked (node_revoked) nor stale (node_stale);
//  4. its latest result exists (attestation_missing), passed
//     (attestation_failed) and is fresh (attestation_stale);
//  5. that result was appraised under the policy now loaded: attestation_policy_changed.
func (b *Broker) inGoodStanding(ctx context.Context, op string) (standingNode, error) {
	leaf, id, err := b.caller(ctx)
	if err != nil {
		return standingNode{}, b.deny(ctx, op, "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	fp, ok := strings.CutPrefix(id.Path(), "/node/")
	if !ok || id.TrustDomain() != b.td {
		return standingNode{}, b.deny(ctx, op, id.String(), ReasonCallerNotNode, codes.PermissionDenied, "only node SVIDs of this trust domain may call this")
	}
	node, res, err := b.nodeStanding(ctx, op, id.String(), fp)
	if err != nil {
		return standingNode{}, err
	}
	return standingNode{leaf: leaf, id: id, node: node, res: res,
		claims: sync.OnceValue(func() map[string]string { return flatClaims(res) })}, nil
}

// nodeStanding checks that the node fp is in good standing, refusals
// audited under subject (the caller whose standing rests on the node's),
// in order: checks 3 to 5 of inGoodStanding. Both the node's own calls and
// a gateway's calls on behalf of a caller whose SVID the node holds
// (callerSubject, gateway.go) go through it.
func (b *Broker) nodeStanding(ctx context.Context, op, subject, fp string) (store.Node, store.Result, error) {
	node, res, found, err := b.store.NodeStanding(ctx, fp) // one read: the node and its latest verdict
	if err != nil {
		return store.Node{}, store.Result{}, b.refuse(ctx, op, fp, err)
	}
	switch node.State {
	case store.NodeRevoked:
		return store.Node{}, store.Result{}, b.deny(ctx, op, subject, ReasonNodeRevoked, codes.PermissionDenied, "the node was revoked: "+node.StateReason)
	case store.NodeStale:
		return store.Node{}, store.Result{}, b.deny(ctx, op, subject, ReasonNodeStale, codes.PermissionDenied, "the node stopped attesting")
	}
	appr := b.rules().appr
	switch {
	case !found:
		return store.Node{}, store.Result{}, b.deny(ctx, op, subject, ReasonAttestationMissing, codes.PermissionDenied, "the node has never attested")
	case !res.Passed:
		return store.Node{}, store.Result{}, b.deny(ctx, op, subject, ReasonAttestationFailed, codes.PermissionDenied,
			fmt.Sprintf("the node's latest attestation (%s) failed: %s", res.ID, res.Findings[0].Reason))
	case time.Since(res.Time) > b.cfg.Writ.MaxAttestationAge:
		return store.Node{}, store.Result{}, b.deny(ctx, op, subject, ReasonAttestationStale, codes.PermissionDenied,
			fmt.Sprintf("the node's latest passing attestation is %s old; at most %s is allowed", time.Since(res.Time).Round(time.Second), b.cfg.Writ.MaxAttestationAge))
	case res.Policy != appr.Policy().Ref() || !slices.Equal(res.Sel, appr.Quote().Selection()):
		return store.Node{}, store.Result{}, b.deny(ctx, op, subject, ReasonAttestationPolicyChanged, codes.PermissionDenied,
			fmt.Sprintf("the node's latest attestation was appraised under %s over PCRs %v; %s over PCRs %v is loaded: attest again",
				res.Policy, res.Sel, appr.Policy().Ref(), appr.Quote().Selection()))
	}
	return node, res, nil
}

// standingUntil is when the node's standing lapses unless it attests again.
func (b *Broker) standingUntil(n standingNode) time.Time {
	return n.res.Time.Add(b.cfg.Writ.MaxAttestationAge)
}

// parentMatches reports whether an entry's parent names the node: its
// exact SPIFFE ID; "policy:<id>" (or "<id>@<version>") of the policy its
// latest passing result was appraised under; or "claim:<name>=<value>", a
// claim of that result that exists and has that value (an absent claim
// never matches).
func parentMatches(parent string, n standingNode) bool {
	if p, ok := strings.CutPrefix(parent, "policy:"); ok {
		if strings.Contains(p, "@") {
			return p == n.res.Policy
		}
		id, _, _ := strings.Cut(n.res.Policy, "@")
		return p == id
	}
	if c, ok := strings.CutPrefix(parent, "claim:"); ok {
		name, want, _ := strings.Cut(c, "=")
		got, ok := n.claims()[name]
		return ok && got == want
	}
	return parent == n.id.String()
}

// flatClaims are a result's claims by dotted name (boot.secureboot.enabled),
// scalars only, in their JSON text (strings unquoted).
func flatClaims(res store.Result) map[string]string {
	raw, err := json.Marshal(res.Claims)
	if err != nil {
		return nil
	}
	var doc any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&doc); err != nil {
		return nil
	}
	out := map[string]string{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				if prefix != "" {
					k = prefix + "." + k
				}
				walk(k, c)
			}
		case string:
			out[prefix] = v
		case bool:
			out[prefix] = strconv.FormatBool(v)
		case json.Number:
			out[prefix] = v.String()
		}
	}
	walk("", doc)
	return out
}

// NodeEntries returns the entries whose parent matches the calling node,
// when it is in good standing (inGoodStanding); none otherwise.
func (b *Broker) NodeEntries(ctx context.Context, _ *brokerv1.NodeEntriesRequest) (*brokerv1.NodeEntriesResponse, error) {
	n, err := b.inGoodStanding(ctx, opWorkload)
	if err != nil {
		return nil, err
	}
	all, err := b.store.Entries(ctx)
	if err != nil {
		return nil, b.refuse(ctx, opWorkload, n.node.ID, err)
	}
	resp := &brokerv1.NodeEntriesResponse{FederatedBundles: b.fed.freshDocuments()}
	for _, e := range all {
		if parentMatches(e.Parent, n) {
			resp.Entries = append(resp.Entries, entryProto(e))
		}
	}
	return resp, nil
}

// workloadEntry is the entry a workload asks for on a node in good
// standing, checked in order after inGoodStanding, refusals audited as op's
// (opWorkload for SVIDs, "writ" for a writ's workload subject):
//
//  6. the entry exists: entry_unknown;
//  7. its parent matches the node (parentMatches): entry_not_for_node;
//  8. every selector of the entry is among those the agent observed of
//     the workload: selectors_mismatch.
func (b *Broker) workloadEntry(ctx context.Context, op string, n standingNode, id string, observed []*brokerv1.Selector) (store.Entry, error) {
	e, err := b.store.Entry(ctx, id)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return e, b.deny(ctx, op, n.id.String(), ReasonEntryUnknown, codes.NotFound, "no such entry")
	case err != nil:
		return e, b.refuse(ctx, op, n.node.ID, err)
	case !parentMatches(e.Parent, n):
		return e, b.deny(ctx, op, n.id.String(), ReasonEntryNotForNode, codes.PermissionDenied,
			"entry "+e.ID+" is not registered for this node")
	}
	if len(observed) > maxRequestSelectors {
		return e, b.deny(ctx, op, n.id.String(), ReasonSelectorsMismatch, codes.InvalidArgument, "too many selectors")
	}
	seen := make(map[string]bool, len(observed))
	for _, s := range observed {
		seen[s.GetType()+":"+s.GetValue()] = true
	}
	for _, s := range e.Selectors {
		if !seen[s] {
			return e, b.deny(ctx, op, n.id.String(), ReasonSelectorsMismatch, codes.PermissionDenied,
				"the workload does not match entry "+e.ID)
		}
	}
	return e, nil
}

// workloadTTL is an SVID's lifetime for an entry: the entry's TTL (or the
// broker's svid_ttl), at most svid_ttl, and never past the node's standing.
func (b *Broker) workloadTTL(n standingNode, e store.Entry, now time.Time) time.Duration {
	ttl := b.cfg.SVIDTTL
	if e.TTL > 0 && e.TTL < ttl {
		ttl = e.TTL
	}
	return min(ttl, b.standingUntil(n).Sub(now))
}

// parseWorkloadCSR returns the public key of a PKCS#10 CSR whose
// signature verifies and whose key is ECDSA P-256. Its subject and SANs
// are ignored: the entry says what the SVID names.
func parseWorkloadCSR(der []byte) (*ecdsa.PublicKey, error) {
	if len(der) == 0 || len(der) > maxWorkloadCSR {
		return nil, fmt.Errorf("broker: CSR: %d bytes, want 1 to %d", len(der), maxWorkloadCSR)
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("broker: CSR: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("broker: CSR: %w", err)
	}
	pub, ok := csr.PublicKey.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("broker: CSR: the key is not ECDSA P-256")
	}
	return pub, nil
}

// SignWorkloadSVID issues an X.509-SVID for an entry to a workload on the
// calling node. Checks, in order: 1–5 of inGoodStanding, 6–8 of
// workloadEntry, then
//
//  9. the CSR parses, its signature verifies and its key is ECDSA P-256: csr_invalid;
//  10. when SPIRE mints (spire.mint_svids), the CSR names the entry's SPIFFE
//     ID alone and only DNS names the entry lists: csr_invalid; and SPIRE
//     mints it: spire_mint_failed.
//
// The SVID names the entry's SPIFFE ID and DNS names and lives
// workloadTTL; it is audited (kind svid, refs entry, node, serial, result)
// and recorded in the store's SVIDs with the node it was issued through.
func (b *Broker) SignWorkloadSVID(ctx context.Context, req *brokerv1.SignWorkloadSVIDRequest) (*brokerv1.SignWorkloadSVIDResponse, error) {
	n, err := b.inGoodStanding(ctx, opWorkload)
	if err != nil {
		return nil, err
	}
	e, err := b.workloadEntry(ctx, opWorkload, n, req.GetEntryId(), req.GetSelectors())
	if err != nil {
		return nil, err
	}
	id, err := spiffeid.FromString(e.SPIFFEID)
	if err != nil {
		return nil, b.refuse(ctx, opWorkload, n.node.ID, err)
	}
	chain, err := b.issueWorkloadChain(ctx, n, e, id, req.GetCsr(), b.workloadTTL(n, e, time.Now())) // spiremint.go
	if err != nil {
		return nil, err
	}
	cert := chain[0]
	serial := fmt.Sprintf("%x", cert.SerialNumber)
	if err := b.record(ctx, "svid", e.SPIFFEID, "allow", "", map[string]string{
		"entry": e.ID, "node": n.id.String(), "serial": serial, "result": n.res.ID}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the SVID could not be recorded")
	}
	// Recorded with the node it was issued through, so that a workload's
	// SVID leads back to its node and the result it stood on.
	if err := b.store.PutSVID(ctx, store.SVID{Serial: serial, NodeID: n.node.ID, SPIFFEID: e.SPIFFEID,
		ResultID: n.res.ID, IssuedAt: time.Now(), NotAfter: cert.NotAfter}); err != nil {
		return nil, b.refuse(ctx, opWorkload, n.node.ID, err)
	}
	bundle, err := b.bundleDocument()
	if err != nil {
		return nil, b.refuse(ctx, opWorkload, n.node.ID, err)
	}
	b.log.Info("workload SVID issued", logNode, n.id.String(), "entry", e.ID, "spiffe_id", e.SPIFFEID, logSerial, serial, "not_after", cert.NotAfter)
	return &brokerv1.SignWorkloadSVIDResponse{Svid: rawCerts(chain), Bundle: bundle, ExpiresUnix: cert.NotAfter.Unix(),
		FederatedBundles: b.fed.freshDocuments()}, nil
}
