package agent

import (
	"errors"
	"sync"
)

// background runs functions in goroutines and collects their errors, so
// that file writes (each with its fsync) overlap one another and the TPM
// and broker work that does not depend on them (docs/adr/0050). The zero
// value is ready; wait may be called again, and reports each error once.
type background struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	errs []error
}

// run starts fn.
func (b *background) run(fn func() error) {
	b.wg.Add(1)
	go func() {
		defer b.wg.Done()
		if err := fn(); err != nil {
			b.mu.Lock()
			b.errs = append(b.errs, err)
			b.mu.Unlock()
		}
	}()
}

// wait waits for everything started and returns the errors not returned
// before, joined.
func (b *background) wait() error {
	b.wg.Wait()
	b.mu.Lock()
	defer b.mu.Unlock()
	err := errors.Join(b.errs...)
	b.errs = nil
	return err
}
