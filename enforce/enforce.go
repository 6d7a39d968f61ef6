// Package enforce is writ's enforcement side: before anything runs it checks
// the node's SVID, a writ for exactly this action, and the node's live TPM
// state, and refuses otherwise (fail closed). The exec path's parts that
// the shim shares (the node API's messages, the sealed copy, the #! line,
// the denial and its reason codes) are in package shim.
package enforce

import "github.com/writ-dev/writ/shim"

// Reasons a shim denies, besides the artifact and broker reason codes it
// passes on.
const (
	ReasonAgentDataMissing  = "agent_data_missing"
	ReasonBrokerUnreachable = "broker_unreachable"
	ReasonTPMUnavailable    = "tpm_unavailable"
	ReasonWritUnreadable    = "writ_unreadable"
	ReasonAuditFailed       = "audit_failed"
	ReasonMeasureFailed     = "measure_failed"

	// The exec path's reasons, defined with the shim.
	ReasonSVIDInvalid        = shim.ReasonSVIDInvalid
	ReasonExecNotFound       = shim.ReasonExecNotFound
	ReasonInternal           = shim.ReasonInternal
	ReasonEnvDangerous       = shim.ReasonEnvDangerous
	ReasonExecNotRegular     = shim.ReasonExecNotRegular
	ReasonSealFailed         = shim.ReasonSealFailed
	ReasonExecFailed         = shim.ReasonExecFailed
	ReasonScriptInvalid      = shim.ReasonScriptInvalid
	ReasonScriptNested       = shim.ReasonScriptNested
	ReasonNodeRequestInvalid = shim.ReasonNodeRequestInvalid
)

// DeniedExitCode is the exit status of a denied writ exec, as a shell uses
// for "found but not executable".
const DeniedExitCode = shim.DeniedExitCode

// Denial is a refusal with its reason code.
type Denial = shim.Denial

func deny(reason string, err error, format string, args ...any) *Denial {
	return shim.Deny(reason, err, format, args...)
}

// ReasonOf returns the reason code of a denial ("" for nil, internal_error
// for any other error).
func ReasonOf(err error) string { return shim.ReasonOf(err) }
