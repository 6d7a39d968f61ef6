package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// group commits the writes of one SQLite handle that wait for each other
// in one transaction (docs/adr/0053). A write joins the queue; whoever
// takes the handle's write lock leads: it takes the writes queued so far
// (at most limit), begins one transaction, runs each write inside its own
// SAVEPOINT (rolled back to on that write's error, so one write's failure
// never undoes another's), commits once (one fsync for all) and only then
// answers each write with its own result. A commit that fails, or a
// failure that ends the transaction, fails every write of the group:
// nothing of theirs is stored.
//
// Writes that must hold a transaction across Go code of their own
// (conn.BeginTx, conn.writeRow) take the same write lock exclusively, so
// they and the groups still run one at a time.
type group struct {
	c      *conn
	limit  int
	handle string // "durable" or "lax", for GroupCommit

	// observe, when set, is told of every group committed (OnGroupCommit).
	observe atomic.Pointer[func(GroupCommit)]

	mu    sync.Mutex
	queue []*member // in arrival order; abandoned members stay until taken

	// groups and writes count the transactions committed and the writes
	// they ran; largest is the most writes one group took.
	groups, writes, largest atomic.Int64
}

// groupMax bounds a group, so one commit cannot grow without limit.
const groupMax = 256

func newGroup(c *conn, limit int, handle string) *group {
	return &group{c: c, limit: limit, handle: handle}
}

// GroupCommit is what one group commit of SQLite did (docs/adr/0053,
// 0056): on which handle ("durable", synchronous FULL, or "lax",
// synchronous NORMAL), how many writes it ran (those refused on their
// own, rolled back to their savepoint, included), and how long its
// transaction took, from BEGIN to the end of COMMIT (the fsync included
// on the durable handle): what each of its writers waited once taken.
type GroupCommit struct {
	Handle string
	Writes int
	Took   time.Duration
}

// OnGroupCommit has f told of every group commit that committed, on the
// goroutine that led it, once the group's writers are answered and while
// it still holds the write lock (so f must be quick). A later call
// replaces f. It reports whether the store group-commits: false on
// PostgreSQL and on a read-only SQLite store, which never call f.
func (s *DB) OnGroupCommit(f func(GroupCommit)) bool {
	var set bool
	for _, c := range []*conn{s.db, s.lax} {
		if c != nil && c.g != nil {
			c.g.observe.Store(&f)
			set = true
		}
	}
	return set
}

// member is one write waiting in a group's queue.
type member struct {
	ctx   context.Context
	run   func(*txn) error
	at    time.Time    // when it was queued
	state atomic.Int32 // memberQueued, then memberTaken by a leader or memberAbandoned by its caller
	err   error        // its result, set before done is closed
	done  chan struct{}
}

const (
	memberQueued int32 = iota
	memberTaken
	memberAbandoned
)

func (m *member) finish(err error) {
	m.err = err
	close(m.done)
}

// do runs run as one write of a group and returns its error (run's, or
// the group's: busy, cancelled, commit failed). run's statements go
// through the txn it is given, which runs them without ctx's
// cancellation (see txn.detached). A caller whose ctx ends, or who waits
// longer than the write lock's wait, before its write is taken gets that
// error and nothing is written; once taken, its write commits or not with
// its group and do returns that outcome.
func (g *group) do(ctx context.Context, run func(*txn) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l := g.c.wl
	m := &member{ctx: ctx, run: run, at: time.Now(), done: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, m)
	g.mu.Unlock()
	t := time.NewTimer(l.wait)
	defer t.Stop()
	select {
	case <-m.done: // a leader ran it
	case l.ch <- struct{}{}:
		g.lead(m)
	case <-ctx.Done():
		if m.state.CompareAndSwap(memberQueued, memberAbandoned) {
			return ctx.Err()
		}
		<-m.done // taken: it commits or not with its group
	case <-t.C:
		if m.state.CompareAndSwap(memberQueued, memberAbandoned) {
			return fmt.Errorf("store: waited %s for the write lock: %w", l.wait, ErrBusy)
		}
		<-m.done
	}
	return m.err
}

// lead runs groups, holding the write lock, until own is answered, then
// releases the lock. own is in the queue, so each round brings it nearer.
func (g *group) lead(own *member) {
	defer g.c.wl.release()
	for {
		select {
		case <-own.done:
			return
		default:
		}
		g.commit(g.take())
	}
}

// take removes up to limit writes from the front of the queue and returns
// those still to run; it answers, without running them, those whose
// caller's context has ended and those that waited longer than the write
// lock's wait.
func (g *group) take() []*member {
	g.mu.Lock()
	defer g.mu.Unlock()
	var (
		batch []*member
		i     int
	)
	for ; i < len(g.queue) && len(batch) < g.limit; i++ {
		m := g.queue[i]
		if !m.state.CompareAndSwap(memberQueued, memberTaken) {
			continue // its caller left
		}
		if err := m.ctx.Err(); err != nil {
			m.finish(err)
			continue
		}
		if w := g.c.wl.wait; time.Since(m.at) > w {
			m.finish(fmt.Errorf("store: waited %s for the write lock: %w", w, ErrBusy))
			continue
		}
		batch = append(batch, m)
	}
	n := copy(g.queue, g.queue[i:])
	clear(g.queue[n:])
	g.queue = g.queue[:n]
	return batch
}

// Savepoint statements; each write's savepoint is released before the
// next begins, so one name serves.
const (
	savepoint  = `SAVEPOINT w`
	rollbackTo = `ROLLBACK TO w`
	release    = `RELEASE w`
)

// commit runs batch in one transaction and answers each member.
func (g *group) commit(batch []*member) {
	if len(batch) == 0 {
		return
	}
	errs := make([]error, len(batch))
	answered := false
	defer func() {
		if !answered { // a write panicked: the transaction was not committed
			for _, m := range batch {
				m.finish(fmt.Errorf("%w: a write of the group panicked", errGroupFailed))
			}
		}
	}()
	answer := func(groupErr error) {
		answered = true
		for i, m := range batch {
			if errs[i] == nil && groupErr != nil {
				errs[i] = groupErr
			}
			m.finish(errs[i])
		}
	}
	// The group's context is never cancelled: it holds several callers'
	// writes, and an interrupted statement would roll back all of them.
	bg := context.Background()
	start := time.Now()
	sqltx, err := g.c.DB.BeginTx(bg, nil)
	if err != nil {
		answer(groupFailed("begin", err))
		return
	}
	tx := &txn{Tx: sqltx, c: g.c, unlock: func() {}, detached: true}
	defer func() { _ = ignoreDone(sqltx.Rollback()) }() // after a panic, or a failure below
	for i, m := range batch {
		if _, err := tx.ExecContext(bg, savepoint); err != nil {
			answer(groupFailed("savepoint", err))
			return
		}
		errs[i] = m.run(tx)
		end := release
		if errs[i] != nil {
			end = rollbackTo
		}
		if _, err := tx.ExecContext(bg, end); err != nil {
			// The transaction ended (SQLite rolls it back on some
			// errors): every write of the group is lost.
			answer(groupFailed("the transaction ended", err))
			return
		}
		if errs[i] != nil {
			if _, err := tx.ExecContext(bg, release); err != nil {
				answer(groupFailed("the transaction ended", err))
				return
			}
		}
	}
	if err := sqltx.Commit(); err != nil {
		answer(groupFailed("commit", err))
		return
	}
	took := time.Since(start)
	g.groups.Add(1)
	g.writes.Add(int64(len(batch)))
	for {
		l := g.largest.Load()
		if int64(len(batch)) <= l || g.largest.CompareAndSwap(l, int64(len(batch))) {
			break
		}
	}
	answer(nil)
	if f := g.observe.Load(); f != nil {
		(*f)(GroupCommit{Handle: g.handle, Writes: len(batch), Took: took})
	}
}

// errGroupFailed is the error of a write that its group's failure undid:
// nothing of it is stored.
var errGroupFailed = errors.New("store: group commit failed, nothing of this write was stored")

// groupFailed is the error of the writes of a group that failed at step
// what with err. It does not wrap err, whose meaning (a constraint, a
// missing row) is the group's, not each write's; it is ErrBusy when err
// is the database being busy.
func groupFailed(what string, err error) error {
	if busy(err) {
		return fmt.Errorf("%w: %s: %w: %v", errGroupFailed, what, ErrBusy, err) //nolint:errorlint // err's meaning is the group's, not this write's
	}
	return fmt.Errorf("%w: %s: %v", errGroupFailed, what, err) //nolint:errorlint // as above
}

// exec runs one statement that writes as a write of the group.
func (g *group) exec(ctx context.Context, query string, args ...any) (sql.Result, error) {
	var res sql.Result
	err := g.do(ctx, func(tx *txn) error {
		var err error
		res, err = tx.ExecContext(ctx, query, args...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}
