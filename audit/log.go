package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
)

// Errors callers branch on.
var (
	ErrExists      = errors.New("audit: a log already exists in this directory")
	ErrClosed      = errors.New("audit: log is closed")
	ErrKeyMismatch = errors.New("audit: signer's key is not the log's key")
	// ErrAppendOnly: the log was opened without a signer (OpenAppend).
	ErrAppendOnly = errors.New("audit: log is open for appending only: it cannot sign a checkpoint")
	// ErrCorrupt: the files are not a log this writer can extend (entries
	// that do not chain, a file that shrank, a checkpoint beyond the
	// entries). Verify says exactly what is wrong.
	ErrCorrupt = errors.New("audit: log is corrupt")
)

// Options configure a Log. The zero value gives the defaults.
type Options struct {
	// Origin is the checkpoint origin and signed-note key name, e.g.
	// "writ.dev/audit/node/<id>". Required by Create; Open takes it from
	// key.json and refuses a different one.
	Origin string
	// CheckpointEvery: sign a checkpoint once this many entries are unsigned
	// (default 256).
	CheckpointEvery int
	// CheckpointInterval: or once the oldest unsigned entry is this old
	// (default 1s).
	CheckpointInterval time.Duration
	// NoCheckpointOnClose stops Close from signing a final checkpoint over
	// unsigned entries.
	NoCheckpointOnClose bool
}

func (o Options) withDefaults() Options {
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = 256
	}
	if o.CheckpointInterval <= 0 {
		o.CheckpointInterval = time.Second
	}
	return o
}

var (
	hasher       = rfc6962.DefaultHasher
	rangeFactory = &compact.RangeFactory{Hash: hasher.HashChildren}
)

// Log is an open audit log. Its methods are safe for concurrent use, and
// several processes may hold the same log open: writers serialize on an
// exclusive flock and each catches up with what the others appended.
type Log struct {
	dir       string
	opts      Options
	info      *KeyInfo
	signer    note.Signer
	verifiers note.Verifiers // of every key in the history

	fileMu  sync.Mutex // held with the flock; guards the fields down to broken
	lock    *flock
	entries *os.File
	cps     *os.File
	offset  int64 // length of entries.jsonl known complete
	fileEnd int64 // entries.jsonl's size: zeros from offset to here (prealloc.go)
	grow    int64 // the last extension of the zeros
	opened  bool  // the tail past offset was read whole once (readEntries)
	size    uint64
	prev    [sha256.Size]byte // chain hash of the last line
	tree    *compact.Range
	cpOff   int64  // length of the checkpoints file known complete
	signed  uint64 // size of the newest checkpoint
	buf     []byte
	broken  error // the files' state is unknown (failed fsync) or they are closed

	state                *os.File  // tail cache (state.go)
	savedOff, savedCPOff int64     // tail the cache holds
	savedLen             int       // the cache file's length
	probe                [512]byte // readEntries' first read
	rebuilt              bool      // Open read the whole log: the cache was unusable (tests)

	cpMu sync.Mutex // one Checkpoint at a time

	pendMu  sync.Mutex
	pending []*request
	closed  bool

	wake  chan struct{} // pending has requests
	kick  chan struct{} // entries were committed
	stop  chan struct{} // Close
	wg    sync.WaitGroup
	bgErr atomic.Pointer[error]               // last background checkpoint error
	onCP  atomic.Pointer[func(time.Duration)] // OnCheckpoint

	// Read without fileMu.
	sizeA         atomic.Uint64
	signedA       atomic.Uint64
	unsignedSince atomic.Int64 // unix nanos when the oldest unsigned entry was seen; 0 if none

	syncs atomic.Int64 // fsyncs of entries.jsonl (tests)
}

// Create makes a new log in dir (created 0700 if missing) whose checkpoints
// signer signs and info describes; it refuses a directory that already
// holds a log. For a KeyTPM key, info's certification must check out
// against its own AK (attest.CheckPCRKey) and certify signer's key.
func Create(dir string, signer crypto.Signer, info KeyInfo, opts Options) (*Log, error) {
	if !isValidKeyName(opts.Origin) {
		return nil, fmt.Errorf("audit: invalid origin %q (non-empty, no spaces, no '+')", opts.Origin)
	}
	_, spki, err := p256Key(signer.Public())
	if err != nil {
		return nil, err
	}
	if info.Kind != KeyTPM && info.Kind != KeyFile {
		return nil, fmt.Errorf("audit: key kind %q is not %q or %q", info.Kind, KeyTPM, KeyFile)
	}
	if info.Origin != "" && info.Origin != opts.Origin {
		return nil, fmt.Errorf("audit: key info origin %q is not %q", info.Origin, opts.Origin)
	}
	info.Origin = opts.Origin
	if len(info.PublicKey) == 0 {
		info.PublicKey = spki
	}
	pub, err := info.publicKey()
	if err != nil {
		return nil, err
	}
	if !pub.Equal(signer.Public()) {
		return nil, ErrKeyMismatch
	}
	if info.Kind == KeyTPM {
		if err := info.checkCertification(info.AKPublic); err != nil {
			return nil, err
		}
	}
	keyJSON, err := info.marshal()
	if err != nil {
		return nil, err
	}
	if err := initDir(dir, keyJSON); err != nil {
		return nil, err
	}
	return Open(dir, signer, opts)
}

func initDir(dir string, keyJSON []byte) error {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if err := os.Chmod(dir, dirMode); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return withLock(dir, func() error {
		if _, err := os.Stat(filepath.Join(dir, keyFile)); !errors.Is(err, os.ErrNotExist) {
			return ErrExists
		}
		if st, err := os.Stat(filepath.Join(dir, entriesFile)); err == nil && st.Size() > 0 {
			return ErrExists
		}
		// key.json goes last: a directory holds a log once it exists.
		for _, name := range []string{entriesFile, checkpointsFile, stateFile} {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDWR|os.O_CREATE|os.O_TRUNC, fileMode)
			if err != nil {
				return fmt.Errorf("audit: %w", err)
			}
			err = f.Sync()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return fmt.Errorf("audit: %w", err)
			}
		}
		tmp := filepath.Join(dir, keyFile+".tmp")
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, fileMode)
		if err != nil {
			return fmt.Errorf("audit: %w", err)
		}
		_, err = f.Write(keyJSON)
		if err == nil {
			err = f.Sync()
		}
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err == nil {
			err = os.Rename(tmp, filepath.Join(dir, keyFile))
		}
		if err == nil {
			err = syncDir(dir)
		}
		if err != nil {
			return fmt.Errorf("audit: write key.json: %w", err)
		}
		return nil
	})
}

// Open opens the log in dir for appending with signer, which must hold the
// newest key of the log's history (key.json's, or the last AddKey added). It drops a torn last line or checkpoint (a crash mid
// append) and rebuilds the Merkle tree's state: from the state cache and the
// entries past it when the cache checks out against the files, otherwise from
// every entry. The entries it reads must chain (ErrCorrupt otherwise);
// Verify is what checks a whole log.
func Open(dir string, signer crypto.Signer, opts Options) (*Log, error) {
	return open(dir, signer, opts)
}

// OpenAppend opens the log in dir for appending only, without a signer: it
// takes the newest key of the log's history as the log's key (its public
// part, to check the checkpoints it reads), starts no background
// checkpointer and signs nothing on Close; Checkpoint returns
// ErrAppendOnly. Entries it appends are durable when Append returns and
// stay unsigned until a Log opened with the key's signer (Open) signs a
// checkpoint over them. A node appends decisions this way without loading
// its TPM-resident key (docs/adr/0021).
func OpenAppend(dir string, opts Options) (*Log, error) {
	return open(dir, nil, opts)
}

// open opens the log with signer, or append-only when signer is nil.
func open(dir string, signer crypto.Signer, opts Options) (*Log, error) {
	opts = opts.withDefaults()
	h, err := readKeyHistory(dir)
	if err != nil {
		return nil, err
	}
	if opts.Origin != "" && opts.Origin != h[0].Origin {
		return nil, fmt.Errorf("audit: log origin is %q, not %q", h[0].Origin, opts.Origin)
	}
	opts.Origin = h[0].Origin
	// Only the newest key signs: keys sign in history order (Verify).
	idx := len(h) - 1
	info := h[idx]
	var ns note.Signer
	if signer != nil {
		_, spki, err := p256Key(signer.Public())
		if err != nil {
			return nil, err
		}
		if !bytes.Equal(info.PublicKey, spki) {
			return nil, ErrKeyMismatch
		}
		if ns, err = NewNoteSigner(info.Origin, signer); err != nil {
			return nil, err
		}
	} else {
		opts.NoCheckpointOnClose = true
	}
	vs, err := h.verifiers()
	if err != nil {
		return nil, err
	}
	nv := noteVerifiers(vs)
	l := &Log{
		dir: dir, opts: opts, info: info, signer: ns, verifiers: nv,
		tree: rangeFactory.NewEmptyRange(0),
		wake: make(chan struct{}, 1), kick: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	if err := l.openFiles(); err != nil {
		_ = l.closeFiles()
		return nil, err
	}
	err = l.locked(func() error {
		if l.loadState() != nil {
			l.rebuilt = true
		}
		return l.refresh()
	})
	if err != nil {
		_ = l.closeFiles()
		return nil, err
	}
	l.wg.Add(1)
	go l.committer()
	if l.signer != nil {
		l.wg.Add(1)
		go l.checkpointer()
	}
	return l, nil
}

func (l *Log) openFiles() error {
	var err error
	if l.lock, err = openLock(l.dir); err != nil {
		return err
	}
	if l.entries, err = os.OpenFile(filepath.Join(l.dir, entriesFile), os.O_RDWR, 0); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if l.cps, err = os.OpenFile(filepath.Join(l.dir, checkpointsFile), os.O_RDWR|os.O_CREATE, fileMode); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	if l.state, err = openState(l.dir); err != nil {
		return fmt.Errorf("audit: %w", err)
	}
	return nil
}

func (l *Log) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{l.entries, l.cps, l.state} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	if l.lock != nil {
		errs = append(errs, l.lock.close())
	}
	return errors.Join(errs...)
}

// OnCheckpoint has fn called with how long each checkpoint this Log
// writes took to sign and make durable (for metrics); nil stops it. fn
// runs on the signing goroutine: it must be quick.
func (l *Log) OnCheckpoint(fn func(time.Duration)) {
	if fn == nil {
		l.onCP.Store(nil)
		return
	}
	l.onCP.Store(&fn)
}

// Size returns the number of durable entries this Log knows of (its own and
// those it has seen other processes append).
func (l *Log) Size() uint64 { return l.sizeA.Load() }

// Close commits pending appends, signs a final checkpoint over unsigned
// entries (unless Options.NoCheckpointOnClose) and closes the files. It
// returns the final checkpoint's error or, with NoCheckpointOnClose, the
// last background checkpoint's.
func (l *Log) Close() error {
	l.pendMu.Lock()
	if l.closed {
		l.pendMu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.pendMu.Unlock()
	close(l.stop)
	l.wg.Wait()
	var errs []error
	if l.opts.NoCheckpointOnClose {
		errs = append(errs, l.backgroundErr())
	} else {
		errs = append(errs, l.Checkpoint(context.Background()))
	}
	errs = append(errs, l.dropTail())
	l.cpMu.Lock()
	l.fileMu.Lock()
	if l.broken == nil {
		l.broken = ErrClosed
	}
	errs = append(errs, l.closeFiles())
	l.fileMu.Unlock()
	l.cpMu.Unlock()
	return errors.Join(errs...)
}

// locked runs fn holding the log's locks: this process's mutex and the
// directory's flock.
func (l *Log) locked(fn func() error) error {
	l.fileMu.Lock()
	defer l.fileMu.Unlock()
	if l.broken != nil {
		return l.broken
	}
	if err := l.lock.lock(); err != nil {
		return err
	}
	defer l.lock.unlock()
	err := fn()
	if l.broken == nil {
		l.saveState(false)
	}
	return err
}
