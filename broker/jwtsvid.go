package broker

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/bundle/spiffebundle"
	"google.golang.org/grpc/codes"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/artifact"
	"github.com/writ-dev/writ/identity"
)

// JWTSVIDKeyFile is the JWT-SVID signing key in the data directory (0600).
// Its public key is in the trust bundle as a JWK with "use": "jwt-svid".
const JWTSVIDKeyFile = "jwt-svid.key"

// Bounds of a JWT-SVID.
const (
	jwtSVIDMaxTTL      = 5 * time.Minute
	maxJWTAudiences    = 16
	maxJWTAudienceSize = 1024
)

// jwtSVIDSigner signs JWT-SVIDs with the broker's JWT-SVID key.
type jwtSVIDSigner struct {
	key crypto.Signer
	kid string
	pub *ecdsa.PublicKey
}

// loadJWTSVIDSigner loads the JWT-SVID key from dir, or creates it.
func loadJWTSVIDSigner(dir string) (*jwtSVIDSigner, error) {
	key, err := identity.LoadOrCreateKey(filepath.Join(dir, JWTSVIDKeyFile))
	if err != nil {
		return nil, fmt.Errorf("broker: JWT-SVID key: %w", err)
	}
	w, err := newWritSigner(key, func() error { return nil }) // the same kind of key, kid and checks
	if err != nil {
		return nil, fmt.Errorf("broker: JWT-SVID key: %w", err)
	}
	return &jwtSVIDSigner{key: w.key, kid: w.kid, pub: w.pub}, nil
}

// addTo publishes the key in a SPIFFE bundle as a JWT authority.
func (s *jwtSVIDSigner) addTo(b *spiffebundle.Bundle) error {
	if err := b.AddJWTAuthority(s.kid, s.pub); err != nil {
		return fmt.Errorf("broker: bundle: %w", err)
	}
	return nil
}

// sign makes a JWT-SVID: ES256, typ JWT, the key's kid.
func (s *jwtSVIDSigner) sign(c jwt.Claims) (string, error) {
	payload, err := json.Marshal(c)
	if err != nil {
		return "", fmt.Errorf("broker: JWT-SVID: %w", err)
	}
	tok, err := artifact.SignPayload(s.key, s.kid, "JWT", payload)
	if err != nil {
		return "", fmt.Errorf("broker: JWT-SVID: %w", err)
	}
	return tok, nil
}

// checkAudience refuses an empty audience, or too many or too long.
func checkAudience(aud []string) error {
	if len(aud) == 0 || len(aud) > maxJWTAudiences {
		return fmt.Errorf("a JWT-SVID needs 1 to %d audiences", maxJWTAudiences)
	}
	for _, a := range aud {
		if a == "" || len(a) > maxJWTAudienceSize {
			return fmt.Errorf("an audience is 1 to %d bytes", maxJWTAudienceSize)
		}
	}
	return nil
}

// SignJWTSVID issues a JWT-SVID for an entry to a workload on the calling
// node. Checks, in order: 1–5 of inGoodStanding, 6–8 of workloadEntry,
// then
//
//  9. the audience is 1 to 16 non-empty strings: audience_missing.
//
// The token's sub is the entry's SPIFFE ID, aud the request's, and it
// expires within 5 minutes, never past the node's standing; its issue is
// audited (kind svid, refs entry, node, jti, result), the token never.
func (b *Broker) SignJWTSVID(ctx context.Context, req *brokerv1.SignJWTSVIDRequest) (*brokerv1.SignJWTSVIDResponse, error) {
	n, err := b.inGoodStanding(ctx, opWorkload)
	if err != nil {
		return nil, err
	}
	e, err := b.workloadEntry(ctx, opWorkload, n, req.GetEntryId(), req.GetSelectors())
	if err != nil {
		return nil, err
	}
	if err := checkAudience(req.GetAudience()); err != nil {
		return nil, b.deny(ctx, opWorkload, n.id.String(), ReasonAudienceMissing, codes.InvalidArgument, err.Error())
	}
	now := time.Now()
	exp := now.Add(min(jwtSVIDMaxTTL, b.standingUntil(n).Sub(now))).Truncate(time.Second) // never past the standing
	c := jwt.Claims{Subject: e.SPIFFEID, Audience: jwt.Audience(req.GetAudience()), IssuedAt: jwt.NewNumericDate(now),
		Expiry: jwt.NewNumericDate(exp), ID: uuid.NewString()}
	tok, err := b.jwt.sign(c)
	if err != nil {
		return nil, b.refuse(ctx, opWorkload, n.node.ID, err)
	}
	if err := b.record(ctx, "svid", e.SPIFFEID, "allow", "", map[string]string{
		"entry": e.ID, "node": n.id.String(), "jti": c.ID, "result": n.res.ID}); err != nil {
		return nil, brokerv1.Refuse(codes.Internal, ReasonAuditFailed, "the JWT-SVID could not be recorded")
	}
	b.log.Info("JWT-SVID issued", logNode, n.id.String(), "entry", e.ID, "spiffe_id", e.SPIFFEID, "jti", c.ID, "exp", exp)
	return &brokerv1.SignJWTSVIDResponse{Token: tok, ExpiresUnix: exp.Unix()}, nil
}
