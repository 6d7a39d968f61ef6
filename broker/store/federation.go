package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math"
)

// FederatedBundle returns the stored bundle of a federated trust domain.
func (s *DB) FederatedBundle(ctx context.Context, td string) (FederatedBundle, error) {
	var (
		b       = FederatedBundle{TrustDomain: td}
		seq     sql.NullInt64
		fetched sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `SELECT bundle, sequence, fetched_at FROM federated_bundles WHERE trust_domain = ?`, td).
		Scan(&b.Bundle, &seq, &fetched)
	if absent(err) {
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
// backwards. The check is the upsert's own condition, one statement, so
// two replicas storing at once are ordered on either database.
func (s *DB) PutFederatedBundle(ctx context.Context, b FederatedBundle) error {
	if b.TrustDomain == "" || len(b.Bundle) == 0 || b.FetchedAt.IsZero() {
		return errors.New("store: put federated bundle: trust domain, bundle and fetch time are required")
	}
	if b.Sequence != nil && *b.Sequence > math.MaxInt64 {
		return fmt.Errorf("store: put federated bundle: sequence %d out of range", *b.Sequence)
	}
	var seq sql.NullInt64
	if b.Sequence != nil {
		seq = sql.NullInt64{Int64: int64(*b.Sequence), Valid: true}
	}
	res, err := s.db.ExecContext(ctx, `INSERT INTO federated_bundles (trust_domain, bundle, sequence, fetched_at) VALUES (?, ?, ?, ?)
		ON CONFLICT (trust_domain) DO UPDATE SET bundle = excluded.bundle, sequence = excluded.sequence, fetched_at = excluded.fetched_at
		WHERE federated_bundles.sequence IS NULL
			OR (excluded.sequence IS NOT NULL AND excluded.sequence >= federated_bundles.sequence)`,
		b.TrustDomain, b.Bundle, seq, nanos(b.FetchedAt))
	if err != nil {
		return wrap("put federated bundle", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return wrap("put federated bundle", err)
	} else if n == 1 {
		return nil
	}
	// Refused: read the stored sequence for the message only.
	var stored sql.NullInt64
	if err := s.db.QueryRowContext(ctx, `SELECT sequence FROM federated_bundles WHERE trust_domain = ?`, b.TrustDomain).Scan(&stored); err != nil {
		return fmt.Errorf("store: federated bundle %s: sequence %s goes backwards: %w", b.TrustDomain, seqString(b.Sequence), ErrSequenceBackwards)
	}
	return fmt.Errorf("store: federated bundle %s: sequence %s after %d: %w", b.TrustDomain, seqString(b.Sequence), stored.Int64, ErrSequenceBackwards)
}

func seqString(s *uint64) string {
	if s == nil {
		return "none"
	}
	return fmt.Sprint(*s)
}
