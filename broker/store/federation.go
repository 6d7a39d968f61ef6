package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
)

// FederatedBundle returns the stored bundle of a federated trust domain.
func (s *SQLite) FederatedBundle(ctx context.Context, td string) (FederatedBundle, error) {
	var (
		b       = FederatedBundle{TrustDomain: td}
		seq     sql.NullInt64
		fetched sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `SELECT bundle, sequence, fetched_at FROM federated_bundles WHERE trust_domain = ?`, td).
		Scan(&b.Bundle, &seq, &fetched)
	if errors.Is(err, sql.ErrNoRows) {
		return FederatedBundle{}, fmt.Errorf("store: federated bundle %s: %w", td, ErrNotFound)
	}
	if err != nil {
		return FederatedBundle{}, wrap("federated bundle", err)
	}
	if seq.Valid {
		v := uint64(seq.Int64)
		b.Sequence = &v
	}
	b.FetchedAt = fromNanos(fetched)
	return b, nil
}

// PutFederatedBundle stores a federated bundle unless its sequence goes
// backwards. The transaction begins IMMEDIATE (see OpenSQLite), so two
// replicas storing at once are ordered.
func (s *SQLite) PutFederatedBundle(ctx context.Context, b FederatedBundle) (err error) {
	if b.TrustDomain == "" || len(b.Bundle) == 0 || b.FetchedAt.IsZero() {
		return errors.New("store: put federated bundle: trust domain, bundle and fetch time are required")
	}
	if b.Sequence != nil && *b.Sequence > math.MaxInt64 {
		return fmt.Errorf("store: put federated bundle: sequence %d out of range", *b.Sequence)
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap("put federated bundle", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreDone(tx.Rollback()))
		}
	}()
	var stored sql.NullInt64
	err = tx.QueryRowContext(ctx, `SELECT sequence FROM federated_bundles WHERE trust_domain = ?`, b.TrustDomain).Scan(&stored)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return wrap("put federated bundle", err)
	case stored.Valid && (b.Sequence == nil || *b.Sequence < uint64(stored.Int64)):
		return fmt.Errorf("store: federated bundle %s: sequence %s after %d: %w", b.TrustDomain, seqString(b.Sequence), stored.Int64, ErrSequenceBackwards)
	}
	var seq sql.NullInt64
	if b.Sequence != nil {
		seq = sql.NullInt64{Int64: int64(*b.Sequence), Valid: true}
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO federated_bundles (trust_domain, bundle, sequence, fetched_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (trust_domain) DO UPDATE SET bundle = excluded.bundle, sequence = excluded.sequence, fetched_at = excluded.fetched_at`,
		b.TrustDomain, b.Bundle, seq, nanos(b.FetchedAt)); err != nil {
		return wrap("put federated bundle", err)
	}
	if err := tx.Commit(); err != nil {
		return wrap("put federated bundle", err)
	}
	return nil
}

func seqString(s *uint64) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprint(*s)
}
