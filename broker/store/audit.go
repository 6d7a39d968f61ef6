package store

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
)

// PutAuditKey records a node's audit key; the node must be enrolled.
func (s *DB) PutAuditKey(ctx context.Context, k AuditKey) error {
	values := make(map[string]string, len(k.PCRValues))
	for pcr, v := range k.PCRValues {
		values[strconv.Itoa(pcr)] = hex.EncodeToString(v)
	}
	pcrs, err := json.Marshal(values)
	if err != nil {
		return fmt.Errorf("store: put audit key: %w", err)
	}
	_, err = s.db.ExecContext(ctx, `INSERT INTO audit_keys (node_id, public_key, result_id, nonce, pcrs, created_at)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, public_key) DO NOTHING`,
		k.NodeID, k.PublicKey, k.ResultID, k.Nonce, string(pcrs), nanos(k.CreatedAt))
	if err != nil {
		return wrap("put audit key", err)
	}
	return nil
}

func scanAuditKey(row scanner) (AuditKey, error) {
	var (
		k    AuditKey
		pcrs string
		at   sql.NullInt64
	)
	if err := row.Scan(&k.NodeID, &k.PublicKey, &k.ResultID, &k.Nonce, &pcrs, &at); err != nil {
		return AuditKey{}, err
	}
	k.CreatedAt = fromNanos(at)
	var values map[string]string
	if err := json.Unmarshal([]byte(pcrs), &values); err != nil {
		return AuditKey{}, fmt.Errorf("audit key: pcrs: %w", err)
	}
	k.PCRValues = make(map[int][]byte, len(values))
	for p, v := range values {
		pcr, err := strconv.Atoi(p)
		if err != nil {
			return AuditKey{}, fmt.Errorf("audit key: PCR %q: %w", p, err)
		}
		if k.PCRValues[pcr], err = hex.DecodeString(v); err != nil {
			return AuditKey{}, fmt.Errorf("audit key: PCR %d: %w", pcr, err)
		}
	}
	return k, nil
}

// AuditKeys returns a node's audit keys, oldest first.
func (s *DB) AuditKeys(ctx context.Context, nodeID string) ([]AuditKey, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT node_id, public_key, result_id, nonce, pcrs, created_at
		FROM audit_keys WHERE node_id = ? ORDER BY created_at, rowid`, nodeID)
	if err != nil {
		return nil, wrap("audit keys", err)
	}
	return collect(rows, scanAuditKey, "audit keys")
}

// PutAuditAnchor records an anchored checkpoint; the node must be enrolled.
func (s *DB) PutAuditAnchor(ctx context.Context, a AuditAnchor) error {
	if a.Size > math.MaxInt64 {
		return fmt.Errorf("store: put audit anchor: size %d", a.Size)
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO audit_anchors (node_id, size, root, checkpoint, result_id, anchored_at)
		VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, size) DO NOTHING`,
		a.NodeID, int64(a.Size), a.Root, a.Checkpoint, a.ResultID, nanos(a.AnchoredAt))
	if err != nil {
		return wrap("put audit anchor", err)
	}
	return nil
}

// LatestAuditAnchor returns the largest anchored checkpoint of a node.
func (s *DB) LatestAuditAnchor(ctx context.Context, nodeID string) (AuditAnchor, error) {
	var (
		a    AuditAnchor
		size int64
		at   sql.NullInt64
	)
	err := s.db.QueryRowContext(ctx, `SELECT node_id, size, root, checkpoint, result_id, anchored_at
		FROM audit_anchors WHERE node_id = ? ORDER BY size DESC LIMIT 1`, nodeID).
		Scan(&a.NodeID, &size, &a.Root, &a.Checkpoint, &a.ResultID, &at)
	if absent(err) {
		return AuditAnchor{}, ErrNotFound
	}
	if err != nil {
		return AuditAnchor{}, wrap("latest audit anchor", err)
	}
	a.Size, a.AnchoredAt = uint64(size), fromNanos(at)
	return a, nil
}
