package nodestate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/writ-dev/writ/attest/runtime"
)

// PCRs is what Measure needs of the TPM: read the runtime PCR, extend it.
type PCRs interface {
	PCRValues(sel []int) (map[int][]byte, error)
	Extend(pcr int, digest []byte) error
}

// Measure extends e into the runtime PCR and appends it to the runtime
// log, under an exclusive lock so that the log and the PCR move together.
// A runtime PCR at its reset value with a non-empty log means the TPM was
// reset (a reboot): the old log is kept aside and a new one started.
func (d Dir) Measure(tpm PCRs, e runtime.Event) error {
	return d.WithRuntimeLog(func(log []byte) error {
		values, err := tpm.PCRValues([]int{runtime.PCR})
		if err != nil {
			return fmt.Errorf("nodestate: %w", err)
		}
		if len(log) > 0 && bytes.Equal(values[runtime.PCR], make([]byte, sha256.Size)) {
			aside := d.Path(fmt.Sprintf("%s.%d", RuntimeLog, time.Now().Unix()))
			if err := os.Rename(d.Path(RuntimeLog), aside); err != nil {
				return fmt.Errorf("nodestate: %w", err)
			}
			log = nil
		}
		next, err := runtime.Append(log, e, tpm.Extend)
		if err != nil {
			return err
		}
		return d.Write(RuntimeLog, next)
	})
}

// WithRuntimeLog runs fn with the runtime log (empty if none) under the
// lock, so that no measurement lands between, say, a quote and reading the
// log that must replay to it.
func (d Dir) WithRuntimeLog(fn func(log []byte) error) error {
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	log, err := os.ReadFile(d.Path(RuntimeLog))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("nodestate: %w", err)
	}
	return fn(log)
}

func (d Dir) lock() (func(), error) {
	f, err := os.OpenFile(d.Path(LockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("nodestate: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("nodestate: lock: %w", err)
	}
	return func() {
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
