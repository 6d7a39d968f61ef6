package agent

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/writ-dev/writ/attest/prover"
)

// The agent's TPM (docs/adr/0021). Every operation of the agent shares one
// TPM connection (prover serializes the commands of its users), opened at
// first use and closed once no operation has used it for Config.TPMIdle:
// a busy agent pays no open per exec, and an idle one lets other TPM
// clients in (swtpm serves one connection at a time; a resource manager,
// /dev/tpmrm0, needs no turn-taking, but closing an idle descriptor costs
// nothing there). No transient object outlives the operation that loaded
// it, so closing the connection loses nothing: the node SVID key is
// loaded for each TLS handshake's signature and flushed after it.
//
// Locks, outermost first:
//  1. tpmMu, held by whatever loads transient objects for a while (an
//     attestation: the AK and new keys, which take all of swtpm's three
//     object slots; a checkpoint: the audit key). An audit append needs
//     no TPM (audit.OpenAppend) and takes none of these locks.
//     Nothing that holds tpmMu waits on the broker for an exec. A
//     handshake's signature (the node SVID key, loaded for one signature)
//     does not take it: an attestation holds it across its own broker
//     calls; a signature that finds no free slot fails, and gRPC retries
//     the handshake.
//  2. the runtime log's file lock (nodestate.Dir.WithRuntimeLog): a
//     quote and its log, or one measurement.
//  3. the TPM command lock (prover: one command and its response); it is
//     held for one command and never while waiting on anything else.
//
// An exec decision holds none of them while it calls the broker, so the
// handshake a call may start never waits on its caller.
//
// Stopping (shutdown): `writ agent run` exits when Run returns, and a TPM
// without a resource manager (swtpm on TCP) keeps whatever a process
// loaded and did not flush before it exited: an exit between a key's load
// and its flush leaks one of swtpm's three object slots for good. So Run
// does not return while an operation uses the TPM: once its own work is
// done and its connections are closed, the TPM takes no new user (a TLS
// handshake that got the broker's answer as its connection closed, say,
// is refused its signature) and Run waits, up to the shutdown timeout,
// for the operations under way to finish and flush what they loaded. A
// TPM command is never cut by the exit unless that timeout passes, which
// is logged.

// DefaultTPMIdle is how long the agent keeps the TPM open after its last
// use.
const DefaultTPMIdle = 250 * time.Millisecond

// sharedTPM is the agent's TPM connection, shared by its operations.
type sharedTPM struct {
	open func() (*prover.TPM, error)
	idle time.Duration

	mu    sync.Mutex
	tpm   *prover.TPM
	users int
	timer *time.Timer
	opens atomic.Int64
	// stopped refuses new users (shutdown, until resume); drained is
	// closed when the last user leaves a stopped TPM.
	stopped bool
	drained chan struct{}
}

// errTPMStopped is acquire's answer once the agent stops.
var errTPMStopped = errors.New("agent: stopping: the TPM takes no new operation")

// acquire returns the open TPM, opening it if needed; release when done.
// It fails once shutdown has begun.
func (s *sharedTPM) acquire() (*prover.TPM, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil, errTPMStopped
	}
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if s.tpm == nil {
		tpm, err := s.open()
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		s.tpm = tpm
		s.opens.Add(1)
	}
	s.users++
	return s.tpm, nil
}

// release ends one use; the last closes the TPM after idle.
func (s *sharedTPM) release() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.users--; s.users > 0 {
		return
	}
	if s.stopped {
		s.closeLocked()
		if s.drained != nil {
			close(s.drained)
			s.drained = nil
		}
		return
	}
	if s.tpm == nil {
		return
	}
	if s.idle <= 0 {
		s.closeLocked()
		return
	}
	tpm := s.tpm
	s.timer = time.AfterFunc(s.idle, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.users == 0 && s.tpm == tpm { // not taken again meanwhile
			s.closeLocked()
		}
	})
}

// shutdown refuses new users, waits until deadline for the operations
// using the TPM to finish (each flushes what it loaded), and closes it.
// It returns how many operations still used it at the deadline; the TPM
// then closes when the last of them ends.
func (s *sharedTPM) shutdown(deadline time.Time) (left int) {
	s.mu.Lock()
	s.stopped = true
	if s.users == 0 {
		s.closeLocked()
		s.mu.Unlock()
		return 0
	}
	if s.drained == nil {
		s.drained = make(chan struct{})
	}
	drained := s.drained
	s.mu.Unlock()
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-drained:
		return 0
	case <-t.C:
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.users
	}
}

// resume lets users in again after a shutdown: Run starts again.
func (s *sharedTPM) resume() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopped = false
}

func (s *sharedTPM) closeLocked() {
	if s.timer != nil {
		s.timer.Stop()
		s.timer = nil
	}
	if s.tpm != nil {
		_ = s.tpm.Close()
		s.tpm = nil
	}
}

// withTPM runs fn with the agent's TPM.
func (a *Agent) withTPM(fn func(*prover.TPM) error) error {
	tpm, err := a.tpm.acquire()
	if err != nil {
		return err
	}
	defer a.tpm.release()
	return fn(tpm)
}

// TPMOpens returns how many times the agent has opened the TPM.
func (a *Agent) TPMOpens() int64 { return a.tpm.opens.Load() }
