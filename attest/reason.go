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
	// Evidence in go-tpm-tools' format (tpmtools.go).
	ReasonEvidenceMalformed Reason = "evidence_malformed" // does not decode, or carries bytes no field accounts for
	ReasonEvidenceTooLarge  Reason = "evidence_too_large" // over MaxTPMToolsBytes; the broker's code for the same
	ReasonAKMismatch        Reason = "ak_mismatch"        // names an AK other than the node's enrolled one
	ReasonInternal          Reason = "internal_error"
)

// NoPCR marks a finding that concerns no single PCR.
const NoPCR = -1

// Finding is one reason evidence was refused, with the PCR it concerns (or
// NoPCR) and detail a user may read. Detail is a one-line summary; the other
// fields carry the same facts for programs (the broker stores them with the
// result, the CLI prints them).
//
// Expected and Seen are the two values whose disagreement is the finding,
// as lowercase hex:
//   - a PCR that fails policy: Expected lists the values the policy allows
//     (comma separated), Seen is the quoted value;
//   - a PCR whose events do not replay to its quoted value: Expected is the
//     quoted value, Seen the value the log's events replay to, and Event is
//     the last event the log has for that PCR (no Event when the log has
//     none for it: Seen is then the reset value);
//   - an event whose digest must be the hash of its data and is not:
//     Expected is the hash of the data, Seen the digest logged, and Event is
//     that event.
type Finding struct {
	Reason   Reason    `json:"reason"`
	PCR      int       `json:"pcr"`
	Detail   string    `json:"detail"`
	Event    *EventRef `json:"event,omitempty"`
	Expected string    `json:"expected,omitempty"`
	Seen     string    `json:"seen,omitempty"`
}

// EventRef names one event of a TCG boot event log, as a finding points at it.
type EventRef struct {
	// Index is the event's position in the log, counting the Spec ID header
	// event of a crypto-agile log as 0: the numbering of tpm2_eventlog and of
	// go-attestation.
	Index int    `json:"index"`
	PCR   int    `json:"pcr"`
	Type  string `json:"type"` // e.g. "EV_SEPARATOR"
	// DigestLogged is the event's sha256 digest as logged, hex; empty when the
	// event carries none.
	DigestLogged string `json:"digest_logged"`
	// DigestExpected is the sha256 of the event's data, hex, for an event
	// whose type requires its digest to be exactly that; empty otherwise.
	DigestExpected string `json:"digest_expected,omitempty"`
	// PCREvents is how many measured events the log has for this PCR.
	PCREvents int `json:"pcr_events,omitempty"`
}

func (r *EventRef) String() string {
	return fmt.Sprintf("event %d (PCR %d, %s)", r.Index, r.PCR, r.Type)
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
