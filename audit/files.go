package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"syscall"
)

// Files in a log directory.
const (
	entriesFile     = "entries.jsonl"
	checkpointsFile = "checkpoints"
	keyFile         = "key.json"
	lockFile        = "lock"
)

const (
	fileMode = 0o600
	dirMode  = 0o700
)

// splitLines splits data into complete lines (without their newlines) and a
// trailing partial line, which is nil when data ends in a newline.
func splitLines(data []byte) (lines [][]byte, torn []byte) {
	lines = make([][]byte, 0, bytes.Count(data, []byte{'\n'}))
	for len(data) > 0 {
		i := bytes.IndexByte(data, '\n')
		if i < 0 {
			return lines, data
		}
		lines = append(lines, data[:i])
		data = data[i+1:]
	}
	return lines, nil
}

// splitEntries splits the bytes of entries.jsonl into its complete lines
// and a torn tail, which is nil when the lines are followed by nothing but
// zeros. A writer keeps zeros ahead of the entries (preallocate) and no
// entry line holds a NUL (appendString escapes control characters), so the
// entries end at the first NUL. The torn tail runs from there back to the
// last complete line and on to the last byte that is not zero: a crash
// mid-append may leave a partial line, or sectors of a batch with holes of
// zeros between them.
func splitEntries(data []byte) (lines [][]byte, torn []byte) {
	cut, end := len(data), len(data)
	if i := bytes.IndexByte(data, 0); i >= 0 {
		cut, end = i, i+len(bytes.TrimRight(data[i:], "\x00"))
	}
	lines, torn = splitLines(data[:cut])
	start := cut - len(torn)
	if start == end {
		return lines, nil
	}
	return lines, data[start:end]
}

// readFrom reads f from off to its end.
func readFrom(f *os.File, off int64) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if st.Size() < off {
		return nil, fmt.Errorf("%w: %s shrank from %d to %d bytes", ErrCorrupt, filepath.Base(f.Name()), off, st.Size())
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf, nil
}

// flock serializes writers across processes. Within a process, Log holds
// its own mutex around it: flock locks belong to the open file, so two
// goroutines sharing the file would not exclude each other.
type flock struct{ f *os.File }

func openLock(dir string) (*flock, error) {
	f, err := os.OpenFile(filepath.Join(dir, lockFile), os.O_RDWR|os.O_CREATE, fileMode)
	if err != nil {
		return nil, fmt.Errorf("audit: open lock: %w", err)
	}
	return &flock{f}, nil
}

func (l *flock) lock() error {
	for {
		err := syscall.Flock(int(l.f.Fd()), syscall.LOCK_EX)
		if !errors.Is(err, syscall.EINTR) {
			if err != nil {
				return fmt.Errorf("audit: lock log: %w", err)
			}
			return nil
		}
	}
}

func (l *flock) unlock() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
}

func (l *flock) close() error { return l.f.Close() }

// syncDir makes the directory's entries durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// readLog reads the files an auditor needs. A missing checkpoints file is
// an empty one.
func readLog(dir string) (entries, checkpoints, key []byte, err error) {
	if entries, err = os.ReadFile(filepath.Join(dir, entriesFile)); err != nil {
		return nil, nil, nil, fmt.Errorf("audit: %w", err)
	}
	checkpoints, err = os.ReadFile(filepath.Join(dir, checkpointsFile))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil, fmt.Errorf("audit: %w", err)
	}
	if key, err = os.ReadFile(filepath.Join(dir, keyFile)); err != nil {
		return nil, nil, nil, fmt.Errorf("audit: %w", err)
	}
	return entries, checkpoints, key, nil
}

// withLock runs fn holding the lock of the log in dir.
func withLock(dir string, fn func() error) error {
	lk, err := openLock(dir)
	if err != nil {
		return err
	}
	defer func() { _ = lk.close() }()
	if err := lk.lock(); err != nil {
		return err
	}
	defer lk.unlock()
	return fn()
}
