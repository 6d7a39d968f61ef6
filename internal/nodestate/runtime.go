package nodestate

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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
//
// The record is appended in place (a CEL is concatenated records) and
// made durable with fdatasync, after the extend, as before: a crash after
// the extend leaves the PCR one event ahead of the log — the record
// missing or cut short — and replay fails (the broker's appraisal, a
// divergence or ErrMalformed). Measure then refuses to append after a
// record cut short (runtime.Count), so nothing is written past it; the
// next reboot resets the PCR and sets the log aside.
func (d Dir) Measure(tpm PCRs, e runtime.Event) error {
	unlock, err := d.lock()
	if err != nil {
		return err
	}
	defer unlock()
	path := d.Path(RuntimeLog)
	f, log, created, err := openRuntimeLog(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	values, err := tpm.PCRValues([]int{runtime.PCR})
	if err != nil {
		return fmt.Errorf("nodestate: %w", err)
	}
	if len(log) > 0 && bytes.Equal(values[runtime.PCR], make([]byte, sha256.Size)) {
		aside := d.Path(fmt.Sprintf("%s.%d", RuntimeLog, time.Now().Unix()))
		if err := os.Rename(path, aside); err != nil {
			return fmt.Errorf("nodestate: %w", err)
		}
		_ = f.Close()
		if f, log, created, err = openRuntimeLog(path); err != nil { // created: the rename is made durable too
			return err
		}
	}
	n, err := runtime.Count(log)
	if err != nil {
		return fmt.Errorf("nodestate: %s: %w", path, err)
	}
	rec, err := runtime.Next(n, e, tpm.Extend)
	if err != nil {
		return err
	}
	if _, err := f.Write(rec); err != nil {
		_ = f.Truncate(int64(len(log)))
		return fmt.Errorf("nodestate: write runtime log: %w", err)
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("nodestate: sync runtime log: %w", err)
	}
	if created {
		return syncDir(string(d))
	}
	return nil
}

// openRuntimeLog opens the runtime log for appending, creating it if
// missing, and reads it.
func openRuntimeLog(path string) (f *os.File, log []byte, created bool, err error) {
	f, err = os.OpenFile(path, os.O_RDWR|os.O_APPEND, 0)
	if errors.Is(err, fs.ErrNotExist) {
		f, err = os.OpenFile(path, os.O_RDWR|os.O_APPEND|os.O_CREATE|os.O_EXCL, 0o600)
		created = true
	}
	if err != nil {
		return nil, nil, false, fmt.Errorf("nodestate: %w", err)
	}
	if log, err = io.ReadAll(f); err != nil {
		_ = f.Close()
		return nil, nil, false, fmt.Errorf("nodestate: read runtime log: %w", err)
	}
	return f, log, created, nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("nodestate: %w", err)
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("nodestate: sync %s: %w", dir, err)
	}
	return nil
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
