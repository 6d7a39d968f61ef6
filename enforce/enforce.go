// Package enforce is writ's enforcement side: before anything runs it checks
// the node's SVID, a writ for exactly this action, and the node's live TPM
// state, and refuses otherwise (fail closed).
package enforce

import (
	"errors"
	"fmt"
)

// Reasons a shim denies, besides the artifact and broker reason codes it
// passes on.
const (
	ReasonAgentDataMissing  = "agent_data_missing"
	ReasonSVIDInvalid       = "svid_invalid"
	ReasonExecNotFound      = "exec_not_found"
	ReasonBrokerUnreachable = "broker_unreachable"
	ReasonTPMUnavailable    = "tpm_unavailable"
	ReasonWritUnreadable    = "writ_unreadable"
	ReasonAuditFailed       = "audit_failed"
	ReasonMeasureFailed     = "measure_failed"
	ReasonInternal          = "internal_error"
)

// DeniedExitCode is the exit status of a denied writ exec, as a shell uses
// for "found but not executable".
const DeniedExitCode = 126

// Denial is a refusal with its reason code.
type Denial struct {
	Reason string
	Detail string
	Err    error
}

func (d *Denial) Error() string { return fmt.Sprintf("denied: %s: %s", d.Reason, d.Detail) }
func (d *Denial) Unwrap() error { return d.Err }

func deny(reason string, err error, format string, args ...any) *Denial {
	return &Denial{Reason: reason, Detail: fmt.Sprintf(format, args...), Err: err}
}

// ReasonOf returns the reason code of a denial ("" for nil, internal_error
// for any other error).
func ReasonOf(err error) string {
	if err == nil {
		return ""
	}
	var d *Denial
	if errors.As(err, &d) {
		return d.Reason
	}
	return ReasonInternal
}
