package store

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgconn"
	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// migrations are the schema, one entry per version: migrations[i] takes the
// database from version i to version i+1. Append only; never edit an entry
// that has shipped.
//
// Times are Unix nanoseconds (UTC) in INTEGER columns; a NULL time is the
// zero time.Time.
var migrations = []string{
	// 1: the initial schema.
	`
CREATE TABLE nodes (
	id          TEXT PRIMARY KEY,
	spiffe_id   TEXT NOT NULL,
	ek_public   BLOB,
	ek_cert     BLOB,
	ak_public   BLOB,
	enrolled_at INTEGER NOT NULL
) STRICT;

CREATE TABLE enrollments (
	id               TEXT PRIMARY KEY,
	node_id          TEXT NOT NULL,
	node_spiffe_id   TEXT NOT NULL,
	node_ek_public   BLOB,
	node_ek_cert     BLOB,
	node_ak_public   BLOB,
	node_enrolled_at INTEGER,
	secret           BLOB,
	expires_at       INTEGER NOT NULL
) STRICT;

CREATE TABLE nonces (
	value      BLOB PRIMARY KEY,
	node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER
) STRICT;
CREATE INDEX nonces_expires_at ON nonces (expires_at);

CREATE TABLE results (
	id         TEXT PRIMARY KEY,
	node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	time       INTEGER NOT NULL,
	passed     INTEGER NOT NULL,
	findings   TEXT NOT NULL, -- JSON []attest.Finding
	pcr_digest TEXT NOT NULL,
	policy     TEXT NOT NULL,
	claims     TEXT NOT NULL  -- JSON attest.Claims
) STRICT;
CREATE INDEX results_node_time ON results (node_id, time);

CREATE TABLE svids (
	serial    TEXT PRIMARY KEY,
	node_id   TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	spiffe_id TEXT NOT NULL,
	result_id TEXT NOT NULL REFERENCES results (id),
	issued_at INTEGER NOT NULL,
	not_after INTEGER NOT NULL
) STRICT;
CREATE INDEX svids_node_issued_at ON svids (node_id, issued_at);
CREATE INDEX svids_result_id ON svids (result_id);
`,
	// 2: single-use writs, consumed once across all broker replicas.
	`
CREATE TABLE used_writs (
	jti        TEXT PRIMARY KEY,
	expires_at INTEGER NOT NULL,
	used_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX used_writs_expires_at ON used_writs (expires_at);
`,
	// 3: node standing (continuous attestation, revocation) and the raw
	// evidence of each attestation (dry runs, offline analysis).
	`
ALTER TABLE nodes ADD COLUMN state TEXT NOT NULL DEFAULT 'enrolled';
ALTER TABLE nodes ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN state_changed_at INTEGER;
ALTER TABLE results ADD COLUMN evidence BLOB;
`,
	// 4: writs issued (a parent must be a live writ of the same subject),
	// and the trust bundle's spiffe_sequence, bumped when its content
	// changes.
	`
CREATE TABLE issued_writs (
	jti        TEXT PRIMARY KEY,
	subject    TEXT NOT NULL,
	issued_at  INTEGER NOT NULL,
	expires_at INTEGER NOT NULL
) STRICT;
CREATE INDEX issued_writs_expires_at ON issued_writs (expires_at);

CREATE TABLE bundle_sequence (
	id       INTEGER PRIMARY KEY CHECK (id = 1),
	sequence INTEGER NOT NULL,
	content  BLOB NOT NULL -- sha256 of the bundle content it numbers
) STRICT;
`,
	// 5: nodes' audit keys as the broker checked them (with the nonce and
	// PCR values of the passing result they were certified in, kept here so
	// that pruning results loses nothing), and the checkpoints of nodes'
	// audit logs the broker anchored.
	`
CREATE TABLE audit_keys (
	node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	public_key BLOB NOT NULL, -- PKIX DER
	result_id  TEXT NOT NULL,
	nonce      BLOB NOT NULL,
	pcrs       TEXT NOT NULL, -- JSON map PCR -> hex sha256 value
	created_at INTEGER NOT NULL,
	PRIMARY KEY (node_id, public_key)
) STRICT;

CREATE TABLE audit_anchors (
	node_id     TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	size        INTEGER NOT NULL,
	root        BLOB NOT NULL,
	checkpoint  BLOB NOT NULL, -- the signed note
	result_id   TEXT NOT NULL,
	anchored_at INTEGER NOT NULL,
	PRIMARY KEY (node_id, size)
) STRICT;
`,
	// 6: pruning and bounds on pending state (issue 7, item 10): expired
	// enrollments by expiry, a node's nonces by node.
	`
CREATE INDEX enrollments_expires_at ON enrollments (expires_at);
CREATE INDEX nonces_node_id ON nonces (node_id);
`,
	// 7: the boot PCR selection a result's PCR digest covers, so a writ
	// binds the selection and the digest of one result.
	`
ALTER TABLE results ADD COLUMN pcr_selection TEXT NOT NULL DEFAULT '';
`,
	// 8: registration entries (issue 8): which workloads get which SPIFFE
	// IDs on which nodes.
	`
CREATE TABLE entries (
	id         TEXT PRIMARY KEY,
	spiffe_id  TEXT NOT NULL,
	parent     TEXT NOT NULL, -- a node SPIFFE ID, policy:<id> or claim:<name>=<value>
	selectors  TEXT NOT NULL, -- JSON list of "type:value"
	ttl        INTEGER NOT NULL, -- seconds; 0: the broker's default
	dns_names  TEXT NOT NULL, -- JSON list
	actions    TEXT NOT NULL, -- JSON list
	created_at INTEGER NOT NULL
) STRICT;
CREATE INDEX entries_parent ON entries (parent);
`,
	// 9: the node an issued writ was issued on (issue 8: a writ's subject
	// may be a workload of the node), so that a parent is checked to be a
	// writ issued on the same node. Writs issued before were all issued to
	// their node: its SPIFFE ID is their subject.
	`
ALTER TABLE issued_writs ADD COLUMN node TEXT NOT NULL DEFAULT '';
UPDATE issued_writs SET node = subject;
`,
	// 10: approvals (issue 9): a rule can require a person's approval of
	// one action, bound to its digest, subject, node, audience, single
	// use, rules version and node policy, and used once. At most one open
	// (pending or approved, unused) approval per binding.
	`
CREATE TABLE approvals (
	id            TEXT PRIMARY KEY,
	state         TEXT NOT NULL, -- pending, approved, denied, expired
	subject       TEXT NOT NULL,
	node          TEXT NOT NULL,
	kind          TEXT NOT NULL,
	digest        TEXT NOT NULL,
	display       TEXT NOT NULL,
	audience      TEXT NOT NULL,
	once          INTEGER NOT NULL,
	rules_version TEXT NOT NULL,
	policy        TEXT NOT NULL,
	rule          INTEGER NOT NULL,
	approvers     TEXT NOT NULL, -- JSON list of SPIFFE IDs or "/*" prefixes
	created_at    INTEGER NOT NULL,
	expires_at    INTEGER NOT NULL,
	decided_by    TEXT NOT NULL DEFAULT '',
	decided_at    INTEGER,
	reason        TEXT NOT NULL DEFAULT '',
	used_at       INTEGER,
	used_jti      TEXT NOT NULL DEFAULT ''
) STRICT;
CREATE INDEX approvals_binding ON approvals (digest, subject, node);
CREATE INDEX approvals_expires_at ON approvals (expires_at);
CREATE INDEX approvals_node_state ON approvals (node, state);
CREATE UNIQUE INDEX approvals_open ON approvals (digest, subject, node, kind, audience, once, rules_version, policy)
	WHERE used_at IS NULL AND state IN ('pending', 'approved');
`,
	// 11: signed lineage across hops (issue 9, docs/adr/0031): each
	// issued writ's parent, the rule it was issued under, its effective
	// scope (the rule names its descendants may be issued under: JSON
	// list, NULL for unrestricted) and its depth in the lineage; and its
	// revocation, which every descendant shares.
	`
ALTER TABLE issued_writs ADD COLUMN parent TEXT NOT NULL DEFAULT '';
ALTER TABLE issued_writs ADD COLUMN rule TEXT NOT NULL DEFAULT '';
ALTER TABLE issued_writs ADD COLUMN scope TEXT;
ALTER TABLE issued_writs ADD COLUMN depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE issued_writs ADD COLUMN revoked_at INTEGER;
ALTER TABLE issued_writs ADD COLUMN revoke_reason TEXT NOT NULL DEFAULT '';
CREATE INDEX issued_writs_parent ON issued_writs (parent) WHERE parent != '';
CREATE INDEX issued_writs_revoked ON issued_writs (expires_at) WHERE revoked_at IS NOT NULL;
`,
	// 12: federated trust domains' bundles (docs/adr/0033): the last good
	// bundle of each, as fetched, with its spiffe_sequence (NULL when it
	// had none) and when it was fetched, so that a restarted broker
	// verifies their workloads at once and refuses a sequence going back.
	`
CREATE TABLE federated_bundles (
	trust_domain TEXT PRIMARY KEY,
	bundle       BLOB NOT NULL, -- the SPIFFE bundle document (JSON)
	sequence     INTEGER,       -- its spiffe_sequence; NULL: none
	fetched_at   INTEGER NOT NULL
) STRICT;
`,
	// 13: broker replicas' public keys (docs/adr/0041): each replica
	// publishes its CA roots, writ key and JWT-SVID key, kept until
	// not_after unless it republishes; every replica's bundle carries
	// the keys of all.
	`
CREATE TABLE replica_keys (
	replica   TEXT NOT NULL,
	kind      TEXT NOT NULL, -- x509-root, writ, jwt-svid
	key       BLOB NOT NULL, -- certificate DER or PKIX DER
	not_after INTEGER NOT NULL,
	PRIMARY KEY (replica, kind, key)
) STRICT;
CREATE INDEX replica_keys_not_after ON replica_keys (not_after);
`,
	// 14: prune by time without reading every row (docs/adr/0055): the
	// broker deletes SVID records by not_after and results by time every
	// prune interval, holding SQLite's one write lock while it does.
	`
CREATE INDEX svids_not_after ON svids (not_after);
CREATE INDEX results_time ON results (time);
`,
}

// migrate brings the schema up to the latest version of db's dialect in
// one transaction, so brokers starting together on the same database
// apply each migration once: on SQLite the transaction begins IMMEDIATE,
// on PostgreSQL it first takes a transaction-scoped advisory lock.
func migrate(ctx context.Context, db *conn) (err error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, tx.Rollback())
		}
	}()
	create := `CREATE TABLE IF NOT EXISTS schema_version (
		version    INTEGER PRIMARY KEY,
		applied_at INTEGER NOT NULL
	) STRICT`
	if db.d == pgDialect {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(?)`, migrateLock); err != nil {
			return fmt.Errorf("store: migrate: lock: %w", err)
		}
		create = `CREATE TABLE IF NOT EXISTS schema_version (
		version    BIGINT PRIMARY KEY,
		applied_at BIGINT NOT NULL
	)`
	}
	if _, err := tx.ExecContext(ctx, create); err != nil {
		return fmt.Errorf("store: migrate: %w", err)
	}
	var current int
	if err := tx.QueryRowContext(ctx, `SELECT COALESCE(MAX(version), 0) FROM schema_version`).Scan(&current); err != nil {
		return fmt.Errorf("store: migrate: read version: %w", err)
	}
	steps := *db.d.migrations
	if current > len(steps) {
		return fmt.Errorf("store: migrate: database schema version %d is newer than this broker's %d", current, len(steps))
	}
	for v := current + 1; v <= len(steps); v++ {
		if _, err := tx.ExecContext(ctx, steps[v-1]); err != nil {
			return fmt.Errorf("store: migrate to version %d: %w", v, err)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version (version, applied_at) VALUES (?, ?)`,
			v, time.Now().UnixNano()); err != nil {
			return fmt.Errorf("store: migrate to version %d: %w", v, err)
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: migrate: commit: %w", err)
	}
	return nil
}

// migrateLock is the key of the PostgreSQL advisory lock migrations hold
// ("writ" in ASCII).
const migrateLock int64 = 0x77726974

// nanos is a time as stored: Unix nanoseconds, NULL for the zero time.
func nanos(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: t.UnixNano(), Valid: true}
}

// fromNanos is the inverse of nanos; times come back in UTC.
func fromNanos(n sql.NullInt64) time.Time {
	if !n.Valid {
		return time.Time{}
	}
	return time.Unix(0, n.Int64).UTC()
}

// blob returns b, or nil when it is empty, so that an empty and a missing
// byte slice read back the same.
func blob(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// wrap prefixes err with the operation. A foreign key violation means the
// row refers to a node or result the store does not have: ErrNotFound.
func wrap(op string, err error) error {
	var (
		se *sqlite.Error
		pe *pgconn.PgError
	)
	if errors.As(err, &se) && se.Code() == sqlite3.SQLITE_CONSTRAINT_FOREIGNKEY ||
		errors.As(err, &pe) && pe.Code == pgForeignKeyViolation {
		return fmt.Errorf("store: %s: refers to a missing node or result: %w", op, ErrNotFound)
	}
	if busy(err) && !errors.Is(err, ErrBusy) {
		return fmt.Errorf("store: %s: %w: %w", op, ErrBusy, err)
	}
	return fmt.Errorf("store: %s: %w", op, err)
}

// busy reports whether err is the database refusing a statement for
// now, not for what it says: the write lock of this process waited out
// (ErrBusy), SQLITE_BUSY or SQLITE_LOCKED (with any extended code), or
// PostgreSQL's serialization failure, deadlock, lock timeout or too many
// connections.
func busy(err error) bool {
	var (
		se *sqlite.Error
		pe *pgconn.PgError
	)
	switch {
	case errors.Is(err, ErrBusy):
		return true
	case errors.As(err, &se):
		c := se.Code() & 0xff
		return c == sqlite3.SQLITE_BUSY || c == sqlite3.SQLITE_LOCKED
	case errors.As(err, &pe):
		switch pe.Code {
		case pgSerializationFailure, pgDeadlock, pgLockNotAvailable, pgTooManyConnections:
			return true
		}
	}
	return false
}

// PostgreSQL error codes (SQLSTATE) the store maps to its errors.
const (
	pgUniqueViolation      = "23505"
	pgForeignKeyViolation  = "23503"
	pgInvalidText          = "22021" // character_not_in_repertoire: not UTF-8, or a NUL
	pgSerializationFailure = "40001"
	pgDeadlock             = "40P01"
	pgLockNotAvailable     = "55P03" // lock_timeout, NOWAIT
	pgTooManyConnections   = "53300"
)

// absent reports whether a lookup found nothing: no row, or (PostgreSQL)
// a key that is no valid text, so that no row can have it. SQLite takes
// any bytes and finds no row; both report the store's not-found errors.
func absent(err error) bool {
	return errors.Is(err, sql.ErrNoRows) || invalidText(err)
}

// validText reports whether PostgreSQL can hold s as text. A key that is
// not cannot name a row: callers report it absent on either database.
func validText(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// invalidText reports whether PostgreSQL refused a text argument that
// is not UTF-8 or holds a NUL (SQLite stores any bytes).
func invalidText(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == pgInvalidText
}

// violates reports whether err is the violation of a uniqueness
// constraint: on SQLite one with code sqliteCode (a primary key or a
// unique index), on PostgreSQL the constraint named pgConstraint.
func violates(err error, sqliteCode int, pgConstraint string) bool {
	var (
		se *sqlite.Error
		pe *pgconn.PgError
	)
	switch {
	case errors.As(err, &se):
		return se.Code() == sqliteCode
	case errors.As(err, &pe):
		return pe.Code == pgUniqueViolation && pe.ConstraintName == pgConstraint
	}
	return false
}

// scanner is a *sql.Row or *sql.Rows.
type scanner interface {
	Scan(dest ...any) error
}
