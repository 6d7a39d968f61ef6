package prover

import (
	"errors"
	"io"
	"sync"
)

// serial makes a TPM command channel safe for concurrent users: a command
// and its response are one critical section. go-tpm (tpmutil.RunCommandRaw,
// under both its APIs) writes a command and then reads its response, so
// Write takes the lock and the Read that follows releases it; a failed
// Write releases it at once.
//
// This is the innermost lock of whoever shares a TPM (docs/adr/0021):
// it is held for one command only and never while waiting for anything
// else, so a caller may hold any other lock while it sends a command —
// the agent's TLS handshake signs with the node SVID key while an exec
// decision holds the agent's locks.
type serial struct {
	mu      sync.Mutex
	rwc     io.ReadWriteCloser
	pending bool // a command was written and its response not yet read
}

func (s *serial) Write(p []byte) (int, error) {
	s.mu.Lock()
	n, err := s.rwc.Write(p)
	if err != nil {
		s.mu.Unlock()
		return n, err
	}
	s.pending = true
	return n, nil
}

var errReadWithoutCommand = errors.New("prover: TPM response read without a command")

func (s *serial) Read(p []byte) (int, error) {
	if !s.pending { // not holding the lock: no command of this caller is outstanding
		return 0, errReadWithoutCommand
	}
	defer s.mu.Unlock()
	s.pending = false
	return s.rwc.Read(p)
}

func (s *serial) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rwc.Close()
}
