package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
)

// OpenPostgres opens the PostgreSQL database dsn names (a URL,
// postgres://…, or key=value pairs; see pgx) and migrates its schema to
// the latest version. The database must exist. Errors never repeat the
// DSN, which may carry a password: Redact says which database it names.
func OpenPostgres(ctx context.Context, dsn string) (*DB, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		// The parse error may quote the DSN, password and all.
		return nil, errors.New("store: open postgres: the DSN does not parse (not shown: it may hold a password)")
	}
	name := describe(cfg)
	db := &conn{DB: stdlib.OpenDB(*cfg), d: pgDialect}
	db.SetMaxOpenConns(pgConns)
	db.SetMaxIdleConns(pgConns) // kept open: a connection costs a server process and a TLS handshake
	if err := db.PingContext(ctx); err != nil {
		return nil, errors.Join(fmt.Errorf("store: open %s: %w", name, err), db.Close())
	}
	if err := migrate(ctx, db); err != nil {
		return nil, errors.Join(fmt.Errorf("store: open %s: %w", name, err), db.Close())
	}
	// lax (see DB) is the same database with synchronous_commit off: a
	// commit is durable when the WAL writer flushes it, within a fraction
	// of a second, not when it returns; never corrupt.
	laxCfg := cfg.Copy()
	laxCfg.RuntimeParams["synchronous_commit"] = "off"
	lax := &conn{DB: stdlib.OpenDB(*laxCfg), d: pgDialect}
	lax.SetMaxOpenConns(pgLaxConns)
	lax.SetMaxIdleConns(pgLaxConns)
	return &DB{db: db, lax: lax, d: pgDialect, pg: cfg}, nil
}

// Connections a store holds at most, per handle: PostgreSQL serves 100
// by default, shared by every replica.
const (
	pgConns    = 16
	pgLaxConns = 4
)

// Redact names the database a PostgreSQL DSN points to, for logs and
// errors, without its password: postgres://user@host:port/database. A DSN
// that does not parse is not repeated.
func Redact(dsn string) string {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return "postgres://(DSN does not parse)"
	}
	return describe(cfg)
}

func describe(cfg *pgx.ConnConfig) string {
	u := url.URL{
		Scheme: "postgres",
		User:   url.User(cfg.User),
		Host:   net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))),
		Path:   "/" + cfg.Database,
	}
	return u.String()
}

// pgMigrations are the schema on PostgreSQL: the same versions as
// migrations, meaning the same, in PostgreSQL's types (BIGINT for
// integers and Unix-nanosecond times, BYTEA for blobs, BOOLEAN for
// flags). SQLite's implicit rowid, which the store orders by, is an
// identity column named rowid. Append only, in step with migrations.
var pgMigrations = []string{
	// 1: the initial schema.
	`
CREATE TABLE nodes (
	id          TEXT PRIMARY KEY,
	spiffe_id   TEXT NOT NULL,
	ek_public   BYTEA,
	ek_cert     BYTEA,
	ak_public   BYTEA,
	enrolled_at BIGINT NOT NULL
);

CREATE TABLE enrollments (
	id               TEXT PRIMARY KEY,
	node_id          TEXT NOT NULL,
	node_spiffe_id   TEXT NOT NULL,
	node_ek_public   BYTEA,
	node_ek_cert     BYTEA,
	node_ak_public   BYTEA,
	node_enrolled_at BIGINT,
	secret           BYTEA,
	expires_at       BIGINT NOT NULL
);

CREATE TABLE nonces (
	rowid      BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
	value      BYTEA PRIMARY KEY,
	node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	expires_at BIGINT NOT NULL,
	used_at    BIGINT
);
CREATE INDEX nonces_expires_at ON nonces (expires_at);

CREATE TABLE results (
	rowid      BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
	id         TEXT PRIMARY KEY,
	node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	time       BIGINT NOT NULL,
	passed     BOOLEAN NOT NULL,
	findings   TEXT NOT NULL, -- JSON []attest.Finding
	pcr_digest TEXT NOT NULL,
	policy     TEXT NOT NULL,
	claims     TEXT NOT NULL  -- JSON attest.Claims
);
CREATE INDEX results_node_time ON results (node_id, time);

CREATE TABLE svids (
	rowid     BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
	serial    TEXT PRIMARY KEY,
	node_id   TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	spiffe_id TEXT NOT NULL,
	result_id TEXT NOT NULL REFERENCES results (id),
	issued_at BIGINT NOT NULL,
	not_after BIGINT NOT NULL
);
CREATE INDEX svids_node_issued_at ON svids (node_id, issued_at);
CREATE INDEX svids_result_id ON svids (result_id);
`,
	// 2: single-use writs, consumed once across all broker replicas.
	`
CREATE TABLE used_writs (
	jti        TEXT PRIMARY KEY,
	expires_at BIGINT NOT NULL,
	used_at    BIGINT NOT NULL
);
CREATE INDEX used_writs_expires_at ON used_writs (expires_at);
`,
	// 3: node standing and the raw evidence of each attestation.
	`
ALTER TABLE nodes ADD COLUMN state TEXT NOT NULL DEFAULT 'enrolled';
ALTER TABLE nodes ADD COLUMN state_reason TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN state_changed_at BIGINT;
ALTER TABLE results ADD COLUMN evidence BYTEA;
`,
	// 4: writs issued, and the trust bundle's spiffe_sequence.
	`
CREATE TABLE issued_writs (
	jti        TEXT PRIMARY KEY,
	subject    TEXT NOT NULL,
	issued_at  BIGINT NOT NULL,
	expires_at BIGINT NOT NULL
);
CREATE INDEX issued_writs_expires_at ON issued_writs (expires_at);

CREATE TABLE bundle_sequence (
	id       BIGINT PRIMARY KEY CHECK (id = 1),
	sequence BIGINT NOT NULL,
	content  BYTEA NOT NULL -- sha256 of the bundle content it numbers
);
`,
	// 5: nodes' audit keys and the checkpoints of their audit logs.
	`
CREATE TABLE audit_keys (
	rowid      BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
	node_id    TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	public_key BYTEA NOT NULL, -- PKIX DER
	result_id  TEXT NOT NULL,
	nonce      BYTEA NOT NULL,
	pcrs       TEXT NOT NULL, -- JSON map PCR -> hex sha256 value
	created_at BIGINT NOT NULL,
	PRIMARY KEY (node_id, public_key)
);

CREATE TABLE audit_anchors (
	node_id     TEXT NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
	size        BIGINT NOT NULL,
	root        BYTEA NOT NULL,
	checkpoint  BYTEA NOT NULL, -- the signed note
	result_id   TEXT NOT NULL,
	anchored_at BIGINT NOT NULL,
	PRIMARY KEY (node_id, size)
);
`,
	// 6: pruning and bounds on pending state.
	`
CREATE INDEX enrollments_expires_at ON enrollments (expires_at);
CREATE INDEX nonces_node_id ON nonces (node_id);
`,
	// 7: the boot PCR selection a result's PCR digest covers.
	`
ALTER TABLE results ADD COLUMN pcr_selection TEXT NOT NULL DEFAULT '';
`,
	// 8: registration entries.
	`
CREATE TABLE entries (
	id         TEXT PRIMARY KEY,
	spiffe_id  TEXT NOT NULL,
	parent     TEXT NOT NULL, -- a node SPIFFE ID, policy:<id> or claim:<name>=<value>
	selectors  TEXT NOT NULL, -- JSON list of "type:value"
	ttl        BIGINT NOT NULL, -- seconds; 0: the broker's default
	dns_names  TEXT NOT NULL, -- JSON list
	actions    TEXT NOT NULL, -- JSON list
	created_at BIGINT NOT NULL
);
CREATE INDEX entries_parent ON entries (parent);
`,
	// 9: the node an issued writ was issued on.
	`
ALTER TABLE issued_writs ADD COLUMN node TEXT NOT NULL DEFAULT '';
UPDATE issued_writs SET node = subject;
`,
	// 10: approvals; at most one open approval per binding.
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
	once          BOOLEAN NOT NULL,
	rules_version TEXT NOT NULL,
	policy        TEXT NOT NULL,
	rule          BIGINT NOT NULL,
	approvers     TEXT NOT NULL, -- JSON list of SPIFFE IDs or "/*" prefixes
	created_at    BIGINT NOT NULL,
	expires_at    BIGINT NOT NULL,
	decided_by    TEXT NOT NULL DEFAULT '',
	decided_at    BIGINT,
	reason        TEXT NOT NULL DEFAULT '',
	used_at       BIGINT,
	used_jti      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX approvals_binding ON approvals (digest, subject, node);
CREATE INDEX approvals_expires_at ON approvals (expires_at);
CREATE INDEX approvals_node_state ON approvals (node, state);
CREATE UNIQUE INDEX approvals_open ON approvals (digest, subject, node, kind, audience, once, rules_version, policy)
	WHERE used_at IS NULL AND state IN ('pending', 'approved');
`,
	// 11: signed lineage across hops: parent, rule, scope, depth and
	// revocation of each issued writ.
	`
ALTER TABLE issued_writs ADD COLUMN parent TEXT NOT NULL DEFAULT '';
ALTER TABLE issued_writs ADD COLUMN rule TEXT NOT NULL DEFAULT '';
ALTER TABLE issued_writs ADD COLUMN scope TEXT;
ALTER TABLE issued_writs ADD COLUMN depth BIGINT NOT NULL DEFAULT 0;
ALTER TABLE issued_writs ADD COLUMN revoked_at BIGINT;
ALTER TABLE issued_writs ADD COLUMN revoke_reason TEXT NOT NULL DEFAULT '';
CREATE INDEX issued_writs_parent ON issued_writs (parent) WHERE parent != '';
CREATE INDEX issued_writs_revoked ON issued_writs (expires_at) WHERE revoked_at IS NOT NULL;
`,
	// 12: federated trust domains' bundles.
	`
CREATE TABLE federated_bundles (
	trust_domain TEXT PRIMARY KEY,
	bundle       BYTEA NOT NULL, -- the SPIFFE bundle document (JSON)
	sequence     BIGINT,         -- its spiffe_sequence; NULL: none
	fetched_at   BIGINT NOT NULL
);
`,
	// 13: broker replicas' public keys.
	`
CREATE TABLE replica_keys (
	replica   TEXT NOT NULL,
	kind      TEXT NOT NULL, -- x509-root, writ, jwt-svid
	key       BYTEA NOT NULL, -- certificate DER or PKIX DER
	not_after BIGINT NOT NULL,
	PRIMARY KEY (replica, kind, key)
);
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
