package broker

import (
	"context"
	"crypto"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest"
	"github.com/writ-dev/writ/broker/store"
	"github.com/writ-dev/writ/identity"
)

// Enroll checks the EK and the AK and answers with an activation challenge.
// It is unauthenticated, so in order: the caller's address is within its
// rate: rate_limited; every field within its limit: evidence_too_large;
// the EK is trusted (attest.EKPolicy); the node (its EK) is within its
// rate: rate_limited; fewer than Limits.MaxPendingEnrollments
// enrollments are pending: too_many_pending; the AK's creation
// attestation is well framed (attest.ScanAK), then the AK itself
// (attest.NewChallenge): ak_invalid. An AK sent by its public area alone
// (ak_public, go-tpm-tools' AK) is checked by attest.NewChallengePublic
// instead: ak_invalid; both ak and ak_public: bad_request.
func (b *Broker) Enroll(ctx context.Context, req *brokerv1.EnrollRequest) (*brokerv1.EnrollResponse, error) {
	if err := b.limits.allowPeer(ctx); err != nil {
		return nil, b.refuse(ctx, "enroll", "", err)
	}
	if err := checkEnroll(req); err != nil {
		return nil, b.refuse(ctx, "enroll", "", err)
	}
	ek, err := b.ek.VerifyEK(req.GetEkCertificate(), req.GetEkPublic())
	if err != nil {
		return nil, b.refuse(ctx, "enroll", "", err)
	}
	if err := b.limits.allowNode(ek.Fingerprint()); err != nil {
		return nil, b.refuse(ctx, "enroll", ek.Fingerprint(), err)
	}
	if err := b.checkPending(ctx); err != nil {
		return nil, b.refuse(ctx, "enroll", ek.Fingerprint(), err)
	}
	akPublic, secret, cred, err := challengeAK(ek.Public, req)
	if err != nil {
		return nil, b.refuse(ctx, "enroll", ek.Fingerprint(), err)
	}
	id, err := identity.NodeID(b.td, ek.Fingerprint())
	if err != nil {
		return nil, b.refuse(ctx, "enroll", ek.Fingerprint(), err)
	}
	var certDER []byte
	if ek.Certificate != nil {
		certDER = ek.Certificate.Raw
	}
	e := store.Enrollment{
		ID: uuid.NewString(),
		Node: store.Node{
			ID: ek.Fingerprint(), SPIFFEID: id.String(),
			EKPublic: ek.PublicDER, EKCert: certDER, AKPublic: akPublic,
		},
		Secret:    secret,
		ExpiresAt: time.Now().Add(b.cfg.EnrollmentTTL),
	}
	if err := b.store.PutEnrollment(ctx, e); err != nil {
		return nil, b.refuse(ctx, "enroll", ek.Fingerprint(), err)
	}
	return &brokerv1.EnrollResponse{EnrollmentId: e.ID, Credential: cred.Credential, Secret: cred.Secret}, nil
}

// challengeAK checks the AK and makes its activation challenge: an AK
// with its creation statement (ak: attest.ScanAK, attest.NewChallenge), or
// one that enrolls by its public area alone (ak_public, go-tpm-tools' AK:
// attest.NewChallengePublic); exactly one of them: bad_request.
func challengeAK(ek crypto.PublicKey, req *brokerv1.EnrollRequest) ([]byte, []byte, attest.Credential, error) {
	if pub := req.GetAkPublic(); len(pub) > 0 {
		if req.GetAk() != nil {
			return nil, nil, attest.Credential{}, &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonBadRequest, PCR: attest.NoPCR,
				Detail: "an enrollment names its AK by ak or by ak_public, not both"}}}
		}
		secret, cred, err := attest.NewChallengePublic(ek, pub, nil)
		return pub, secret, cred, err
	}
	ak := req.GetAk().Params()
	if err := attest.ScanAK(ak); err != nil {
		return nil, nil, attest.Credential{}, err
	}
	secret, cred, err := attest.NewChallenge(ek, ak, nil)
	return ak.Public, secret, cred, err
}

// checkPending refuses a new enrollment while Limits.MaxPendingEnrollments
// are pending: too_many_pending. Refusing, not evicting: an eviction would
// let a flood push out a genuine node's enrollment.
func (b *Broker) checkPending(ctx context.Context) error {
	n, err := b.store.PendingEnrollments(ctx, time.Now())
	if err != nil {
		return err
	}
	if n >= b.cfg.Limits.MaxPendingEnrollments {
		return &attest.Error{Findings: []attest.Finding{{Reason: ReasonTooManyPending, PCR: attest.NoPCR,
			Detail: fmt.Sprintf("%d enrollments are waiting for activation; retry later", n)}}}
	}
	return nil
}

// Activate checks the TPM's answer and enrolls the node. Its caller's
// address is rate-limited (rate_limited) and its fields bounded
// (evidence_too_large) first.
func (b *Broker) Activate(ctx context.Context, req *brokerv1.ActivateRequest) (*brokerv1.ActivateResponse, error) {
	if err := b.limits.allowPeer(ctx); err != nil {
		return nil, b.refuse(ctx, "activate", "", err)
	}
	if err := checkActivate(req); err != nil {
		return nil, b.refuse(ctx, "activate", "", err)
	}
	e, err := b.store.TakeEnrollment(ctx, req.GetEnrollmentId(), time.Now())
	if errors.Is(err, store.ErrNotFound) {
		err = &attest.Error{Findings: []attest.Finding{{Reason: attest.ReasonActivationFailed, PCR: attest.NoPCR,
			Detail: "no pending enrollment with this id: it expired or was already answered"}}}
	}
	if err != nil {
		return nil, b.refuse(ctx, "activate", "", err)
	}
	if err := attest.CheckActivation(e.Secret, req.GetSecret()); err != nil {
		return nil, b.refuse(ctx, "activate", e.Node.ID, err)
	}
	n := e.Node
	n.EnrolledAt = time.Now()
	if old, err := b.store.Node(ctx, n.ID); err == nil && old.State == store.NodeRevoked {
		return nil, b.deny(ctx, "activate", n.SPIFFEID, ReasonNodeRevoked, codes.PermissionDenied, "this TPM's node was revoked: "+old.StateReason)
	}
	if err := b.record(ctx, "enroll", n.SPIFFEID, "allow", "", map[string]string{"ek": n.ID}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the enrollment could not be recorded")
	}
	if err := b.store.PutNode(ctx, n); err != nil {
		return nil, b.refuse(ctx, "activate", n.ID, err)
	}
	b.log.Info("node enrolled", logNode, n.SPIFFEID)
	return &brokerv1.ActivateResponse{NodeId: n.ID, SpiffeId: n.SPIFFEID}, nil
}

// refuse logs a refusal and turns it into a gRPC error with its reason code.
// Internal errors are logged in full and answered without detail.
func (b *Broker) refuse(ctx context.Context, op, node string, err error) error {
	if errors.Is(err, store.ErrBusy) {
		return b.storeBusy(ctx, op, node, err)
	}
	reason := attest.ReasonOf(err)
	b.metrics.refusals.WithLabelValues(op, string(reason)).Inc()
	if reason == attest.ReasonInternal {
		b.log.Error(op+" failed", logNode, node, "err", err)
		return brokerv1.Refuse(codes.Internal, string(reason), "internal error")
	}
	if reason == ReasonRateLimited {
		// Counted, not audited or logged one by one: a flood must not
		// write the audit log at its own rate.
		return brokerv1.Refuse(codes.ResourceExhausted, string(reason), err.Error())
	}
	b.log.Warn(op+" refused", logNode, node, logReason, string(reason), "err", err)
	if aerr := b.record(ctx, auditKind[op], node, "deny", string(reason), nil); aerr != nil {
		return brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the refusal could not be recorded")
	}
	code := codes.PermissionDenied
	switch reason {
	case attest.ReasonBadRequest, ReasonNodeAmbiguous:
		code = codes.InvalidArgument
	case ReasonEvidenceTooLarge, ReasonTooManyPending:
		code = codes.ResourceExhausted
	}
	return brokerv1.Refuse(code, string(reason), err.Error())
}
