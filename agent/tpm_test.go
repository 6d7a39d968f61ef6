package agent

import (
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/internal/swtpmtest"
)

// TestTPMShutdownWaitsForItsUsers: shutdown refuses new users at once,
// returns only once the operation under way has released the TPM (it
// flushes what it loaded before it does), and closes the TPM; past its
// deadline it reports the operation still running, and the TPM closes
// when that one ends. resume (Run again) lets users in again.
func TestTPMShutdownWaitsForItsUsers(t *testing.T) {
	sw := swtpmtest.Start(t)
	s := &sharedTPM{open: func() (*prover.TPM, error) { return prover.New(sw.Channel(), "") }, idle: time.Hour}

	if _, err := s.acquire(); err != nil {
		t.Fatal(err)
	}
	var released atomic.Bool
	go func() {
		time.Sleep(100 * time.Millisecond)
		released.Store(true)
		s.release()
	}()
	if left := s.shutdown(time.Now().Add(time.Minute)); left != 0 {
		t.Fatalf("shutdown left %d operations, want 0", left)
	}
	if !released.Load() {
		t.Fatal("shutdown returned while an operation still used the TPM")
	}
	if s.tpm != nil {
		t.Fatal("the TPM is still open after shutdown")
	}
	if _, err := s.acquire(); !errors.Is(err, errTPMStopped) {
		t.Fatalf("acquire after shutdown: %v, want errTPMStopped", err)
	}

	s.resume()
	if _, err := s.acquire(); err != nil {
		t.Fatalf("acquire after resume: %v", err)
	}
	if left := s.shutdown(time.Now().Add(20 * time.Millisecond)); left != 1 {
		t.Fatalf("shutdown past its deadline reported %d operations, want 1", left)
	}
	s.mu.Lock()
	open := s.tpm != nil
	s.mu.Unlock()
	if !open {
		t.Fatal("shutdown closed the TPM under an operation that still uses it")
	}
	s.release()
	if s.tpm != nil {
		t.Fatal("the TPM stays open after its last operation ended a shutdown")
	}
}
