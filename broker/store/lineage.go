package store

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"time"
)

// PutIssuedWrit records a writ the broker issued. A jti is recorded once.
// The record is committed without an fsync of its own (SQLite.lax): it is
// durable with the next durable commit or WAL checkpoint. A crash may
// lose it; then a writ naming it as parent is refused (parent_invalid),
// and the broker's audit log, appended durably before the writ is
// returned, still holds its writ-issue entry.
func (s *SQLite) PutIssuedWrit(ctx context.Context, w IssuedWrit) error {
	if w.JTI == "" || w.Subject == "" || w.Node == "" || w.ExpiresAt.IsZero() {
		return errors.New("store: put issued writ: no jti, subject, node or expiry")
	}
	_, err := s.lax.ExecContext(ctx, `INSERT INTO issued_writs (jti, subject, node, issued_at, expires_at) VALUES (?, ?, ?, ?, ?)`,
		w.JTI, w.Subject, w.Node, nanos(w.IssuedAt), nanos(w.ExpiresAt))
	if err != nil {
		return wrap("put issued writ", err)
	}
	return nil
}

// IssuedWrit returns an issued writ's record, or ErrNotFound.
func (s *SQLite) IssuedWrit(ctx context.Context, jti string) (IssuedWrit, error) {
	var (
		w           IssuedWrit
		iat, expiry sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `SELECT jti, subject, node, issued_at, expires_at FROM issued_writs WHERE jti = ?`, jti).
		Scan(&w.JTI, &w.Subject, &w.Node, &iat, &expiry)
	if errors.Is(err, sql.ErrNoRows) {
		return IssuedWrit{}, ErrNotFound
	}
	if err != nil {
		return IssuedWrit{}, wrap("issued writ", err)
	}
	w.IssuedAt, w.ExpiresAt = fromNanos(iat), fromNanos(expiry)
	return w, nil
}

// PruneIssuedWrits forgets issued writs that expired before now.
func (s *SQLite) PruneIssuedWrits(ctx context.Context, now time.Time) error {
	return s.deleteExpired(ctx, "prune issued writs", `DELETE FROM issued_writs WHERE expires_at < ?`, now)
}

// BundleSequence numbers the bundle content: the stored number when content
// matches, else the next one. The transaction begins IMMEDIATE (see
// OpenSQLite), so two replicas never hand out one number for two contents.
func (s *SQLite) BundleSequence(ctx context.Context, content []byte) (_ uint64, err error) {
	if len(content) == 0 {
		return 0, errors.New("store: bundle sequence: no content digest")
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, wrap("bundle sequence", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreDone(tx.Rollback()))
		}
	}()
	var (
		seq    int64
		stored []byte
	)
	err = tx.QueryRowContext(ctx, `SELECT sequence, content FROM bundle_sequence WHERE id = 1`).Scan(&seq, &stored)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return 0, wrap("bundle sequence", err)
	case bytes.Equal(stored, content):
		return uint64(seq), tx.Commit()
	}
	seq++
	if _, err := tx.ExecContext(ctx, `INSERT INTO bundle_sequence (id, sequence, content) VALUES (1, ?, ?)
		ON CONFLICT (id) DO UPDATE SET sequence = excluded.sequence, content = excluded.content`, seq, content); err != nil {
		return 0, wrap("bundle sequence", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, wrap("bundle sequence", err)
	}
	return uint64(seq), nil
}
