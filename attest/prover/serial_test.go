package prover_test

import (
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"sync"
	"testing"
)

// TestConcurrentCommands: one opened TPM shared by goroutines (the agent's
// exec decisions, its TLS handshakes, its attestation loop) runs each
// command alone: PCR reads, extends and signatures from several goroutines
// at once all succeed and every signature verifies. Without the command
// lock two goroutines' commands and responses interleave on the channel.
func TestConcurrentCommands(t *testing.T) {
	_, tpm, _ := booted(t)
	blob, err := tpm.NewSigningKey()
	if err != nil {
		t.Fatal(err)
	}
	key, err := tpm.LoadSigningKey(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer key.Close()
	pub := key.Public().(*ecdsa.PublicKey)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 15 {
				digest := sha256.Sum256([]byte{byte(g), byte(i)})
				switch (g + i) % 3 {
				case 0:
					if _, err := tpm.PCRValues([]int{0, 15}); err != nil {
						errs <- err
						return
					}
				case 1:
					if err := tpm.Extend(15, digest[:]); err != nil {
						errs <- err
						return
					}
				default:
					sig, err := key.Sign(rand.Reader, digest[:], nil)
					if err != nil {
						errs <- err
						return
					}
					if !ecdsa.VerifyASN1(pub, digest[:], sig) {
						t.Errorf("goroutine %d: a signature does not verify", g)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
