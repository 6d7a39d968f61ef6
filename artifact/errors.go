package artifact

import (
	"errors"
	"fmt"
)

// Reason is a stable reason code for a refused writ. Tests, logs, metrics
// and the audit log all use these exact strings.
type Reason string

// The reason codes, in the order Verify checks them.
const (
	ReasonWritMalformed       Reason = "writ_malformed"       // does not parse, bad JSON, a required claim missing
	ReasonTypInvalid          Reason = "typ_invalid"          // the JWS typ is not writ+jwt
	ReasonAlgNotAllowed       Reason = "alg_not_allowed"      // alg is not ES256
	ReasonKeyUnknown          Reason = "key_unknown"          // no kid, or a kid the key set does not hold
	ReasonSignatureInvalid    Reason = "signature_invalid"    // the signature does not verify
	ReasonWritExpired         Reason = "writ_expired"         // now >= exp + skew
	ReasonWritNotYetValid     Reason = "writ_not_yet_valid"   // now < nbf - skew, or iat > now + skew
	ReasonLifetimeTooLong     Reason = "lifetime_too_long"    // exp - nbf > MaxLifetime
	ReasonAudienceMismatch    Reason = "audience_mismatch"    // aud is not this relying party
	ReasonSubjectMismatch     Reason = "subject_mismatch"     // sub is not the presented SVID's SPIFFE ID
	ReasonCnfMismatch         Reason = "cnf_mismatch"         // cnf is not the presented SVID
	ReasonActionMismatch      Reason = "action_mismatch"      // act is not the action about to run
	ReasonAttestationMismatch Reason = "attestation_mismatch" // att.pcrs is not the node's PCR state now
	ReasonWritReplayed        Reason = "writ_replayed"        // a single-use writ used before (or no way to consume it)
	ReasonInternalError       Reason = "internal_error"       // anything else: a bug or a misused API
)

// Error is a refusal with its reason code. Detail is for logs and
// operators; it never holds key material or a whole token.
type Error struct {
	Reason Reason
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "artifact: " + string(e.Reason)
	}
	return "artifact: " + string(e.Reason) + ": " + e.Detail
}

// ReasonOf returns the reason code of err: "" for nil, the code of an
// *Error anywhere in err's chain, and internal_error for anything else.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) && e.Reason != "" {
		return e.Reason
	}
	return ReasonInternalError
}

func fail(r Reason, format string, args ...any) *Error {
	return &Error{Reason: r, Detail: fmt.Sprintf(format, args...)}
}
