package store

import (
	"context"
	"sync"
)

// issuedBatcher is the group commit of issued-writ records on SQLite
// (PutIssuedWrit): writs issued at the same moment are inserted in one
// transaction of the lax handle, so the write lock and the WAL append are
// paid once per batch, not once per writ. Each request is answered after
// the transaction holding its insert commits, with its own outcome: SQLite
// rolls back only the statement that fails (a duplicate jti), not the
// transaction, and an insert refused for a revoked parent affects no row
// (ErrParentRevoked). A failure to begin or commit fails the whole batch.
//
// Leader and followers, no goroutine of its own: the first request that
// finds no batch running commits the waiting requests (its own among
// them); requests that arrive meanwhile wait, and the first of them leads
// the next batch once this one is done.
type issuedBatcher struct {
	mu      sync.Mutex
	running bool
	pending []*issuedReq
}

// maxIssuedBatch bounds a batch, so a leader's wait stays short.
const maxIssuedBatch = 256

type issuedReq struct {
	args []any // putIssuedQuery's arguments
	err  error
	done chan struct{} // closed when err is set
	lead chan struct{} // closed when this request is to lead the next batch
}

// put inserts one record through the batcher.
func (b *issuedBatcher) put(ctx context.Context, lax *conn, args []any) error {
	r := &issuedReq{args: args, done: make(chan struct{}), lead: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, r)
	if b.running {
		b.mu.Unlock()
		select {
		case <-r.done:
			return r.err
		case <-r.lead:
		}
	} else {
		b.running = true
		b.mu.Unlock()
	}
	// Leading: commit what is pending (r among it), then hand over.
	b.mu.Lock()
	batch := b.pending
	if len(batch) > maxIssuedBatch {
		batch = batch[:maxIssuedBatch]
	}
	b.pending = b.pending[len(batch):]
	b.mu.Unlock()
	commitIssued(context.WithoutCancel(ctx), lax, batch) // the others' records must not fail with this caller's context
	b.mu.Lock()
	if len(b.pending) > 0 {
		close(b.pending[0].lead)
	} else {
		b.running = false
	}
	b.mu.Unlock()
	<-r.done
	return r.err
}

// commitIssued inserts every request of batch in one transaction and
// answers each.
func commitIssued(ctx context.Context, lax *conn, batch []*issuedReq) {
	answer := func(err error) {
		for _, r := range batch {
			if r.err == nil {
				r.err = err
			}
			close(r.done)
		}
	}
	tx, err := lax.BeginTx(ctx, nil)
	if err != nil {
		answer(wrap("put issued writ", err))
		return
	}
	for _, r := range batch {
		res, err := tx.ExecContext(ctx, putIssuedQuery, r.args...)
		if err == nil {
			var n int64
			if n, err = res.RowsAffected(); err == nil && n == 0 {
				r.err = ErrParentRevoked
				continue
			}
		}
		if err != nil {
			r.err = wrap("put issued writ", err)
		}
	}
	if err := tx.Commit(); err != nil {
		_ = tx.Rollback()
		for _, r := range batch { // nothing of the batch is stored
			r.err = wrap("put issued writ", err)
		}
	}
	answer(nil)
}
