package audit

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"math"
	"slices"
	"sync"
	"time"
)

// request is one Append waiting for the committer.
type request struct {
	e    Entry
	seq  uint64
	err  error
	done chan struct{}
}

// Append logs e and returns its sequence number once its line is durable
// (written and fsynced). It fills in Seq and Prev, and Time if zero. Appends
// waiting at the same time are group-committed: one write and one fsync for
// all of them. If ctx ends before e was picked up for writing, Append
// returns ctx's error and e is not logged.
func (l *Log) Append(ctx context.Context, e Entry) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = e.Time.UTC()
	e.Refs = maps.Clone(e.Refs)
	if len(e.Refs) == 0 {
		e.Refs = nil
	}
	if err := e.validate(); err != nil {
		return 0, err
	}
	e.Seq, e.Prev = math.MaxUint64, zeroPrev // the longest they can be
	if n := encodedLen(&e); n > MaxLineSize {
		return 0, fmt.Errorf("%w: line would be %d bytes, more than %d", ErrMalformedEntry, n, MaxLineSize)
	}
	r := &request{e: e, done: make(chan struct{})}
	l.pendMu.Lock()
	if l.closed {
		l.pendMu.Unlock()
		return 0, ErrClosed
	}
	l.pending = append(l.pending, r)
	l.pendMu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	select {
	case <-r.done:
		return r.seq, r.err
	case <-ctx.Done():
		l.pendMu.Lock()
		if i := slices.Index(l.pending, r); i >= 0 {
			l.pending = slices.Delete(l.pending, i, i+1)
			l.pendMu.Unlock()
			return 0, ctx.Err()
		}
		l.pendMu.Unlock()
		<-r.done // already being written: its outcome is the answer
		return r.seq, r.err
	}
}

// lineBufs are Append's scratch for measuring a line.
var lineBufs = sync.Pool{New: func() any { return new([]byte) }}

// encodedLen is the length of e's line, measured without an allocation.
func encodedLen(e *Entry) int {
	p := lineBufs.Get().(*[]byte)
	*p = appendLine((*p)[:0], e)
	n := len(*p)
	if cap(*p) <= 4<<10 { // keep no huge buffer
		lineBufs.Put(p)
	}
	return n
}

func (l *Log) take() []*request {
	l.pendMu.Lock()
	defer l.pendMu.Unlock()
	batch := l.pending
	l.pending = nil
	return batch
}

// committer writes batches of pending appends until Close, then drains.
func (l *Log) committer() {
	defer l.wg.Done()
	for {
		var stopping bool
		select {
		case <-l.wake:
		case <-l.stop:
			stopping = true
		}
		var last int           // size of the batch just committed
		var took time.Duration // how long it took
		for {
			if !stopping {
				stopping = l.gather(last, min(took/4, maxGather))
			}
			batch := l.take()
			if len(batch) == 0 {
				break
			}
			start := time.Now()
			l.commit(batch)
			last, took = len(batch), time.Since(start)
			select {
			case l.kick <- struct{}{}:
			default:
			}
		}
		if stopping {
			return
		}
	}
}

// maxGather bounds how long the committer waits for a batch to fill.
const maxGather = 250 * time.Microsecond

// gather is the group commit window. The appends of the batch just
// committed return all at once; taking the next batch at once would catch
// only those of them that were quickest to append again, and pay a whole
// fsync for a few entries while the rest queue behind it. So the committer
// waits until as many appends are pending as it just committed, or for a
// quarter of that commit's time (at most maxGather): a lone writer (a batch
// of one) never waits, and a writer that stopped costs a short wait once.
// It waits at most window and reports whether the log is stopping.
func (l *Log) gather(last int, window time.Duration) bool {
	if last <= 1 {
		return false
	}
	timer := time.NewTimer(window)
	defer timer.Stop()
	for {
		l.pendMu.Lock()
		n := len(l.pending)
		l.pendMu.Unlock()
		if n >= last {
			return false
		}
		select {
		case <-l.wake:
		case <-timer.C:
			return false
		case <-l.stop:
			return true
		}
	}
}

// commit writes batch with one write and one fsync, under the locks.
func (l *Log) commit(batch []*request) {
	err := l.locked(func() error {
		if err := l.refreshEntries(); err != nil {
			return err
		}
		buf := l.buf[:0]
		seq, prev := l.size, l.prev
		for _, r := range batch {
			r.e.Seq, r.e.Prev = seq, hexHash(prev)
			start := len(buf)
			buf = appendLine(buf, &r.e)
			prev = lineHash(buf[start:])
			buf = append(buf, '\n')
			seq++
		}
		l.buf = buf
		if err := l.write(buf); err != nil {
			return err
		}
		l.syncs.Add(1)
		if err := fdatasync(l.entries); err != nil {
			// After a failed fsync the kernel may have dropped the data:
			// nothing this Log knows about the file can be trusted.
			l.broken = fmt.Errorf("audit: fsync entries: %w (reopen the log)", err)
			return l.broken
		}
		for line := range bytes.Lines(buf) {
			if err := l.tree.Append(hasher.HashLeaf(line[:len(line)-1]), nil); err != nil {
				l.broken = fmt.Errorf("audit: merkle tree: %w", err)
				return l.broken
			}
		}
		for _, r := range batch {
			r.seq = r.e.Seq
		}
		l.offset += int64(len(buf))
		l.size, l.prev = seq, prev
		l.published()
		return nil
	})
	for _, r := range batch {
		r.err = err
		close(r.done)
	}
}

// published makes the tail state visible to Size and the checkpointer.
func (l *Log) published() {
	l.sizeA.Store(l.size)
	l.signedA.Store(l.signed)
	if l.size <= l.signed {
		l.unsignedSince.Store(0)
	} else if l.unsignedSince.Load() == 0 {
		l.unsignedSince.Store(time.Now().UnixNano())
	}
}

// refresh catches up with entries and checkpoints other processes appended
// (on Open: with the whole log).
func (l *Log) refresh() error {
	if err := l.refreshEntries(); err != nil {
		return err
	}
	return l.refreshCheckpoints()
}

// refreshEntries reads lines past l.offset. Every writer holds the flock
// while it writes, so a partial last line seen under the flock was left by
// a writer that died mid-append: it is dropped, with whatever follows it
// up to the file's end (the preallocated zeros too).
func (l *Log) refreshEntries() error {
	data, err := l.readEntries()
	if err != nil {
		return err
	}
	if len(data) == 0 {
		return nil
	}
	lines, torn := splitEntries(data)
	for _, line := range lines {
		e, err := ParseEntry(line)
		if err != nil {
			return fmt.Errorf("%w: entry %d: %w", ErrCorrupt, l.size, err)
		}
		if e.Seq != l.size || e.Prev != hexHash(l.prev) {
			return fmt.Errorf("%w: entry %d does not chain onto entry %d", ErrCorrupt, l.size, int64(l.size)-1)
		}
		if err := l.tree.Append(hasher.HashLeaf(line), nil); err != nil {
			return fmt.Errorf("audit: merkle tree: %w", err)
		}
		l.prev = lineHash(line)
		l.size++
		l.offset += int64(len(line)) + 1
	}
	if torn != nil {
		if err := l.entries.Truncate(l.offset); err != nil {
			return fmt.Errorf("audit: drop torn entry: %w", err)
		}
		l.fileEnd = l.offset
		if err := l.entries.Sync(); err != nil {
			return fmt.Errorf("audit: drop torn entry: %w", err)
		}
	}
	l.published()
	return nil
}

// refreshCheckpoints reads checkpoints past l.cpOff to learn the newest
// signed size, dropping a partial last record as refreshEntries does.
// Checkpoints that do not verify are skipped here: Verify reports them.
func (l *Log) refreshCheckpoints() error {
	data, err := readFrom(l.cps, l.cpOff)
	if err != nil {
		return err
	}
	notes, rest := splitRecords(data)
	for _, n := range notes {
		c, _, err := openCheckpointBy(n, l.verifiers)
		if err == nil && c.Origin == l.info.Origin && c.Size > l.signed {
			if c.Size > l.size {
				return fmt.Errorf("%w: a checkpoint covers %d entries; the log has %d", ErrCorrupt, c.Size, l.size)
			}
			l.signed = c.Size
		}
		l.cpOff += int64(len(n)) + 1
	}
	if len(rest) > 0 {
		if err := l.cps.Truncate(l.cpOff); err != nil {
			return fmt.Errorf("audit: drop torn checkpoint: %w", err)
		}
		if err := l.cps.Sync(); err != nil {
			return fmt.Errorf("audit: drop torn checkpoint: %w", err)
		}
	}
	l.published()
	return nil
}

// Checkpoint signs a checkpoint over all durable entries, including those
// other processes appended, and appends it to the checkpoints file. It does
// nothing when the newest checkpoint already covers them. The background
// committer calls it every Options.CheckpointEvery entries or
// Options.CheckpointInterval, so signatures (TPM operations) are batched.
func (l *Log) Checkpoint(ctx context.Context) error {
	if l.signer == nil {
		return ErrAppendOnly
	}
	l.cpMu.Lock()
	defer l.cpMu.Unlock()
	if err := ctx.Err(); err != nil {
		return err
	}
	start := time.Now()
	var c checkpoint
	err := l.locked(func() error {
		if err := l.refresh(); err != nil || l.size <= l.signed {
			return err
		}
		c = checkpoint{Origin: l.info.Origin, Size: l.size, Root: rootOf(l.tree), KeyKind: l.info.Kind}
		return nil
	})
	if err != nil || c.Size == 0 {
		return err
	}
	// Sign outside the locks: a TPM signature is slow, and appends go on.
	rec, err := signCheckpoint(l.signer, c)
	if err != nil {
		return err
	}
	return l.locked(func() error {
		// Catch up with entries first: a checkpoint another writer
		// appended meanwhile may cover entries it appended too.
		if err := l.refresh(); err != nil || l.signed >= c.Size {
			return err // or another writer signed a newer one meanwhile
		}
		if _, err := l.cps.WriteAt(rec, l.cpOff); err != nil {
			_ = l.cps.Truncate(l.cpOff)
			return fmt.Errorf("audit: write checkpoint: %w", err)
		}
		if err := l.cps.Sync(); err != nil {
			l.broken = fmt.Errorf("audit: fsync checkpoints: %w (reopen the log)", err)
			return l.broken
		}
		l.cpOff += int64(len(rec))
		l.signed = c.Size
		l.unsignedSince.Store(0)
		l.published()
		if fn := l.onCP.Load(); fn != nil {
			(*fn)(time.Since(start))
		}
		return nil
	})
}

// checkpointer signs checkpoints when enough entries, or entries old
// enough, are unsigned. After a failure it waits an interval before trying
// again, however many entries arrive.
func (l *Log) checkpointer() {
	defer l.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var retryAt time.Time
	for {
		var fire <-chan time.Time
		size := l.sizeA.Load()
		if unsigned := size - min(l.signedA.Load(), size); unsigned > 0 {
			wait := time.Until(retryAt)
			if since := l.unsignedSince.Load(); unsigned < uint64(l.opts.CheckpointEvery) && since != 0 {
				wait = max(wait, l.opts.CheckpointInterval-time.Since(time.Unix(0, since)))
			}
			if wait <= 0 {
				retryAt = time.Time{}
				if err := l.Checkpoint(context.Background()); err != nil {
					l.bgErr.Store(&err)
					retryAt = time.Now().Add(l.opts.CheckpointInterval)
				}
				continue
			}
			timer.Reset(wait)
			fire = timer.C
		}
		select {
		case <-l.kick:
		case <-fire:
		case <-l.stop:
			timer.Stop()
			return
		}
		timer.Stop()
	}
}

// Err returns the last error of a background checkpoint, if any: a log
// whose checkpoints fail is not healthy although appends may succeed.
func (l *Log) Err() error { return l.backgroundErr() }

// backgroundErr returns the last error of a background checkpoint, if any.
func (l *Log) backgroundErr() error {
	if p := l.bgErr.Load(); p != nil {
		return *p
	}
	return nil
}
