package store

import (
	"context"
	"time"
)

// PendingEnrollments counts enrollments not expired at now.
func (s *DB) PendingEnrollments(ctx context.Context, now time.Time) (int, error) {
	var n int
	if err := s.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM enrollments WHERE expires_at > ?`, nanos(now)).Scan(&n); err != nil {
		return 0, wrap("pending enrollments", err)
	}
	return n, nil
}

// PruneEnrollments deletes enrollments that expired before now.
func (s *DB) PruneEnrollments(ctx context.Context, now time.Time) error {
	return s.deleteExpired(ctx, "prune enrollments", `DELETE FROM enrollments WHERE expires_at < ?`, now)
}

// TrimNonces keeps a node's keep most recently issued nonces (the latest
// rows) and deletes the others, used or not.
func (s *DB) TrimNonces(ctx context.Context, nodeID string, keep int) error {
	return trimNonces(ctx, s.db, nodeID, keep)
}

func trimNonces(ctx context.Context, q querier, nodeID string, keep int) error {
	_, err := q.ExecContext(ctx, `DELETE FROM nonces WHERE node_id = ? AND rowid NOT IN
		(SELECT rowid FROM nonces WHERE node_id = ? ORDER BY rowid DESC LIMIT ?)`, nodeID, nodeID, max(keep, 0))
	if err != nil {
		return wrap("trim nonces", err)
	}
	return nil
}

// PruneResults deletes the records of SVIDs that expired before before,
// then the results recorded before before that are not their node's latest
// and that no remaining SVID was issued on. It deletes pruneBatch rows per
// transaction, so that a backlog (a first prune of a long-running broker,
// a shorter retention) never holds the write lock for long: each batch is
// a consistent step, since a result goes only once no SVID record names
// it and a later result of its node exists, and neither comes undone.
func (s *DB) PruneResults(ctx context.Context, before time.Time) error {
	at := nanos(before)
	if err := s.deleteBatched(ctx, "prune results: svids", `DELETE FROM svids WHERE serial IN
		(SELECT serial FROM svids WHERE not_after < ? LIMIT ?)`, at); err != nil {
		return err
	}
	return s.deleteBatched(ctx, "prune results", `DELETE FROM results WHERE id IN (SELECT id FROM results WHERE time < ?
		AND id NOT IN (SELECT result_id FROM svids)
		AND EXISTS (SELECT 1 FROM results later WHERE later.node_id = results.node_id
			AND (later.time > results.time OR (later.time = results.time AND later.rowid > results.rowid)))
		LIMIT ?)`, at)
}

// pruneBatch is how many rows one prune transaction deletes at most.
var pruneBatch = 1000 // a variable for its test

// deleteBatched runs query, a DELETE of at most its LIMIT rows (a constant
// of this package, never built from input; its last argument is the
// limit), again and again until a run deletes fewer than pruneBatch, each
// run its own transaction.
func (s *DB) deleteBatched(ctx context.Context, op, query string, args ...any) error {
	args = append(args, pruneBatch)
	for {
		n, err := s.affected(ctx, op, query, args...)
		if err != nil || n < int64(pruneBatch) {
			return err
		}
	}
}

// affected runs a statement that writes and returns how many rows it
// changed; an error is wrapped as op's.
func (s *DB) affected(ctx context.Context, op, query string, args ...any) (int64, error) {
	res, err := s.db.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, wrap(op, err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, wrap(op, err)
	}
	return n, nil
}

// deleteExpired runs query, a DELETE of rows whose expires_at is before
// before (a constant of this package, never built from input).
func (s *DB) deleteExpired(ctx context.Context, op, query string, before time.Time) error {
	if _, err := s.db.ExecContext(ctx, query, nanos(before)); err != nil {
		return wrap(op, err)
	}
	return nil
}
