package agent

import (
	"fmt"

	"github.com/writ-dev/writ/attest/prover"
)

// The agent's TPM (docs/adr/0021). Run opens it once and every operation
// uses that handle until Run returns; outside Run (writ agent attest, a
// test) each operation opens and closes it.
//
// Locks, outermost first:
//  1. tpmMu, held by whatever loads transient objects for a while (an
//     attestation: the AK and new keys; a checkpoint or an audit append:
//     the audit key). The node SVID key stays loaded for Run's life, so
//     with swtpm's three object slots at most one such user may run at a
//     time. Nothing that holds tpmMu waits on the broker for an exec.
//  2. the runtime log's file lock (nodestate.Dir.WithRuntimeLog): a
//     quote and its log, or one measurement.
//  3. the TPM command lock (prover: one command and its response), which
//     the TLS handshake's signature takes too; it is held for one command
//     and never while waiting on anything else.
//
// An exec decision holds none of them while it calls the broker, so the
// handshake a call may start never waits on its caller.

// withTPM runs fn with the TPM: Run's, or one opened for fn.
func (a *Agent) withTPM(fn func(*prover.TPM) error) error {
	a.runMu.Lock()
	tpm := a.tpm
	a.runMu.Unlock()
	if tpm != nil {
		return fn(tpm)
	}
	tpm, err := a.cfg.OpenTPM()
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	defer tpm.Close()
	return fn(tpm)
}
