package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestBusyWriteLockWaitsOut: a writer that queues behind this process's
// write lock longer than its wait is refused with ErrBusy (not an
// unclassified error), and writes nothing.
func TestBusyWriteLockWaitsOut(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	s.db.wl.wait = 50 * time.Millisecond
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil) // holds the write lock
	if err != nil {
		t.Fatal(err)
	}
	err = s.PutNonce(ctx, Nonce{Value: []byte("v1"), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)})
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("PutNonce behind a held write lock: %v, want ErrBusy", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("v1"), t0); !errors.Is(err, ErrNonceUnknown) {
		t.Fatalf("the busy PutNonce stored its nonce: ConsumeNonce = %v", err)
	}
	// Released by Rollback: the next writer goes through.
	if err := s.PutNonce(ctx, Nonce{Value: []byte("v2"), NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
		t.Fatalf("PutNonce after the lock was released: %v", err)
	}
}

// TestBusyReadsDoNotWaitForTheWriter: reads run beside a write
// transaction (WAL), never behind the write lock.
func TestBusyReadsDoNotWaitForTheWriter(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	putNodes(t, s, "n1")
	s.db.wl.wait = time.Hour // a read that queued would hang, not fail
	ctx := context.Background()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if n, err := s.Node(rctx, "n1"); err != nil || n.ID != "n1" {
		t.Fatalf("Node while a writer holds the lock: %+v, %v", n, err)
	}
	if _, err := s.LatestVerdict(rctx, "n1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("LatestVerdict while a writer holds the lock: %v, want ErrNotFound", err)
	}
}

// TestBusyLockReleasedOnEveryPath: transactions that fail (RevokeWrit of
// an unknown writ rolls back) and writes that fail (a duplicate
// ConsumeWrit) release the write lock.
func TestBusyLockReleasedOnEveryPath(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	s.db.wl.wait = 100 * time.Millisecond
	ctx := context.Background()
	for i := range 3 {
		if _, err := s.RevokeWrit(ctx, "unknown", "r", t0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("RevokeWrit %d: %v", i, err)
		}
		if err := s.ConsumeWrit(ctx, "j", t0.Add(time.Hour), t0); i > 0 && !errors.Is(err, ErrWritUsed) || i == 0 && err != nil {
			t.Fatalf("ConsumeWrit %d: %v", i, err)
		}
		if _, err := s.TakeEnrollment(ctx, "none", t0); !errors.Is(err, ErrNotFound) {
			t.Fatalf("TakeEnrollment %d: %v", i, err)
		}
	}
	if _, err := s.BundleSequence(ctx, []byte("c")); err != nil {
		t.Fatalf("a write after failed ones: %v", err)
	}
}

// TestBusyAcrossProcesses: another process's connection to the file
// that finds it locked (here by the store's own transaction) gets
// SQLITE_BUSY after its busy_timeout, which the store classifies as
// ErrBusy; the store keeps busy_timeout for such writers.
func TestBusyAcrossProcesses(t *testing.T) {
	sqliteOnly(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s := openTest(t, path)
	ctx := context.Background()
	other, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?_pragma=busy_timeout(50)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Close() }()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	_, err = other.ExecContext(ctx, `INSERT INTO used_writs (jti, expires_at, used_at) VALUES ('x', 1, 1)`)
	if err == nil {
		t.Fatal("a second connection wrote while the store held the write transaction")
	}
	if !errors.Is(wrap("test", err), ErrBusy) {
		t.Fatalf("SQLITE_BUSY from another connection is not ErrBusy: %v", err)
	}
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA busy_timeout").Scan(&mode); err != nil || mode != "5000" {
		t.Fatalf("busy_timeout = %q, %v; want 5000 for writers of other processes", mode, err)
	}
}

// TestBusyPostgresLockTimeout: PostgreSQL's lock timeout (and a
// deadlock) are ErrBusy; a unique violation is not.
func TestBusyPostgresLockTimeout(t *testing.T) {
	if backend != "postgres" {
		t.Skip("about PostgreSQL's errors; runs in the PostgreSQL pass")
	}
	dsn := location(t, filepath.Join(t.TempDir(), "broker.db"))
	s, err := OpenPostgres(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = s.Close() }()
	putNodes(t, s, "n1")
	ctx := context.Background()
	a, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = a.Rollback() }()
	if _, err := a.ExecContext(ctx, `SELECT 1 FROM nodes WHERE id = 'n1' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	b, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = b.Rollback() }()
	if _, err := b.ExecContext(ctx, `SET LOCAL lock_timeout = '50ms'`); err != nil {
		t.Fatal(err)
	}
	_, err = b.ExecContext(ctx, `UPDATE nodes SET state_reason = 'x' WHERE id = 'n1'`)
	if err == nil || !errors.Is(wrap("test", err), ErrBusy) {
		t.Fatalf("a lock timeout: %v, want ErrBusy", err)
	}
	if err := s.ConsumeWrit(ctx, "j", t0.Add(time.Hour), t0); err != nil {
		t.Fatal(err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO used_writs (jti, expires_at, used_at) VALUES ('j', 1, 1)`)
	if err == nil || errors.Is(wrap("test", err), ErrBusy) {
		t.Fatalf("a unique violation: %v, want an error that is not ErrBusy", err)
	}
}

// TestWritersConcurrently: many goroutines writing at once (nonces put
// and consumed, writs consumed once, issued writs on the lax handle)
// all succeed and keep their single-use guarantees, readers beside them.
func TestWritersConcurrently(t *testing.T) {
	s := newStore(t)
	putNodes(t, s, "n1")
	ctx := context.Background()
	const n = 32
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		errs  []error
		wins  int
		fails = func(err error) {
			mu.Lock()
			defer mu.Unlock()
			errs = append(errs, err)
		}
	)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := []byte(fmt.Sprintf("nonce-%d", i))
			if err := s.PutNonce(ctx, Nonce{Value: v, NodeID: "n1", ExpiresAt: t0.Add(time.Hour)}); err != nil {
				fails(err)
				return
			}
			if err := s.ConsumeNonce(ctx, "n1", v, t0); err != nil {
				fails(err)
			}
			if err := s.ConsumeNonce(ctx, "n1", v, t0); !errors.Is(err, ErrNonceReplayed) {
				fails(fmt.Errorf("second consume of %s: %w", v, err))
			}
			err := s.ConsumeWrit(ctx, "shared", t0.Add(time.Hour), t0)
			switch {
			case err == nil:
				mu.Lock()
				wins++
				mu.Unlock()
			case !errors.Is(err, ErrWritUsed):
				fails(err)
			}
			if err := s.PutIssuedWrit(ctx, IssuedWrit{JTI: fmt.Sprintf("w%d", i), Subject: "s", Node: "n",
				IssuedAt: t0, ExpiresAt: t0.Add(time.Hour)}); err != nil {
				fails(err)
			}
			if _, err := s.Node(ctx, "n1"); err != nil {
				fails(err)
			}
		}()
	}
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d errors, first: %v", len(errs), errs[0])
	}
	if wins != 1 {
		t.Fatalf("the single-use writ was consumed %d times", wins)
	}
	for i := range n {
		if _, err := s.IssuedWrit(ctx, fmt.Sprintf("w%d", i)); err != nil {
			t.Fatalf("issued writ w%d: %v", i, err)
		}
	}
}
