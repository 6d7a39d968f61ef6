package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// The group commit of SQLite's durable handle (group.go, docs/adr/0053).
// Most tests hold the write lock (an exclusive transaction) while writes
// queue behind it, so that they run as one group when it is released.

// holdWriteLock takes the write lock as an exclusive writer does and
// returns its release.
func holdWriteLock(t *testing.T, s *DB) func() {
	t.Helper()
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	return func() {
		if err := tx.Rollback(); err != nil {
			t.Error(err)
		}
	}
}

// waitQueued waits until n writes are queued in s's group.
func waitQueued(t *testing.T, s *DB, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute) // a guard against a hang, not a measurement
	for {
		s.db.g.mu.Lock()
		q := len(s.db.g.queue)
		s.db.g.mu.Unlock()
		if q >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d writes queued, want %d", q, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// queueInOrder starts each write in its own goroutine, one after the
// other once the previous one is queued, and returns their errors when
// all have returned (after release is called).
func queueInOrder(t *testing.T, s *DB, release func(), writes ...func() error) []error {
	t.Helper()
	errs := make([]error, len(writes))
	var wg sync.WaitGroup
	for i, w := range writes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = w()
		}()
		waitQueued(t, s, i+1)
	}
	release()
	wg.Wait()
	return errs
}

func groupCounts(s *DB) (groups, writes int64) {
	return s.db.g.groups.Load(), s.db.g.writes.Load()
}

// TestGroupConsumeNonceOnce: many callers consuming one nonce in the same
// group: exactly one wins, the others are told it was replayed.
func TestGroupConsumeNonceOnce(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	v := []byte("the-nonce")
	if err := s.PutNonce(ctx, Nonce{Value: v, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	const n = 48
	writes := make([]func() error, n)
	for i := range writes {
		writes[i] = func() error { return s.ConsumeNonce(ctx, "n1", v, t0) }
	}
	g0, w0 := groupCounts(s)
	errs := queueInOrder(t, s, holdWriteLock(t, s), writes...)
	wins := 0
	for i, err := range errs {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrNonceReplayed):
			t.Errorf("consume %d: %v, want nil or ErrNonceReplayed", i, err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d of %d consumes of one nonce won, want 1", wins, n)
	}
	if g, w := groupCounts(s); g-g0 != 1 || w-w0 != n {
		t.Fatalf("%d groups ran %d writes; want the %d consumes in one group", g-g0, w-w0, n)
	}
}

// TestGroupConsumeNonceRace: the same without holding the lock: the
// consumes land in whatever groups form.
func TestGroupConsumeNonceRace(t *testing.T) {
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	for round := range 5 {
		v := []byte(fmt.Sprintf("nonce-%d", round))
		if err := s.PutNonce(ctx, Nonce{Value: v, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
			t.Fatal(err)
		}
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			wins int
		)
		for range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				err := s.ConsumeNonce(ctx, "n1", v, t0)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins++
				case !errors.Is(err, ErrNonceReplayed):
					t.Errorf("consume: %v", err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("round %d: %d consumes of one nonce won, want 1", round, wins)
		}
	}
}

// TestGroupOneFailureLeavesOthers: in one group, writes that fail (a
// duplicate SVID serial, a nonce of an unknown node, a used writ, a
// transaction that fails after its first write) are refused alone, and
// nothing of theirs is stored; the others commit.
func TestGroupOneFailureLeavesOthers(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	r := failedResult("r0", "n1", t0)
	if err := s.PutResult(ctx, r); err != nil {
		t.Fatal(err)
	}
	svid := func(serial string) SVID {
		return SVID{Serial: serial, NodeID: "n1", SPIFFEID: "spiffe://x/node/n1", ResultID: "r0", IssuedAt: t0, NotAfter: t0.Add(time.Hour)}
	}
	if err := s.PutSVID(ctx, svid("s1")); err != nil {
		t.Fatal(err)
	}
	nonce := func(v, node string) Nonce {
		return Nonce{Value: []byte(v), NodeID: node, ExpiresAt: t0.Add(time.Hour)}
	}
	g0, _ := groupCounts(s)
	errs := queueInOrder(t, s, holdWriteLock(t, s),
		func() error { return s.PutNonce(ctx, nonce("v1", "n1")) },
		func() error { return s.PutSVID(ctx, svid("s1")) }, // duplicate serial
		func() error { return s.PutNonce(ctx, nonce("v2", "ghost")) },
		func() error { return s.IssueNonce(ctx, nonce("v3", "n1"), 10) },
		func() error { // the first result is written, the second refers to no node
			_, _, err := s.PutResultStates(ctx, []ResultState{
				{Result: failedResult("r1", "n1", t0.Add(time.Second)), State: NodeFailed, Reason: "x"},
				{Result: failedResult("r2", "ghost", t0.Add(time.Second)), State: NodeFailed, Reason: "x"},
			}, t0)
			return err
		},
		func() error { return s.ConsumeWrit(ctx, "j1", t0.Add(time.Hour), t0) },
		func() error { return s.ConsumeWrit(ctx, "j1", t0.Add(time.Hour), t0) },
		func() error { return s.PutSVID(ctx, svid("s2")) },
	)
	if g, _ := groupCounts(s); g-g0 != 1 {
		t.Fatalf("%d groups, want 1", g-g0)
	}
	for i, want := range []error{nil, errAny, ErrNotFound, nil, ErrNotFound, nil, ErrWritUsed, nil} {
		switch {
		case want == nil && errs[i] != nil:
			t.Errorf("write %d: %v, want success", i, errs[i])
		case errors.Is(want, errAny) && errs[i] == nil:
			t.Errorf("write %d succeeded, want an error", i)
		case want != nil && !errors.Is(want, errAny) && !errors.Is(errs[i], want):
			t.Errorf("write %d: %v, want %v", i, errs[i], want)
		}
	}
	for _, v := range []string{"v1", "v3"} {
		if err := s.ConsumeNonce(ctx, "n1", []byte(v), t0); err != nil {
			t.Errorf("nonce %s not committed: %v", v, err)
		}
	}
	if err := s.ConsumeNonce(ctx, "ghost", []byte("v2"), t0); !errors.Is(err, ErrNonceUnknown) {
		t.Errorf("the refused nonce: %v, want ErrNonceUnknown", err)
	}
	if _, err := s.Result(ctx, "r1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("the refused transaction's first result was stored: %v", err)
	}
	if _, err := s.SVIDBySerial(ctx, "s2"); err != nil {
		t.Errorf("SVID s2 not committed: %v", err)
	}
	if err := s.ConsumeWrit(ctx, "j1", t0.Add(time.Hour), t0); !errors.Is(err, ErrWritUsed) {
		t.Errorf("writ j1 not recorded used: %v", err)
	}
}

// errAny stands for any error in a table of wanted errors.
var errAny = errors.New("any error")

// TestGroupCancelledBeforeRun: a caller whose context ends while its
// write is queued gets the context's error and nothing is written.
func TestGroupCancelledBeforeRun(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	cctx, cancel := context.WithCancel(ctx)
	release := holdWriteLock(t, s)
	done := make(chan error, 1)
	go func() {
		done <- s.PutNonce(cctx, Nonce{Value: []byte("v1"), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)})
	}()
	waitQueued(t, s, 1)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("a cancelled queued write: %v, want context.Canceled", err)
	}
	release()
	// The next write leads a group that finds the cancelled one.
	if err := s.PutNonce(ctx, Nonce{Value: []byte("v2"), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("v1"), t0); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("the cancelled write was stored: ConsumeNonce = %v", err)
	}
}

// TestGroupCancelledWhileRunning: a caller whose context ends after its
// write started still has all of it committed (its statements run
// without the caller's cancellation, which would interrupt the
// connection and roll back the whole group's transaction), and so do
// the other writes of its group.
func TestGroupCancelledWhileRunning(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	nonce := func(v string) Nonce { return Nonce{Value: []byte(v), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)} }
	errs := queueInOrder(t, s, holdWriteLock(t, s),
		func() error { return s.PutNonce(ctx, nonce("before")) },
		func() error {
			return s.inTx(cctx, "test", func(tx *txn) error {
				if err := putNonce(cctx, tx, nonce("v1")); err != nil {
					return err
				}
				cancel() // the caller gives up in the middle of its write
				return putNonce(cctx, tx, nonce("v2"))
			})
		},
		func() error { return s.PutNonce(ctx, nonce("after")) },
	)
	for i, err := range errs {
		if err != nil {
			t.Errorf("write %d: %v", i, err)
		}
	}
	for _, v := range []string{"before", "v1", "v2", "after"} {
		if err := s.ConsumeNonce(ctx, "n1", []byte(v), t0); err != nil {
			t.Errorf("nonce %s not committed: %v", v, err)
		}
	}
}

// TestGroupFailedCommitFailsAll: a COMMIT that fails (here a deferred
// foreign key that one write of the group left violated, which SQLite
// checks at COMMIT) fails every write of the group, stores none of them,
// and leaves the store usable.
func TestGroupFailedCommitFailsAll(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	nonce := func(v string) Nonce { return Nonce{Value: []byte(v), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)} }
	errs := queueInOrder(t, s, holdWriteLock(t, s),
		func() error { return s.PutNonce(ctx, nonce("v1")) },
		func() error {
			return s.db.g.do(ctx, func(tx *txn) error {
				if _, err := tx.ExecContext(ctx, `PRAGMA defer_foreign_keys = ON`); err != nil {
					return err
				}
				return putNonce(ctx, tx, Nonce{Value: []byte("orphan"), NodeID: "ghost", ExpiresAt: t0.Add(time.Hour)})
			})
		},
		func() error { return s.IssueNonce(ctx, nonce("v2"), 10) },
	)
	for i, err := range errs {
		if !errors.Is(err, errGroupFailed) || errors.Is(err, ErrNotFound) {
			t.Errorf("write %d of a group whose COMMIT failed: %v, want a commit error", i, err)
		}
	}
	for _, v := range []string{"v1", "v2"} {
		if err := s.ConsumeNonce(ctx, "n1", []byte(v), t0); !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("nonce %s of the failed group was stored: %v", v, err)
		}
	}
	if err := s.PutNonce(ctx, nonce("v3")); err != nil {
		t.Fatalf("a write after the failed commit: %v", err)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("v3"), t0); err != nil {
		t.Fatalf("the write after the failed commit: %v", err)
	}
}

// TestGroupEndedTransactionFailsAll: a write that ends the group's
// transaction (a ROLLBACK; SQLite also rolls back on some errors) fails
// every write of the group, the ones before it included, and none is
// stored.
func TestGroupEndedTransactionFailsAll(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	nonce := func(v string) Nonce { return Nonce{Value: []byte(v), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)} }
	errs := queueInOrder(t, s, holdWriteLock(t, s),
		func() error { return s.PutNonce(ctx, nonce("v1")) },
		func() error {
			return s.db.g.do(ctx, func(tx *txn) error {
				_, err := tx.ExecContext(ctx, `ROLLBACK`)
				return err
			})
		},
		func() error { return s.PutNonce(ctx, nonce("v2")) },
	)
	for i, err := range errs {
		if !errors.Is(err, errGroupFailed) {
			t.Errorf("write %d of a group whose transaction ended: %v, want errGroupFailed", i, err)
		}
	}
	for _, v := range []string{"v1", "v2"} {
		if err := s.ConsumeNonce(ctx, "n1", []byte(v), t0); !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("nonce %s of the failed group was stored: %v", v, err)
		}
	}
	if err := s.PutNonce(ctx, nonce("v3")); err != nil {
		t.Fatalf("a write after the failed group: %v", err)
	}
}

// TestGroupSizeBound: writes queued beyond groupMax are committed in
// further groups, none larger than groupMax.
func TestGroupSizeBound(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	const n = 2*groupMax + 50
	release := holdWriteLock(t, s)
	g0, w0 := groupCounts(s)
	errs := make(chan error, n)
	for i := range n {
		go func() {
			errs <- s.PutNonce(ctx, Nonce{Value: []byte(fmt.Sprintf("v%d", i)), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)})
		}()
	}
	waitQueued(t, s, n)
	release()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	g, w := groupCounts(s)
	if w-w0 != n || g-g0 < 3 {
		t.Fatalf("%d writes in %d groups; want %d writes in at least 3", w-w0, g-g0, n)
	}
	if l := s.db.g.largest.Load(); l > groupMax {
		t.Fatalf("a group of %d writes; at most %d allowed", l, groupMax)
	}
}

// TestGroupDurable: what callers were told is committed is there after
// the store is closed and opened again.
func TestGroupDurable(t *testing.T) {
	sqliteOnly(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	putNodes(t, s, "n1")
	ctx := context.Background()
	const n = 200
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		told []int
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if s.IssueNonce(ctx, Nonce{Value: []byte(fmt.Sprintf("v%d", i)), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}, n) != nil {
				return
			}
			if s.ConsumeWrit(ctx, fmt.Sprintf("j%d", i), t0.Add(time.Hour), t0) != nil {
				return
			}
			mu.Lock()
			told = append(told, i)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(told) != n {
		t.Fatalf("%d of %d writes committed", len(told), n)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTest(t, path)
	for _, i := range told {
		if err := s.ConsumeNonce(ctx, "n1", []byte(fmt.Sprintf("v%d", i)), t0); err != nil {
			t.Errorf("nonce v%d after reopening: %v", i, err)
		}
		if err := s.ConsumeWrit(ctx, fmt.Sprintf("j%d", i), t0.Add(time.Hour), t0); !errors.Is(err, ErrWritUsed) {
			t.Errorf("writ j%d after reopening: %v, want ErrWritUsed", i, err)
		}
	}
}

// TestGroupLeaderRefusesStaleWrites: a write that waited in the queue
// longer than the write lock's wait when a leader comes to it is refused
// ErrBusy without running, as it would have been had it waited for the
// lock alone (docs/adr/0046); a write cancelled meanwhile gets its
// context's error; a fresh one runs.
func TestGroupLeaderRefusesStaleWrites(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	g := s.db.g
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	var ran []string
	queued := func(ctx context.Context, name string, age time.Duration) *member {
		m := &member{ctx: ctx, at: time.Now().Add(-age), done: make(chan struct{}),
			run: func(*txn) error { ran = append(ran, name); return nil }}
		g.mu.Lock()
		g.queue = append(g.queue, m)
		g.mu.Unlock()
		return m
	}
	stale := queued(context.Background(), "stale", 2*g.c.wl.wait)
	gone := queued(cancelled, "cancelled", 0)
	fresh := queued(context.Background(), "fresh", 0)
	g.commit(g.take())
	for _, m := range []*member{stale, gone, fresh} {
		<-m.done
	}
	if !errors.Is(stale.err, ErrBusy) || !errors.Is(gone.err, context.Canceled) || fresh.err != nil {
		t.Fatalf("stale: %v, cancelled: %v, fresh: %v", stale.err, gone.err, fresh.err)
	}
	if len(ran) != 1 || ran[0] != "fresh" {
		t.Fatalf("writes run: %v, want only the fresh one", ran)
	}
}

// TestGroupCommitReported: OnGroupCommit is told of each group that
// committed on real SQLite: three writes queued behind the write lock
// commit as one group of three on the durable handle, with its
// transaction's time. PostgreSQL, which has no group commit, says so.
func TestGroupCommitReported(t *testing.T) {
	if backend != "sqlite" {
		if s := newStore(t); s.OnGroupCommit(func(GroupCommit) {}) {
			t.Fatalf("%s store: OnGroupCommit reported a group commit", backend)
		}
		return
	}
	s := newStore(t)
	var (
		mu  sync.Mutex
		got []GroupCommit
	)
	if !s.OnGroupCommit(func(c GroupCommit) { mu.Lock(); got = append(got, c); mu.Unlock() }) {
		t.Fatal("SQLite store: OnGroupCommit reported no group commit")
	}
	ctx := context.Background()
	putNodes(t, s, "n1") // one group, reported
	mu.Lock()
	got = nil
	mu.Unlock()
	release := holdWriteLock(t, s)
	put := func(v byte) func() error {
		return func() error {
			return s.IssueNonce(ctx, Nonce{Value: []byte{v}, NodeID: "n1", ExpiresAt: time.Now().Add(time.Minute)}, 10)
		}
	}
	for i, err := range queueInOrder(t, s, release, put(1), put(2), put(3)) {
		if err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 1 || got[0].Handle != "durable" || got[0].Writes != 3 || got[0].Took <= 0 {
		t.Fatalf("reported %+v, want one durable group of 3 writes with its time", got)
	}
}
