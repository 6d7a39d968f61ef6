package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
)

// Preallocation. A durable append waits for the disk: with 16 writers each
// waiting for its own entry, appends/s is at most 16 ÷ the flush's latency.
// An append that grows the file makes the flush commit the file system's
// journal (the new size, the new blocks) besides writing the data; one that
// overwrites blocks the file already has needs only the data written and
// the disk's cache flushed (fdatasync), about half the latency here
// (docs/adr/0048). So the writer keeps zeros written ahead of the entries,
// and entries.jsonl is its lines followed by zeros. No line holds a NUL, so
// the entries end at the first NUL (splitEntries); Close drops the zeros.
const (
	minPrealloc = 16 << 10 // the first extension a Log makes: a short-lived writer appends a few lines
	maxPrealloc = 1 << 20  // the largest, and so the most Open reads past the entries
)

// zeroBlock is written to extend the zero tail.
var zeroBlock [64 << 10]byte

// write writes buf at l.offset, first extending the zero tail past it when
// it would not hold buf. On failure it truncates the file to l.offset, so
// that no part of buf is left to be taken for entries.
func (l *Log) write(buf []byte) error {
	end := l.offset + int64(len(buf))
	err := l.extend(end)
	if err == nil {
		_, err = l.entries.WriteAt(buf, l.offset)
	}
	if err != nil {
		_ = l.entries.Truncate(l.offset)
		l.fileEnd = l.offset
		return fmt.Errorf("audit: write entries: %w", err)
	}
	return nil
}

// extend writes zeros from the file's end to past end, if end is beyond
// it, by twice the previous extension (from minPrealloc up to maxPrealloc).
// The flush that follows makes them durable with the entries.
func (l *Log) extend(end int64) error {
	if end <= l.fileEnd {
		return nil
	}
	l.grow = min(max(2*l.grow, minPrealloc), maxPrealloc)
	from, to := max(l.fileEnd, l.offset), end+l.grow
	for off := from; off < to; {
		n, err := l.entries.WriteAt(zeroBlock[:min(int64(len(zeroBlock)), to-off)], off)
		if err != nil {
			return err
		}
		off += int64(n)
	}
	l.fileEnd = to
	return nil
}

// readEntries reads what lies past l.offset: from Open, all of it, to find
// a torn write anywhere in the tail (a crash may leave sectors of a batch
// after a hole of zeros); afterwards, up to the first NUL only, as every
// writer since wrote under the flock and a writer that died mid-write left
// a prefix of its batch. It learns the file's size (l.fileEnd).
func (l *Log) readEntries() ([]byte, error) {
	st, err := l.entries.Stat()
	if err != nil {
		return nil, err
	}
	size := st.Size()
	if size < l.offset {
		return nil, fmt.Errorf("%w: %s shrank from %d to %d bytes", ErrCorrupt, entriesFile, l.offset, size)
	}
	l.fileEnd = size
	if !l.opened {
		l.opened = true
		return readAt(l.entries, l.offset, size)
	}
	// Usually nothing is new: one small read into l.probe says so.
	n, err := l.entries.ReadAt(l.probe[:min(int64(len(l.probe)), size-l.offset)], l.offset)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if n == 0 || l.probe[0] == 0 {
		return nil, nil
	}
	data := bytes.Clone(l.probe[:n])
	for chunk, off := int64(4096), l.offset+int64(n); bytes.IndexByte(data, 0) < 0 && off < size; chunk *= 2 {
		b, err := readAt(l.entries, off, min(off+chunk, size))
		if err != nil {
			return nil, err
		}
		data = append(data, b...)
		off += int64(len(b))
	}
	// The entries end at the first NUL; the zeros after it are not read
	// here, and are not a torn tail.
	if i := bytes.IndexByte(data, 0); i >= 0 {
		data = data[:i]
	}
	return data, nil
}

// readAt reads f's bytes [from, to).
func readAt(f *os.File, from, to int64) ([]byte, error) {
	buf := make([]byte, to-from)
	n, err := f.ReadAt(buf, from)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return buf[:n], nil
}

// dropTail truncates entries.jsonl to its entries on Close, so that a
// closed log is plain lines (other processes extend it again). It catches
// up first: the entries end where the last writer's do, not this Log's. It
// needs no flush: a crash that undoes it leaves zeros, which are not
// entries. A broken Log leaves the file alone.
func (l *Log) dropTail() error {
	l.fileMu.Lock()
	broken := l.broken != nil
	l.fileMu.Unlock()
	if broken {
		return nil //nolint:nilerr // a broken Log reports its error elsewhere and leaves the file alone
	}
	return l.locked(func() error {
		if err := l.refreshEntries(); err != nil {
			return err
		}
		l.saveState(true)
		if l.fileEnd <= l.offset {
			return nil
		}
		if err := l.entries.Truncate(l.offset); err != nil {
			return fmt.Errorf("audit: drop preallocated tail: %w", err)
		}
		l.fileEnd = l.offset
		return nil
	})
}

// fdatasync flushes f's data, and of its metadata only what reading the
// data back needs (its size when it grew): the preallocated tail spares
// the journal commit of a full fsync.
func fdatasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		for {
			if serr = syscall.Fdatasync(int(fd)); !errors.Is(serr, syscall.EINTR) {
				return
			}
		}
	}); err != nil {
		return err
	}
	return serr
}
