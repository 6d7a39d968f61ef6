// Package shim is the exec shim's side of writ's node API: it asks the
// node agent over its Unix socket to decide an exec, checks what the agent
// answers (the sealed copies, the SVID chain, the writ for exactly this
// action) and executes the sealed copy. It imports only the standard
// library, x/sys, artifact and go-spiffe's ID, bundle and SVID packages, so
// that a governed exec starts near the cost of any Go program
// (docs/adr/0018, 0022): no gRPC, protobuf, CEL, SQLite or TPM.
//
// The parts of an exec that the agent and the shim both handle (the wire
// messages, the sealed copy, the #! line, the action) live here once; the
// agent's side (package enforce) imports them.
package shim

import (
	"errors"
	"fmt"
)

// Reasons of the exec path, shared by the shim and the agent.
const (
	ReasonSVIDInvalid    = "svid_invalid"
	ReasonExecNotFound   = "exec_not_found"
	ReasonInternal       = "internal_error"
	ReasonEnvDangerous   = "env_dangerous"    // a loader or interpreter variable not also allowed
	ReasonExecNotRegular = "exec_not_regular" // not a regular file (a FIFO, a device, a directory)
	ReasonSealFailed     = "seal_failed"      // the sealed copy could not be made, or was not sealed
	ReasonExecFailed     = "exec_failed"      // execveat failed after the decision was recorded
	ReasonScriptInvalid  = "script_invalid"   // the #! line is not one writ runs
	ReasonScriptNested   = "script_nested"    // the interpreter is itself a script
)

// DeniedExitCode is the exit status of a denied governed exec, as a shell
// uses for "found but not executable".
const DeniedExitCode = 126

// Denial is a refusal with its reason code.
type Denial struct {
	Reason string
	Detail string
	Err    error
}

func (d *Denial) Error() string { return fmt.Sprintf("denied: %s: %s", d.Reason, d.Detail) }
func (d *Denial) Unwrap() error { return d.Err }

// Deny returns a refusal for reason, its detail formatted from format and
// args, wrapping err (which may be nil).
func Deny(reason string, err error, format string, args ...any) *Denial {
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
