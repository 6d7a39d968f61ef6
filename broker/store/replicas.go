package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// PutReplicaKeys replaces a replica's published keys in one transaction,
// so another replica reads either the old set or the new one, and
// deletes every key that expired before now.
func (s *DB) PutReplicaKeys(ctx context.Context, replica string, keys []ReplicaKey, notAfter, now time.Time) (err error) {
	if replica == "" || notAfter.IsZero() {
		return errors.New("store: put replica keys: replica and not_after are required")
	}
	for _, k := range keys {
		if len(k.Key) == 0 || (k.Kind != ReplicaX509Root && k.Kind != ReplicaWritKey && k.Kind != ReplicaJWTKey) {
			return fmt.Errorf("store: put replica keys: a key of kind %q with %d bytes", k.Kind, len(k.Key))
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap("put replica keys", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, tx.Rollback())
		}
	}()
	if _, err = tx.ExecContext(ctx, `DELETE FROM replica_keys WHERE replica = ? OR not_after < ?`, replica, nanos(now)); err != nil {
		return wrap("put replica keys", err)
	}
	for _, k := range keys {
		if _, err = tx.ExecContext(ctx, `INSERT INTO replica_keys (replica, kind, key, not_after) VALUES (?, ?, ?, ?)
			ON CONFLICT (replica, kind, key) DO NOTHING`, replica, string(k.Kind), k.Key, nanos(notAfter)); err != nil {
			return wrap("put replica keys", err)
		}
	}
	if err = tx.Commit(); err != nil {
		return wrap("put replica keys", err)
	}
	return nil
}

// ReplicaKeys returns the keys not expired at now.
func (s *DB) ReplicaKeys(ctx context.Context, now time.Time) ([]ReplicaKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT replica, kind, key, not_after FROM replica_keys WHERE not_after >= ?
		ORDER BY replica, kind, key`, nanos(now))
	if err != nil {
		return nil, wrap("replica keys", err)
	}
	defer func() { _ = rows.Close() }()
	var out []ReplicaKey
	for rows.Next() {
		var (
			k    ReplicaKey
			kind string
			na   sql.NullInt64
		)
		if err := rows.Scan(&k.Replica, &kind, &k.Key, &na); err != nil {
			return nil, wrap("replica keys", err)
		}
		k.Kind, k.NotAfter = ReplicaKeyKind(kind), fromNanos(na)
		out = append(out, k)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap("replica keys", err)
	}
	return out, nil
}
