package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"path/filepath"
)

// The state file caches a writer's view of the log's tail, so that Open
// need not read, parse and hash every entry (a short-lived process such as
// `writ exec` opens the log for one append). It is only a cache: writers
// update it under the flock after each change without fsync, Open checks it
// against the files (its offsets fall on a line and a record boundary, the
// last line is entry size-1 and hashes to prev) and rebuilds from scratch
// when it is missing, torn or stale in any way it can tell. Verify never
// reads it.
//
// Layout, integers big-endian: "writ-audit-state-1\n", offset, size,
// cpOff, signed (uint64 each), prev (32 bytes), the compact range's hashes
// (count uint32, then 32 bytes each), SHA-256 of all that.
const (
	stateFile  = "state"
	stateMagic = "writ-audit-state-1\n"
)

func (l *Log) encodeState() []byte {
	hashes := l.tree.Hashes()
	b := make([]byte, 0, len(stateMagic)+4*8+32+4+32*len(hashes)+32)
	b = append(b, stateMagic...)
	b = binary.BigEndian.AppendUint64(b, uint64(l.offset))
	b = binary.BigEndian.AppendUint64(b, l.size)
	b = binary.BigEndian.AppendUint64(b, uint64(l.cpOff))
	b = binary.BigEndian.AppendUint64(b, l.signed)
	b = append(b, l.prev[:]...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(hashes)))
	for _, h := range hashes {
		b = append(b, h...)
	}
	sum := sha256.Sum256(b)
	return append(b, sum[:]...)
}

// stateEvery is how far the entries may run past the cache before a
// commit rewrites it. Writing it costs each commit two system calls, a
// tenth of a commit's CPU when the flush is fast; an Open reads on from a
// stale cache, so this bounds what it reads (a few hundred entries).
const stateEvery = 64 << 10

// saveState writes the cache if the tail moved since it was last written:
// always when the checkpoints moved or force is set (Close), otherwise once
// the entries moved stateEvery bytes. Failing to write it costs the next
// Open time, nothing else.
func (l *Log) saveState(force bool) {
	if l.offset == l.savedOff && l.cpOff == l.savedCPOff {
		return
	}
	if !force && l.cpOff == l.savedCPOff && l.offset-l.savedOff < stateEvery && l.offset > l.savedOff {
		return
	}
	b := l.encodeState()
	if _, err := l.state.WriteAt(b, 0); err != nil {
		return
	}
	if len(b) != l.savedLen { // the same length: nothing to cut
		if err := l.state.Truncate(int64(len(b))); err != nil {
			return
		}
		l.savedLen = len(b)
	}
	l.savedOff, l.savedCPOff = l.offset, l.cpOff
}

var errStaleState = errors.New("audit: state cache does not match the log")

// loadState adopts the cached tail if it checks out against the files.
func (l *Log) loadState() error {
	b, err := io.ReadAll(io.NewSectionReader(l.state, 0, 1<<20))
	if err != nil {
		return err
	}
	if len(b) < len(stateMagic)+4*8+32+4+32 || !bytes.HasPrefix(b, []byte(stateMagic)) {
		return errStaleState
	}
	body, sum := b[:len(b)-32], b[len(b)-32:]
	if want := sha256.Sum256(body); !bytes.Equal(want[:], sum) {
		return errStaleState
	}
	r := body[len(stateMagic):]
	offset, size := int64(binary.BigEndian.Uint64(r)), binary.BigEndian.Uint64(r[8:])
	cpOff, signed := int64(binary.BigEndian.Uint64(r[16:])), binary.BigEndian.Uint64(r[24:])
	var prev [sha256.Size]byte
	copy(prev[:], r[32:64])
	n := binary.BigEndian.Uint32(r[64:])
	r = r[68:]
	if uint64(len(r)) != uint64(n)*32 || offset < 0 || cpOff < 0 || signed > size || (size == 0) != (offset == 0) {
		return errStaleState
	}
	hashes := make([][]byte, n)
	for i := range hashes {
		hashes[i] = bytes.Clone(r[32*i : 32*i+32])
	}
	tree, err := rangeFactory.NewRange(0, size, hashes)
	if err != nil {
		return errStaleState
	}
	if size > 0 {
		if err := checkLastLine(l.entries, offset, size-1, prev); err != nil {
			return err
		}
	}
	if cpOff > 0 {
		end := make([]byte, 2)
		if _, err := l.cps.ReadAt(end, cpOff-2); err != nil || string(end) != "\n\n" {
			return errStaleState
		}
	}
	l.offset, l.size, l.prev, l.tree, l.cpOff, l.signed = offset, size, prev, tree, cpOff, signed
	l.savedOff, l.savedCPOff, l.savedLen = offset, cpOff, len(b)
	return nil
}

// checkLastLine checks that the line ending at offset is entry seq and
// hashes to prev.
func checkLastLine(f *os.File, offset int64, seq uint64, prev [sha256.Size]byte) error {
	start := max(0, offset-MaxLineSize-2)
	buf := make([]byte, offset-start)
	if _, err := f.ReadAt(buf, start); err != nil || buf[len(buf)-1] != '\n' {
		return errStaleState
	}
	buf = buf[:len(buf)-1]
	i := bytes.LastIndexByte(buf, '\n')
	if i < 0 && start > 0 {
		return errStaleState
	}
	line := buf[i+1:]
	e, err := ParseEntry(line)
	if err != nil || e.Seq != seq || lineHash(line) != prev {
		return errStaleState
	}
	return nil
}

func openState(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, stateFile), os.O_RDWR|os.O_CREATE, fileMode)
}
