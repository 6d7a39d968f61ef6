package store

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// PutIssuedWrit records a writ the broker issued. A jti is recorded once.
// The record is committed without an fsync of its own (SQLite.lax): it is
// durable with the next durable commit or WAL checkpoint. A crash may
// lose it; then a writ naming it as parent is refused (parent_invalid),
// and the broker's audit log, appended durably before the writ is
// returned, still holds its writ-issue entry.
//
// A writ whose parent is revoked is not recorded (ErrParentRevoked): the
// check and the insert are one statement, so a revocation (RevokeWrit)
// either sees the new row and revokes it too, or commits first and the
// insert is refused.
func (s *DB) PutIssuedWrit(ctx context.Context, w IssuedWrit) error {
	if w.JTI == "" || w.Subject == "" || w.Node == "" || w.ExpiresAt.IsZero() {
		return errors.New("store: put issued writ: no jti, subject, node or expiry")
	}
	scope, err := scopeJSON(w.Scope)
	if err != nil {
		return fmt.Errorf("store: put issued writ: %w", err)
	}
	query := putIssuedQuery
	if s.d == pgDialect {
		query = putIssuedQueryPG
	}
	res, err := s.lax.ExecContext(ctx, query,
		w.Parent, w.JTI, w.Subject, w.Node, nanos(w.IssuedAt), nanos(w.ExpiresAt), w.Parent, w.Rule, scope, w.Depth)
	if err != nil {
		return wrap("put issued writ", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return wrap("put issued writ", err)
	} else if n == 0 {
		return ErrParentRevoked
	}
	return nil
}

// putIssuedQuery inserts an issued writ unless its parent (the first
// argument; "" for none) is revoked. On SQLite the one writer orders it
// against RevokeWrit.
const putIssuedQuery = `WITH p(revoked_at) AS (SELECT revoked_at FROM issued_writs WHERE jti = CAST(? AS TEXT))
	INSERT INTO issued_writs (jti, subject, node, issued_at, expires_at, parent, rule, scope, depth)
	SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT),
		CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT)
	WHERE NOT EXISTS (SELECT 1 FROM p WHERE revoked_at IS NOT NULL)`

// putIssuedQueryPG is putIssuedQuery on PostgreSQL: the parent's row is
// locked (FOR SHARE) whether revoked or not, so a RevokeWrit that
// updates it waits for this insert to commit, then finds the new child
// (it walks the tree until nothing is left unrevoked); an insert that
// comes second waits for the revocation and reads the parent revoked.
const putIssuedQueryPG = `WITH p AS (SELECT revoked_at FROM issued_writs WHERE jti = CAST(? AS TEXT) FOR SHARE)
	INSERT INTO issued_writs (jti, subject, node, issued_at, expires_at, parent, rule, scope, depth)
	SELECT CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT), CAST(? AS BIGINT),
		CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT)
	WHERE NOT EXISTS (SELECT 1 FROM p WHERE revoked_at IS NOT NULL)`

// scopeJSON is a scope as stored: NULL for unrestricted (nil), else a
// JSON list (possibly empty: no descendants).
func scopeJSON(scope []string) (sql.NullString, error) {
	if scope == nil {
		return sql.NullString{}, nil
	}
	b, err := json.Marshal(scope)
	if err != nil {
		return sql.NullString{}, err
	}
	return sql.NullString{String: string(b), Valid: true}, nil
}

const issuedColumns = `jti, subject, node, issued_at, expires_at, parent, rule, scope, depth, revoked_at, revoke_reason`

func scanIssuedWrit(row scanner) (IssuedWrit, error) {
	var (
		w                    IssuedWrit
		iat, expiry, revoked sql.NullInt64
		scope                sql.NullString
	)
	if err := row.Scan(&w.JTI, &w.Subject, &w.Node, &iat, &expiry, &w.Parent, &w.Rule, &scope, &w.Depth, &revoked, &w.RevokeReason); err != nil {
		return IssuedWrit{}, err
	}
	w.IssuedAt, w.ExpiresAt, w.RevokedAt = fromNanos(iat), fromNanos(expiry), fromNanos(revoked)
	if scope.Valid {
		w.Scope = []string{}
		if err := json.Unmarshal([]byte(scope.String), &w.Scope); err != nil {
			return IssuedWrit{}, fmt.Errorf("scope of %s: %w", w.JTI, err)
		}
	}
	return w, nil
}

// IssuedWrit returns an issued writ's record, or ErrNotFound.
func (s *DB) IssuedWrit(ctx context.Context, jti string) (IssuedWrit, error) {
	w, err := scanIssuedWrit(s.db.QueryRowContext(ctx, `SELECT `+issuedColumns+` FROM issued_writs WHERE jti = ?`, jti))
	if absent(err) {
		return IssuedWrit{}, ErrNotFound
	}
	if err != nil {
		return IssuedWrit{}, wrap("issued writ", err)
	}
	return w, nil
}

// RevokeWrit revokes jti and every descendant the store records
// (following parent links, transitively) that is not revoked yet, in one
// durable transaction, and returns the writs it revoked (jti's first when
// it was not revoked before). ErrNotFound when jti is not recorded.
func (s *DB) RevokeWrit(ctx context.Context, jti, reason string, now time.Time) (_ []IssuedWrit, err error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, wrap("revoke writ", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreDone(tx.Rollback()))
		}
	}()
	var one int
	if err := tx.QueryRowContext(ctx, `SELECT 1 FROM issued_writs WHERE jti = ?`+s.d.forUpdate, jti).Scan(&one); absent(err) {
		return nil, ErrNotFound
	} else if err != nil {
		return nil, wrap("revoke writ", err)
	}
	// Walk the tree until nothing in it is left unrevoked. On SQLite the
	// second walk finds nothing; on PostgreSQL an UPDATE below may wait
	// for a PutIssuedWrit holding the row's lock, whose new child the
	// next walk (a new snapshot) then sees.
	var revoked []IssuedWrit
	for {
		// UNION (not UNION ALL) visits each jti once, so the walk ends
		// even on parent links that loop (which issuance never makes).
		rows, err := tx.QueryContext(ctx, revokeTreeQuery, jti, jti)
		if err != nil {
			return nil, wrap("revoke writ", err)
		}
		more, err := collect(rows, scanIssuedWrit, "revoke writ")
		if err != nil {
			return nil, err
		}
		if len(more) == 0 {
			break
		}
		for _, w := range more {
			// A concurrent revocation (PostgreSQL) may have revoked it
			// since the walk read it: then it is not this one's.
			res, err := tx.ExecContext(ctx, `UPDATE issued_writs SET revoked_at = ?, revoke_reason = ? WHERE jti = ? AND revoked_at IS NULL`,
				nanos(now), reason, w.JTI)
			if err != nil {
				return nil, wrap("revoke writ", err)
			}
			if n, err := res.RowsAffected(); err != nil {
				return nil, wrap("revoke writ", err)
			} else if n == 1 {
				w.RevokedAt, w.RevokeReason = now.UTC(), reason
				revoked = append(revoked, w)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, wrap("revoke writ", err)
	}
	return revoked, nil
}

// RevokedWrits returns the revoked writs that have not expired at now,
// by node then jti.
func (s *DB) RevokedWrits(ctx context.Context, now time.Time) ([]IssuedWrit, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+issuedColumns+` FROM issued_writs
		WHERE revoked_at IS NOT NULL AND expires_at > ? ORDER BY node, jti`, nanos(now))
	if err != nil {
		return nil, wrap("revoked writs", err)
	}
	return collect(rows, scanIssuedWrit, "revoked writs")
}

// PruneIssuedWrits forgets issued writs that expired before before.
func (s *DB) PruneIssuedWrits(ctx context.Context, before time.Time) error {
	return s.deleteExpired(ctx, "prune issued writs", `DELETE FROM issued_writs WHERE expires_at < ?`, before)
}

// BundleSequence numbers the bundle content: the stored number when content
// matches, else the next one. Two replicas never hand out one number for
// two contents: the row exists before it is read (number 0, no content),
// and is read locked: on SQLite the transaction begins IMMEDIATE (see
// OpenSQLite), on PostgreSQL the SELECT is FOR UPDATE.
func (s *DB) BundleSequence(ctx context.Context, content []byte) (_ uint64, err error) {
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
	if _, err := tx.ExecContext(ctx, `INSERT INTO bundle_sequence (id, sequence, content) VALUES (1, 0, ?)
		ON CONFLICT (id) DO NOTHING`, []byte{}); err != nil {
		return 0, wrap("bundle sequence", err)
	}
	var (
		seq    int64
		stored []byte
	)
	err = tx.QueryRowContext(ctx, `SELECT sequence, content FROM bundle_sequence WHERE id = 1`+s.d.forUpdate).Scan(&seq, &stored)
	if err != nil {
		return 0, wrap("bundle sequence", err)
	}
	if bytes.Equal(stored, content) {
		if err := tx.Commit(); err != nil {
			return 0, wrap("bundle sequence", err)
		}
		return uint64(seq), nil
	}
	seq++
	if _, err := tx.ExecContext(ctx, `UPDATE bundle_sequence SET sequence = ?, content = ? WHERE id = 1`, seq, content); err != nil {
		return 0, wrap("bundle sequence", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, wrap("bundle sequence", err)
	}
	return uint64(seq), nil
}

// revokeTreeQuery selects the unrevoked writs of the tree under a jti,
// the writ itself first, with the columns issuedColumns names.
const revokeTreeQuery = `WITH RECURSIVE tree(jti) AS (
		SELECT CAST(? AS TEXT)
		UNION
		SELECT w.jti FROM issued_writs w JOIN tree ON w.parent = tree.jti WHERE w.parent != ''
	)
	SELECT w.jti, w.subject, w.node, w.issued_at, w.expires_at, w.parent, w.rule, w.scope, w.depth, w.revoked_at, w.revoke_reason
	FROM issued_writs w JOIN tree ON w.jti = tree.jti
	WHERE w.revoked_at IS NULL ORDER BY w.jti = CAST(? AS TEXT) DESC, w.depth, w.issued_at, w.jti`
