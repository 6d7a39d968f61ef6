// Package attest verifies TPM evidence: EK certificates, credential activation,
// quotes, event logs and PCR policy. It is pure code: it talks to no TPM, store
// or network, so a broker, a shim or an auditor can use it alone. The TPM side
// lives in attest/prover.
package attest

import (
	"errors"
	"fmt"
)

// Reason is a stable code for why evidence was refused. Tests, logs, metrics
// and the audit log all use these strings; never change one.
type Reason string

// Reason codes.
const (
	ReasonBadRequest        Reason = "bad_request"
	ReasonEKUntrusted       Reason = "ek_untrusted"
	ReasonEKNotAllowed      Reason = "ek_not_allowed"
	ReasonAKInvalid         Reason = "ak_invalid"
	ReasonActivationFailed  Reason = "activation_failed"
	ReasonNonceUnknown      Reason = "nonce_unknown"
	ReasonNonceReplayed     Reason = "nonce_replayed"
	ReasonNonceExpired      Reason = "nonce_expired"
	ReasonNonceMismatch     Reason = "nonce_mismatch"
	ReasonQuoteMalformed    Reason = "quote_malformed"
	ReasonQuoteBadSignature Reason = "quote_bad_signature"
	ReasonPCRSelection      Reason = "pcr_selection_mismatch"
	ReasonPCRMismatch       Reason = "pcr_mismatch"
	ReasonEventLogMalformed Reason = "eventlog_malformed"
	ReasonEventLogReplay    Reason = "eventlog_replay_failed"
	ReasonPolicyDenied      Reason = "policy_denied"
	ReasonKeyNotCertified   Reason = "key_not_certified"
	ReasonNodeUnknown       Reason = "node_unknown"
	ReasonInternal          Reason = "internal_error"
)

// NoPCR marks a finding that concerns no single PCR.
const NoPCR = -1

// Finding is one reason evidence was refused, with the PCR it concerns (or
// NoPCR) and detail a user may read.
type Finding struct {
	Reason Reason `json:"reason"`
	PCR    int    `json:"pcr"`
	Detail string `json:"detail"`
}

func (f Finding) String() string {
	if f.PCR != NoPCR {
		return fmt.Sprintf("%s: PCR %d: %s", f.Reason, f.PCR, f.Detail)
	}
	return fmt.Sprintf("%s: %s", f.Reason, f.Detail)
}

// Error is a refusal carrying one or more findings. The first finding's
// reason is the refusal's reason.
type Error struct {
	Findings []Finding
	Err      error // underlying cause, for logs; may be nil
}

func (e *Error) Error() string {
	msg := "attest: " + e.Findings[0].String()
	if n := len(e.Findings); n > 1 {
		msg += fmt.Sprintf(" (and %d more)", n-1)
	}
	return msg
}

func (e *Error) Unwrap() error { return e.Err }

// Reason returns the reason of the first finding.
func (e *Error) Reason() Reason { return e.Findings[0].Reason }

func fail(r Reason, pcr int, err error, format string, args ...any) *Error {
	return &Error{Findings: []Finding{{Reason: r, PCR: pcr, Detail: fmt.Sprintf(format, args...)}}, Err: err}
}

// ReasonOf returns the reason code of err: its own if it is an *Error,
// internal_error for any other error, and "" for nil.
func ReasonOf(err error) Reason {
	if err == nil {
		return ""
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason()
	}
	return ReasonInternal
}

// FindingsOf returns the findings of err (one internal_error finding for a
// foreign error, none for nil).
func FindingsOf(err error) []Finding {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Findings
	}
	return []Finding{{Reason: ReasonInternal, PCR: NoPCR, Detail: "internal error"}}
}
