package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Reasons the broker refuses to issue or consume a writ.
const (
	ReasonCallerUnauthenticated = "caller_unauthenticated"
	ReasonCallerNotNode         = "caller_not_node"
	ReasonAttestationMissing    = "attestation_missing"
	ReasonAttestationFailed     = "attestation_failed"
	ReasonAttestationStale      = "attestation_stale"
	ReasonActionInvalid         = "action_invalid"
	ReasonActionDenied          = "action_denied"
	ReasonWritReplayed          = "writ_replayed"
	ReasonNotAudience           = "not_audience"
	ReasonNodeRevoked           = "node_revoked"
	ReasonNodeStale             = "node_stale"
)

// writSigner is the broker's writ signing key and its key ID.
type writSigner struct {
	key   crypto.Signer
	kid   string
	pub   *ecdsa.PublicKey
	close func() error
}

// loadWritSigner loads the writ key, or creates it: a file (mode 0600), or
// a key inside the broker host's TPM, which stays open while the broker
// runs.
func loadWritSigner(cfg WritConfig) (*writSigner, error) {
	if cfg.Signer == "tpm" {
		return loadTPMWritSigner(cfg)
	}
	key, err := identity.LoadOrCreateKey(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("broker: writ key: %w", err)
	}
	return newWritSigner(key, func() error { return nil })
}

func loadTPMWritSigner(cfg WritConfig) (*writSigner, error) {
	tpm, err := prover.Open(cfg.TPM, "")
	if err != nil {
		return nil, fmt.Errorf("broker: writ key: %w", err)
	}
	blob, err := os.ReadFile(cfg.Key)
	if errors.Is(err, fs.ErrNotExist) {
		if blob, err = tpm.NewSigningKey(); err == nil {
			err = identity.WriteFile(cfg.Key, blob, 0o600)
		}
	}
	if err != nil {
		tpm.Close()
		return nil, fmt.Errorf("broker: writ key: %w", err)
	}
	key, err := tpm.LoadSigningKey(blob)
	if err != nil {
		tpm.Close()
		return nil, fmt.Errorf("broker: writ key: %w", err)
	}
	return newWritSigner(key, func() error { return errors.Join(key.Close(), tpm.Close()) })
}

func newWritSigner(key crypto.Signer, closeFn func() error) (*writSigner, error) {
	pub, ok := key.Public().(*ecdsa.PublicKey)
	if !ok {
		return nil, errors.Join(errors.New("broker: writ key is not an ECDSA P-256 key"), closeFn())
	}
	return &writSigner{key: key, kid: artifact.KeyID(pub), pub: pub, close: closeFn}, nil
}

func (w *writSigner) keySet() artifact.KeySet { return artifact.KeySet{w.kid: w.pub} }

// signEvent signs a node event for webhooks.
func (b *Broker) signEvent(payload []byte) (string, error) {
	return artifact.SignPayload(b.writ.key, b.writ.kid, "writ-event+jwt", payload)
}

// bundleDocument is the trust bundle the broker publishes: the CA's roots
// (and SPIRE's, when SPIRE mints) as the SPIFFE X.509 authorities, the JWT-SVID key as the JWT authority
// ("use": "jwt-svid"), and the writ keys as "use": "writ" entries. It is
// built by New and rebuilt when the CA's roots change (rotateCA).
func (b *Broker) bundleDocument() ([]byte, error) {
	b.bundleMu.RLock()
	defer b.bundleMu.RUnlock()
	return b.bundleDoc, nil
}

// buildBundle builds the bundle document. Its spiffe_sequence numbers its
// content: the store maps the sha256 of the document as generated before
// numbering (the X.509 authorities, the JWT and writ keys, the refresh
// hint) to a number that survives restarts and grows when a key changes (a
// new CA, a new writ or JWT-SVID key).
func (b *Broker) buildBundle() ([]byte, error) {
	bundle := b.x509Bundle()
	if err := b.jwt.addTo(bundle); err != nil {
		return nil, err
	}
	if err := b.addPeerJWTKeys(bundle); err != nil {
		return nil, err
	}
	content, err := b.bundleJSON(bundle)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(content)
	seq, err := b.store.BundleSequence(context.Background(), sum[:])
	if err != nil {
		return nil, fmt.Errorf("broker: bundle sequence: %w", err)
	}
	bundle.SetSequenceNumber(seq)
	return b.bundleJSON(bundle)
}

func (b *Broker) bundleJSON(bundle *spiffebundle.Bundle) ([]byte, error) {
	raw, err := bundle.Marshal()
	if err != nil {
		return nil, fmt.Errorf("broker: marshal bundle: %w", err)
	}
	if raw, err = artifact.AddToBundle(raw, b.writKeys()); err != nil || !b.hasPeers() {
		return raw, err
	}
	// Replicas number the same keys alike only if they list them alike.
	return sortedBundle(raw)
}

// caller returns the verified X.509-SVID leaf of an mTLS caller.
func (b *Broker) caller(ctx context.Context) (*x509.Certificate, spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, spiffeid.ID{}, errors.New("no peer")
	}
	tlsInfo, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(tlsInfo.State.PeerCertificates) == 0 {
		return nil, spiffeid.ID{}, errors.New("the caller presented no X.509-SVID")
	}
	chain := tlsInfo.State.PeerCertificates
	// The handshake verified the chain to the bundle; verify again here so
	// this handler never depends on transport configuration alone (from
	// the cache when the chain and the trusted authorities are the same,
	// trust.go).
	id, err := b.verifySVID(chain)
	if err != nil {
		return nil, spiffeid.ID{}, err
	}
	return chain[0], id, nil
}

// RequestWrit issues a writ for one action to an mTLS caller whose node has
// a fresh passing attestation, when the action policy allows it; its
// subject is the node, or (req.workload) a workload of the node. A request
// naming req.caller is a listed gateway's for its caller and is decided by
// requestForCaller (gateway.go) instead. Checks, in order, each refusal
// with its reason code and audited as writ-deny:
//
//  1. the caller is a node in good standing (inGoodStanding, workload.go):
//     caller_unauthenticated, caller_not_node, node_revoked, node_stale,
//     attestation_missing, attestation_failed, attestation_stale, and
//     attestation_policy_changed (the result's policy and PCR selection are
//     the loaded ones, so att.pcrs and att.sel, both the result's, belong
//     together);
//  2. exactly one of exec, http and mcp is set, and that action is well
//     formed (for mcp, its arguments a JSON object RFC 8785 can
//     canonicalize: the detail names the jcs reason): action_invalid;
//  3. with a workload subject (workloadSubject, subject.go): the entry
//     exists (entry_unknown), its parent matches the node
//     (entry_not_for_node), its selectors are all among those observed
//     (selectors_mismatch); the workload SVID verifies against this
//     broker's CA and is not expired (workload_svid_invalid) and names the
//     entry's SPIFFE ID (workload_svid_mismatch); the action is among the
//     entry's actions (entry_action_denied);
//  4. a rule for the subject (the node's SPIFFE ID, or the entry's) allows
//     the action — for a script asked for from a governed cgroup
//     (governed_cgroup, set by the node agent), with its interpreter in
//     governed_interpreters: env_dangerous, action_denied,
//     interpreter_not_governed;
//  5. the audience is the caller's own node, or one the rule allowing the
//     action lists: audience_denied;
//  6. a parent (checkParent, lineage.go) is a writ this broker issued on
//     the same node (parent_invalid), not revoked (parent_revoked), not
//     expired — or, named by the node agent from the caller's ancestry,
//     expired less than writ.lineage_retention ago (parent_expired); the
//     new writ is at most writ.max_depth deep (lineage_too_deep); a rule
//     allowing the action is within the parent's scope (the first such
//     rule is the writ's): parent_scope_denied;
//  7. when the rules allowing the action at that audience all require a
//     person's approval (approvalNeeded, approval.go): an approval of
//     exactly this action, subject, node, audience, single use, rules
//     version and node policy, approved and unused, is spent on the writ
//     (waiting up to approval_wait_seconds for a decision; approved while
//     waiting, the request is checked again from 1 before the approval is
//     spent): approval_pending, approval_denied, approval_expired, each
//     naming the approval in its metadata (approval_id).
//
// The writ's sub is the subject, its cnf the thumbprint of the subject's
// SVID leaf (the node's, or the workload's given), its att the node's
// result. It is recorded (jti, subject, node, expiry, parent, rule,
// scope, depth), so that it can be named as a parent and revoked with its
// ancestors, and audited (writ-issue; for a workload refs node and
// entry; approval, the approval spent on it; governed, the caller's
// governed cgroup). A parent revoked while this
// writ was signed: parent_revoked, and the writ is not returned.
func (b *Broker) RequestWrit(ctx context.Context, req *brokerv1.WritRequest) (*brokerv1.WritResponse, error) {
	if chain, _, ok := b.foreignPeer(ctx); ok {
		return b.requestForeign(ctx, req, chain) // a workload of a federated trust domain (foreign.go)
	}
	if req.GetCaller() != nil {
		return b.requestForCaller(ctx, req) // a gateway, for its caller (gateway.go)
	}
	n, err := b.inGoodStanding(ctx, "writ") // check 1
	if err != nil {
		return nil, err
	}
	node, res := n.id, n.res
	act, err := requestAction(req) // check 2
	var digest string
	if err == nil {
		digest, err = act.Digest()
	}
	if err != nil {
		return nil, b.deny(ctx, "writ", node.String(), ReasonActionInvalid, codes.InvalidArgument, err.Error())
	}
	sub := nodeSubject(n)
	if req.GetWorkload() != nil { // check 3
		if sub, err = b.workloadSubject(ctx, n, req.GetWorkload(), act); err != nil {
			return nil, err
		}
	}
	// The node agent, the attested enforcement point, says when the
	// process asking is in a governed cgroup (docs/adr/0043).
	governed := req.GetGovernedCgroup() != ""
	rl, r := b.rules().actions.checkWithin(sub.id, act, governed, nil) // check 4
	if r != nil {
		return nil, b.deny(ctx, "writ", node.String(), r.reason, codes.PermissionDenied, r.detail)
	}
	aud := req.GetAudience()
	if aud == "" {
		aud = node.String()
	}
	if !b.rules().aud.allows(sub.id, node, act, aud) { // check 5
		return nil, b.deny(ctx, "writ", node.String(), ReasonAudienceDenied, codes.PermissionDenied,
			fmt.Sprintf("no rule allowing this action lets its writ name audience %q", aud))
	}
	now := time.Now()
	lin, err := b.checkParent(ctx, node, sub.id, act, governed, req.GetParent(), now) // check 6
	if err != nil {
		return nil, err
	}
	if lin.rule != nil {
		rl = lin.rule
	}
	jti := uuid.NewString()
	approval, err := b.checkApproval(ctx, req, sub, node, res, act, digest, aud, req.GetOnce(), jti) // check 7
	if errors.Is(err, errApprovalDecided) {
		return b.recheckApproved(ctx, req)
	}
	if err != nil {
		return nil, err
	}
	var refs map[string]string
	if sub.entry != "" {
		refs = map[string]string{"node": node.String(), "entry": sub.entry}
	}
	if governed {
		if refs == nil {
			refs = map[string]string{}
		}
		refs["governed"] = req.GetGovernedCgroup()
	}
	return b.issue(ctx, issuance{sub: sub, node: node, res: res, act: act, digest: digest, aud: aud,
		parent: req.GetParent(), once: req.GetOnce(), rule: rl, lin: lin, refs: refs, jti: jti, approval: approval}, now)
}

// issuance is a writ the broker decided to issue.
type issuance struct {
	sub         writSubject
	node        spiffeid.ID
	res         store.Result
	act         *artifact.Action
	digest, aud string
	parent      string
	once        bool
	rule        *rule             // the rule it is issued under
	lin         lineageOf         // its place in the lineage (checkParent)
	refs        map[string]string // audited besides jti, action, result and parent
	jti         string            // made before the approval check, which records it
	approval    string            // the approval spent on it, if any
}

// issue signs, records (so that it can be named as a parent) and audits
// (writ-issue) a writ the checks allowed.
func (b *Broker) issue(ctx context.Context, w issuance, now time.Time) (*brokerv1.WritResponse, error) {
	node, res, rl, lin := w.node, w.res, w.rule, w.lin
	claims := &artifact.Claims{
		Issuer:    identity.BrokerID(b.td).String(),
		Subject:   w.sub.id.String(),
		Audience:  w.aud,
		IssuedAt:  now,
		NotBefore: now,
		Expiry:    now.Add(b.cfg.Writ.TTL),
		ID:        w.jti,
		Action:    artifact.ActionClaim{Kind: w.act.Kind, Digest: w.digest, Display: w.act.Display()},
		Att: artifact.Attestation{Node: node.String(), Result: res.ID, PCRs: res.PCRDigest,
			Sel: res.Sel, Policy: res.Policy},
		Cnf:    artifact.Confirmation{X5TS256: artifact.Thumbprint(w.sub.leaf)},
		Parent: w.parent,
		Once:   w.once,
	}
	token, err := artifact.Sign(b.writ.key, b.writ.kid, claims)
	if err != nil {
		return nil, b.refuse(ctx, "writ", node.String(), err)
	}
	err = b.store.PutIssuedWrit(ctx, store.IssuedWrit{JTI: claims.ID, Subject: claims.Subject, Node: node.String(),
		IssuedAt: claims.IssuedAt, ExpiresAt: claims.Expiry, Parent: claims.Parent, Rule: rl.name, Scope: narrow(lin.scope, rl),
		Depth: lin.depth})
	if errors.Is(err, store.ErrParentRevoked) {
		return nil, b.deny(ctx, "writ", node.String(), ReasonParentRevoked, codes.PermissionDenied, "the parent "+claims.Parent+" was revoked")
	}
	if err != nil {
		return nil, b.refuse(ctx, "writ", node.String(), err)
	}
	refs := map[string]string{"jti": claims.ID, "action": w.digest, "result": res.ID, "parent": claims.Parent,
		"kind": w.act.Kind, "display": w.act.Display(), "depth": strconv.Itoa(lin.depth)}
	if rl.name != "" {
		refs["rule"] = rl.name
	}
	if lin.vouched {
		refs["lineage"] = "ancestry-retained"
	}
	for k, v := range w.refs {
		refs[k] = v
	}
	if w.approval != "" {
		refs["approval"] = w.approval
	}
	if err := b.record(ctx, "writ-issue", claims.Subject, "allow", "", refs); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the writ could not be recorded")
	}
	b.metrics.ops.writs.WithLabelValues(w.act.Kind).Inc()
	b.log.Info("writ issued", logNode, node.String(), "subject", claims.Subject, "entry", w.sub.entry, "gateway", w.refs["gateway"],
		"jti", claims.ID, "action", claims.Action.Display, "once", claims.Once)
	return &brokerv1.WritResponse{Writ: token, Jti: claims.ID, ExpiresUnix: claims.Expiry.Unix()}, nil
}

// ConsumeWrit marks a single-use writ used. The writ must be one this
// broker signed, the caller its audience, and it must not be revoked
// (writ_revoked: itself or an ancestor, docs/adr/0031).
func (b *Broker) ConsumeWrit(ctx context.Context, req *brokerv1.ConsumeWritRequest) (*brokerv1.ConsumeWritResponse, error) {
	_, id, err := b.caller(ctx)
	if err != nil {
		return nil, b.deny(ctx, "consume", "", ReasonCallerUnauthenticated, codes.Unauthenticated, err.Error())
	}
	claims, err := artifact.VerifySignature(req.GetWrit(), b.writKeys()) // any replica's writ
	if err != nil {
		return nil, b.deny(ctx, "consume", id.String(), string(artifact.ReasonOf(err)), codes.InvalidArgument, err.Error())
	}
	if claims.Audience != id.String() {
		return nil, b.deny(ctx, "consume", id.String(), ReasonNotAudience, codes.PermissionDenied, "only the writ's audience may consume it")
	}
	// No verifier accepts a writ past exp + MaxSkew, and the record of its
	// use may be pruned then (see prune): refuse it here too.
	if now := time.Now(); !now.Before(claims.Expiry.Add(artifact.MaxSkew)) {
		return nil, b.deny(ctx, "consume", id.String(), string(artifact.ReasonWritExpired), codes.FailedPrecondition, "writ "+claims.ID+" expired")
	}
	if err := b.checkRevoked(ctx, id.String(), claims.ID); err != nil {
		return nil, err
	}
	err = b.store.ConsumeWrit(ctx, claims.ID, claims.Expiry, time.Now())
	if errors.Is(err, store.ErrWritUsed) {
		return nil, b.deny(ctx, "consume", id.String(), ReasonWritReplayed, codes.FailedPrecondition, "writ "+claims.ID+" was already used")
	}
	if err != nil {
		return nil, b.refuse(ctx, "consume", id.String(), err)
	}
	if err := b.record(ctx, "writ-consume", id.String(), "allow", "", map[string]string{"jti": claims.ID}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the use could not be recorded")
	}
	return &brokerv1.ConsumeWritResponse{}, nil
}

// deny records, logs and returns a refusal with a reason code.
func (b *Broker) deny(ctx context.Context, op, subject, reason string, code codes.Code, msg string) error {
	return b.denyRefs(ctx, op, subject, reason, code, msg, nil)
}

// denyRefs is deny with references in the audit entry.
func (b *Broker) denyRefs(ctx context.Context, op, subject, reason string, code codes.Code, msg string, refs map[string]string) error {
	b.log.Warn(op+" refused", logNode, subject, logReason, reason, "detail", msg)
	b.metrics.refusals.WithLabelValues(op, reason).Inc()
	if err := b.record(ctx, auditKind[op], subject, "deny", reason, refs); err != nil {
		return brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the refusal could not be recorded")
	}
	return brokerv1.Refuse(code, reason, msg)
}

// auditKind is the audit entry kind of each operation's refusals.
var auditKind = map[string]string{
	"enroll": "enroll", "activate": "enroll", "challenge": "attest", "attest": "attest",
	"writ": "writ-deny", "consume": "writ-consume", "subscribe": "subscribe", "admin": "admin",
	"workload": "svid", "tools": "tools-list", "approval": "approval-decide", opForeign: "foreign-deny",
}

// requestAction is the one action a writ request names.
func requestAction(req *brokerv1.WritRequest) (*artifact.Action, error) {
	n := 0
	for _, set := range []bool{req.GetExec() != nil, req.GetHttp() != nil, req.GetMcp() != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, fmt.Errorf("the request names %d actions; name exactly one of exec, http and mcp", n)
	}
	if req.GetGovernedCgroup() != "" && req.GetExec() == nil {
		return nil, fmt.Errorf("governed_cgroup is for exec actions only")
	}
	switch {
	case req.GetHttp() != nil:
		return httpAction(req.GetHttp())
	case req.GetMcp() != nil:
		m := req.GetMcp()
		return &artifact.Action{Kind: artifact.KindMCP, MCP: &artifact.ToolCall{Server: m.GetServer(), Method: m.GetMethod(),
			Tool: m.GetTool(), Arguments: m.GetArguments()}}, nil
	}
	return execAction(req.GetExec()), nil
}

func httpAction(h *brokerv1.HTTPAction) (*artifact.Action, error) {
	headers := make(map[string][]string, len(h.GetHeaders()))
	for _, hd := range h.GetHeaders() {
		if _, dup := headers[hd.GetName()]; dup {
			return nil, fmt.Errorf("http header %q is listed twice; list its values once, in order", hd.GetName())
		}
		headers[hd.GetName()] = append([]string{}, hd.GetValues()...)
	}
	return &artifact.Action{Kind: artifact.KindHTTP, HTTP: &artifact.HTTPRequest{Method: h.GetMethod(), Scheme: h.GetScheme(),
		Authority: h.GetAuthority(), Path: h.GetPath(), Query: h.GetQuery(), Headers: headers, BodySHA256: h.GetBodySha256()}}, nil
}

func execAction(e *brokerv1.ExecAction) *artifact.Action {
	return &artifact.Action{Kind: "exec", Argv: e.GetArgv(), Path: e.GetPath(), SHA256: e.GetSha256(), Cwd: e.GetCwd(), Env: e.GetEnv(),
		Interpreter: e.GetInterpreter(), InterpreterSHA256: e.GetInterpreterSha256()}
}
