package store

import (
	"context"
	"errors"
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
// and that no remaining SVID was issued on, in one transaction.
func (s *DB) PruneResults(ctx context.Context, before time.Time) (err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap("prune results", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreDone(tx.Rollback()))
		}
	}()
	if _, err := tx.ExecContext(ctx, `DELETE FROM svids WHERE not_after < ?`, nanos(before)); err != nil {
		return wrap("prune results: svids", err)
	}
	_, err = tx.ExecContext(ctx, `DELETE FROM results WHERE time < ?
		AND id NOT IN (SELECT result_id FROM svids)
		AND EXISTS (SELECT 1 FROM results later WHERE later.node_id = results.node_id
			AND (later.time > results.time OR (later.time = results.time AND later.rowid > results.rowid)))`,
		nanos(before))
	if err != nil {
		return wrap("prune results", err)
	}
	if err := tx.Commit(); err != nil {
		return wrap("prune results", err)
	}
	return nil
}

// deleteExpired runs query, a DELETE of rows whose expires_at is before
// before (a constant of this package, never built from input).
func (s *DB) deleteExpired(ctx context.Context, op, query string, before time.Time) error {
	if _, err := s.db.ExecContext(ctx, query, nanos(before)); err != nil {
		return wrap(op, err)
	}
	return nil
}
