package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
	sqlite3 "modernc.org/sqlite/lib"
)

// DB is the Store kept in a SQL database: one SQLite file (OpenSQLite) or
// a PostgreSQL database (OpenPostgres). Several brokers may share the
// database: nonces are consumed by a single conditional UPDATE, so each is
// used once across processes as well as goroutines; where a guarantee
// needs more than one statement, see docs/adr/0038.
type DB struct {
	db *conn
	// lax is the same database with synchronous(NORMAL): a commit is
	// durable at the next commit of db, or the next WAL checkpoint, not
	// when it returns. Only for records whose loss in a crash refuses
	// something that would have been allowed (PutIssuedWrit, PutEnrollment), never for
	// one that allows or forgets a refusal (nonces, used writs, standing).
	lax *conn
	d   *dialect
	// pg is the PostgreSQL connection configuration (nil on SQLite), for
	// the dedicated connection Listen holds.
	pg *pgx.ConnConfig
	// verdicts are the latest verdicts NodeStanding decoded (verdicts.go).
	verdicts verdictCache
}

// SQLite is the name DB had when SQLite was its only database.
type SQLite = DB

var _ Store = (*DB)(nil)

// laxPragmas are pragmas with synchronous(NORMAL), for SQLite.lax.
const laxPragmas = "_pragma=busy_timeout(5000)" +
	"&_pragma=journal_mode(WAL)" +
	"&_pragma=foreign_keys(ON)" +
	"&_pragma=synchronous(NORMAL)" +
	"&_txlock=immediate"

// pragmas are set on every connection. Transactions begin IMMEDIATE, taking
// the write lock up front, so that two writers never deadlock upgrading a
// read lock and busy_timeout is enough to serialise them.
const pragmas = "_pragma=busy_timeout(5000)" +
	"&_pragma=journal_mode(WAL)" +
	"&_pragma=foreign_keys(ON)" +
	"&_pragma=synchronous(FULL)" +
	"&_txlock=immediate"

// OpenSQLite opens the database at path, creating it with mode 0600 if it
// does not exist (its directory must), and migrates its schema to the
// latest version.
func OpenSQLite(path string) (*DB, error) {
	if path == "" {
		return nil, errors.New("store: open: empty path")
	}
	path = filepath.Clean(path)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case err == nil:
		if err := f.Close(); err != nil {
			return nil, fmt.Errorf("store: open: %w", err)
		}
	case !errors.Is(err, fs.ErrExist):
		return nil, fmt.Errorf("store: open: %w", err)
	}

	// A file: URI with the path escaped, so that '?', '#' and '%' in the
	// path are not taken for URI syntax.
	dsn := "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + pragmas
	sdb, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}
	keepIdle(sdb)
	wl := newWriteLock(writeWait) // shared by db and lax: one file, one writer
	db := &conn{DB: sdb, d: sqliteDialect, wl: wl}
	ctx := context.Background()
	var mode string
	if err := db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return nil, errors.Join(fmt.Errorf("store: open %s: %w", path, err), db.Close())
	}
	if !strings.EqualFold(mode, "wal") {
		return nil, errors.Join(fmt.Errorf("store: open %s: journal mode is %q, not WAL", path, mode), db.Close())
	}
	if err := migrate(ctx, db); err != nil {
		return nil, errors.Join(err, db.Close())
	}
	lax, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+laxPragmas)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("store: open %s: %w", path, err), db.Close())
	}
	keepIdle(lax)
	// Both handles group their writes (docs/adr/0053); their groups take
	// the one write lock in turn.
	db.g = newGroup(db, groupMax, "durable")
	lc := &conn{DB: lax, d: sqliteDialect, wl: wl}
	lc.g = newGroup(lc, groupMax, "lax")
	return &DB{db: db, lax: lc, d: sqliteDialect}, nil
}

// sqliteIdleConns is how many idle connections each SQLite handle keeps
// open. database/sql keeps two by default: with more concurrent readers
// than that (16 callers asking for writs) every burst closed connections
// and opened new ones, each running its pragmas again and preparing every
// statement it used anew (about 5% of a writ's CPU, docs/adr/0047). An
// idle connection costs an open file and its page cache.
const sqliteIdleConns = 32

// sqliteIdleTime is how long an idle connection is kept: a burst's
// connections close some time after it.
const sqliteIdleTime = 5 * time.Minute

func keepIdle(db *sql.DB) {
	db.SetMaxIdleConns(sqliteIdleConns)
	db.SetConnMaxIdleTime(sqliteIdleTime)
}

// Close closes the database.
func (s *DB) Close() error {
	lax := s.lax.Close
	if s.lax == s.db { // read-only: one handle
		lax = func() error { return nil }
	}
	if err := errors.Join(s.db.Close(), lax()); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// PutEnrollment records a pending enrollment. It is committed without an
// fsync of its own (DB.lax): durable with the next durable commit or WAL
// checkpoint. A crash may lose it; then the TPM's answer finds no
// enrollment (activation_failed) and the node enrolls again: the loss
// refuses, it never allows (docs/adr/0050).
func (s *DB) PutEnrollment(ctx context.Context, e Enrollment) error {
	if e.ExpiresAt.IsZero() {
		return errors.New("store: put enrollment: no expiry")
	}
	_, err := s.lax.ExecContext(ctx, `INSERT INTO enrollments
		(id, node_id, node_spiffe_id, node_ek_public, node_ek_cert, node_ak_public, node_enrolled_at, secret, expires_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		e.ID, e.Node.ID, e.Node.SPIFFEID, e.Node.EKPublic, e.Node.EKCert, e.Node.AKPublic,
		nanos(e.Node.EnrolledAt), e.Secret, nanos(e.ExpiresAt))
	if err != nil {
		return wrap("put enrollment", err)
	}
	return nil
}

// TakeEnrollment removes and returns a pending enrollment. An expired one is
// removed too, and reported as ErrNotFound. One DELETE … RETURNING does
// it, so of concurrent takers (in any process, on either database) one
// gets the enrollment.
func (s *DB) TakeEnrollment(ctx context.Context, id string, now time.Time) (Enrollment, error) {
	var (
		e                   Enrollment
		enrolledAt, expires sql.NullInt64
	)
	err := s.db.writeRow(ctx, `DELETE FROM enrollments WHERE id = ? RETURNING id, node_id, node_spiffe_id,
		node_ek_public, node_ek_cert, node_ak_public, node_enrolled_at, secret, expires_at`, []any{id},
		&e.ID, &e.Node.ID, &e.Node.SPIFFEID, &e.Node.EKPublic, &e.Node.EKCert,
		&e.Node.AKPublic, &enrolledAt, &e.Secret, &expires)
	if absent(err) {
		return Enrollment{}, ErrNotFound
	}
	if err != nil {
		return Enrollment{}, wrap("take enrollment", err)
	}
	e.Node.EKPublic, e.Node.EKCert, e.Node.AKPublic = blob(e.Node.EKPublic), blob(e.Node.EKCert), blob(e.Node.AKPublic)
	e.Node.State = NodeEnrolled
	e.Secret = blob(e.Secret)
	e.Node.EnrolledAt, e.ExpiresAt = fromNanos(enrolledAt), fromNanos(expires)
	if !now.Before(e.ExpiresAt) {
		return Enrollment{}, ErrNotFound
	}
	return e, nil
}

// ignoreDone drops the error Rollback returns after a Commit.
func ignoreDone(err error) error {
	if errors.Is(err, sql.ErrTxDone) {
		return nil
	}
	return err
}

// PutNode enrolls a node, replacing the node with the same ID.
func (s *DB) PutNode(ctx context.Context, n Node) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO nodes (id, spiffe_id, ek_public, ek_cert, ak_public, enrolled_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (id) DO UPDATE SET spiffe_id = excluded.spiffe_id, ek_public = excluded.ek_public,
			ek_cert = excluded.ek_cert, ak_public = excluded.ak_public, enrolled_at = excluded.enrolled_at`,
		n.ID, n.SPIFFEID, n.EKPublic, n.EKCert, n.AKPublic, nanos(n.EnrolledAt))
	if err != nil {
		return wrap("put node", err)
	}
	return nil
}

const nodeColumns = `id, spiffe_id, ek_public, ek_cert, ak_public, enrolled_at, state, state_reason, state_changed_at`

func scanNode(row scanner) (Node, error) {
	var (
		n           Node
		at, changed sql.NullInt64
	)
	if err := row.Scan(&n.ID, &n.SPIFFEID, &n.EKPublic, &n.EKCert, &n.AKPublic, &at, &n.State, &n.StateReason, &changed); err != nil {
		return Node{}, err
	}
	n.EKPublic, n.EKCert, n.AKPublic = blob(n.EKPublic), blob(n.EKCert), blob(n.AKPublic)
	n.EnrolledAt, n.StateChangedAt = fromNanos(at), fromNanos(changed)
	return n, nil
}

// Node returns one node, or ErrNotFound.
func (s *DB) Node(ctx context.Context, id string) (Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE id = ?`, id))
	if absent(err) {
		return Node{}, ErrNotFound
	}
	if err != nil {
		return Node{}, wrap("node", err)
	}
	return n, nil
}

// SetNodeState changes a node's standing in one conditional UPDATE: a
// revoked node is never changed.
func (s *DB) SetNodeState(ctx context.Context, id string, state NodeState, reason string, at time.Time) (bool, error) {
	return setNodeState(ctx, s.db, id, state, reason, at)
}

func setNodeState(ctx context.Context, q querier, id string, state NodeState, reason string, at time.Time) (bool, error) {
	if !validText(id) {
		return false, ErrNotFound
	}
	res, err := q.ExecContext(ctx, `UPDATE nodes SET state = ?, state_reason = ?, state_changed_at = ?
		WHERE id = ? AND state <> 'revoked' AND (state <> ? OR state_reason <> ?)`,
		string(state), reason, nanos(at), id, string(state), reason)
	if err != nil {
		return false, wrap("set node state", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return false, wrap("set node state", err)
	} else if n == 1 {
		return true, nil
	}
	n, err := scanNode(q.QueryRowContext(ctx, `SELECT `+nodeColumns+` FROM nodes WHERE id = ?`, id))
	switch {
	case absent(err):
		return false, ErrNotFound
	case err != nil:
		return false, wrap("set node state", err)
	case n.State == NodeRevoked && state != NodeRevoked:
		return false, ErrRevoked
	}
	return false, nil // already in that state
}

// PutResultState is PutResult then SetNodeState(r.NodeID, state, reason,
// at), in one transaction: an attestation's result and the standing it
// gives the node are committed together, once. A result of a node revoked
// meanwhile is stored, as PutResult then SetNodeState would have, and
// ErrRevoked returned.
func (s *DB) PutResultState(ctx context.Context, r Result, state NodeState, reason string, at time.Time) (changed bool, err error) {
	c, revoked, err := s.PutResultStates(ctx, []ResultState{{Result: r, State: state, Reason: reason}}, at)
	switch {
	case err != nil:
		return false, err
	case revoked[0]:
		return false, ErrRevoked
	}
	return c[0], nil
}

// PutResultStates is PutResultState for several results in one
// transaction, in order: one commit (one flush) for all of them. A result
// of a node revoked meanwhile is stored and reported in revoked; any
// other error rolls back every one.
func (s *DB) PutResultStates(ctx context.Context, rs []ResultState, at time.Time) (changed, revoked []bool, err error) {
	changed, revoked = make([]bool, len(rs)), make([]bool, len(rs))
	err = s.inTx(ctx, "put results and states", func(tx *txn) error {
		for i, x := range rs {
			if err := putResult(ctx, tx, x.Result); err != nil {
				return err
			}
			c, err := setNodeState(ctx, tx, x.Result.NodeID, x.State, x.Reason, at)
			switch {
			case errors.Is(err, ErrRevoked):
				revoked[i] = true
			case err != nil:
				return err
			default:
				changed[i] = c
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return changed, revoked, nil
}

// NodeStanding returns a node with its latest verdict (LatestVerdict) in
// one query; ErrNotFound when the node is not enrolled. A node that never
// attested comes with a zero Result and found false.
func (s *DB) NodeStanding(ctx context.Context, id string) (_ Node, _ Result, found bool, err error) {
	row := s.db.QueryRowContext(ctx, `SELECT `+nodeColumnsOf("n")+`, r.id IS NOT NULL, `+verdictColumnsOrEmpty+`
		FROM nodes n LEFT JOIN results r ON r.rowid = (SELECT rowid FROM results
			WHERE node_id = n.id ORDER BY time DESC, rowid DESC LIMIT 1)
		WHERE n.id = ?`, id)
	var (
		n                Node
		r                Result
		at, changed, rat sql.NullInt64
		findings, claims string
		sel              string
		passed           sql.NullBool
	)
	err = row.Scan(&n.ID, &n.SPIFFEID, &n.EKPublic, &n.EKCert, &n.AKPublic, &at, &n.State, &n.StateReason, &changed,
		&found, &r.ID, &r.NodeID, &rat, &passed, &findings, &r.PCRDigest, &sel, &r.Policy, &claims)
	if absent(err) {
		return Node{}, Result{}, false, ErrNotFound
	}
	if err != nil {
		return Node{}, Result{}, false, wrap("node standing", err)
	}
	n.EKPublic, n.EKCert, n.AKPublic = blob(n.EKPublic), blob(n.EKCert), blob(n.AKPublic)
	n.EnrolledAt, n.StateChangedAt = fromNanos(at), fromNanos(changed)
	if !found {
		return n, Result{}, false, nil
	}
	r.Time, r.Passed = fromNanos(rat), passed.Bool
	if err := s.verdicts.decode(&r, findings, claims, sel); err != nil {
		return Node{}, Result{}, false, wrap("node standing", err)
	}
	return n, r, true, nil
}

// nodeColumnsOf is nodeColumns of the table aliased a.
func nodeColumnsOf(a string) string {
	return a + `.id, ` + a + `.spiffe_id, ` + a + `.ek_public, ` + a + `.ek_cert, ` + a + `.ak_public, ` + a + `.enrolled_at, ` +
		a + `.state, ` + a + `.state_reason, ` + a + `.state_changed_at`
}

// verdictColumnsOrEmpty are verdictColumns of results r (without the
// evidence), empty text where the LEFT JOIN found no result.
const verdictColumnsOrEmpty = `COALESCE(r.id, ''), COALESCE(r.node_id, ''), r.time, r.passed, COALESCE(r.findings, 'null'),
	COALESCE(r.pcr_digest, ''), COALESCE(r.pcr_selection, ''), COALESCE(r.policy, ''), COALESCE(r.claims, 'null')`

// inTx runs f in one transaction, committing when it returns nil. On
// SQLite f is a write of the durable handle's group commit (group.do):
// its statements run in a savepoint of a transaction shared with other
// writes, without ctx's cancellation, and it must not write through s.db
// itself (the group would wait for itself).
func (s *DB) inTx(ctx context.Context, op string, f func(*txn) error) (err error) {
	if s.db.g != nil {
		var ferr error
		err := s.db.g.do(ctx, func(tx *txn) error {
			ferr = f(tx)
			return ferr
		})
		switch {
		case ferr != nil:
			return ferr
		case err != nil:
			return wrap(op, err)
		}
		return nil
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return wrap(op, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, ignoreDone(tx.Rollback()))
		}
	}()
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(); err != nil {
		return wrap(op, err)
	}
	return nil
}

// querier is a conn or a txn.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Nodes returns all nodes ordered by ID.
func (s *DB) Nodes(ctx context.Context) ([]Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+nodeColumns+` FROM nodes ORDER BY id`)
	if err != nil {
		return nil, wrap("nodes", err)
	}
	return collect(rows, scanNode, "nodes")
}

// PutNonce records an issued nonce. The node must be enrolled.
func (s *DB) PutNonce(ctx context.Context, n Nonce) error {
	return putNonce(ctx, s.db, n)
}

func putNonce(ctx context.Context, q querier, n Nonce) error {
	if n.ExpiresAt.IsZero() {
		return errors.New("store: put nonce: no expiry")
	}
	_, err := q.ExecContext(ctx, `INSERT INTO nonces (value, node_id, expires_at) VALUES (?, ?, ?)`,
		n.Value, n.NodeID, nanos(n.ExpiresAt))
	if err != nil {
		return wrap("put nonce", err)
	}
	return nil
}

// IssueNonce is PutNonce then TrimNonces(n.NodeID, keep), in one
// transaction: one commit per challenge, not two.
func (s *DB) IssueNonce(ctx context.Context, n Nonce, keep int) error {
	return s.inTx(ctx, "issue nonce", func(tx *txn) error {
		if err := putNonce(ctx, tx, n); err != nil {
			return err
		}
		return trimNonces(ctx, tx, n.NodeID, keep)
	})
}

// ConsumeNonce marks a nonce of nodeID used. One conditional UPDATE does
// it, so of any number of callers, in any number of processes, one wins.
// A nonce both used and expired is reported as replayed.
func (s *DB) ConsumeNonce(ctx context.Context, nodeID string, value []byte, now time.Time) error {
	if !validText(nodeID) {
		return ErrNonceUnknown
	}
	at := nanos(now)
	n, err := s.affected(ctx, "consume nonce", `UPDATE nonces SET used_at = ?
		WHERE node_id = ? AND value = ? AND used_at IS NULL AND expires_at > ?`,
		at, nodeID, value, at)
	if err != nil {
		return err
	}
	if n == 1 {
		return nil
	}
	var used, expires sql.NullInt64
	err = s.db.QueryRowContext(ctx, `SELECT used_at, expires_at FROM nonces WHERE node_id = ? AND value = ?`,
		nodeID, value).Scan(&used, &expires)
	switch {
	case absent(err):
		return ErrNonceUnknown
	case err != nil:
		return wrap("consume nonce", err)
	case used.Valid:
		return ErrNonceReplayed
	case !now.Before(fromNanos(expires)):
		return ErrNonceExpired
	}
	// Unused and unexpired, yet the UPDATE did not match: now is not a
	// time nanos can represent.
	return fmt.Errorf("store: consume nonce: cannot consume at %v", now)
}

// PruneNonces deletes nonces that expired before now.
func (s *DB) PruneNonces(ctx context.Context, now time.Time) error {
	return s.deleteExpired(ctx, "prune nonces", `DELETE FROM nonces WHERE expires_at < ?`, now)
}

// ConsumeWrit records a single-use writ's jti; the primary key makes a
// second insert fail, in any process.
func (s *DB) ConsumeWrit(ctx context.Context, jti string, expires, now time.Time) error {
	if jti == "" || expires.IsZero() {
		return errors.New("store: consume writ: no jti or no expiry")
	}
	_, err := s.db.ExecContext(ctx, `INSERT INTO used_writs (jti, expires_at, used_at) VALUES (?, ?, ?)`,
		jti, nanos(expires), nanos(now))
	if violates(err, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY, "used_writs_pkey") {
		return ErrWritUsed
	}
	if err != nil {
		return wrap("consume writ", err)
	}
	return nil
}

// PruneWrits forgets used writs that expired before before.
func (s *DB) PruneWrits(ctx context.Context, before time.Time) error {
	return s.deleteExpired(ctx, "prune writs", `DELETE FROM used_writs WHERE expires_at < ?`, before)
}

// PutResult records an attestation result. The node must be enrolled.
func (s *DB) PutResult(ctx context.Context, r Result) error {
	return putResult(ctx, s.db, r)
}

func putResult(ctx context.Context, q querier, r Result) error {
	findings, err := json.Marshal(r.Findings)
	if err != nil {
		return fmt.Errorf("store: put result: findings: %w", err)
	}
	claims, err := json.Marshal(r.Claims)
	if err != nil {
		return fmt.Errorf("store: put result: claims: %w", err)
	}
	sel, err := json.Marshal(r.Sel)
	if err != nil {
		return fmt.Errorf("store: put result: selection: %w", err)
	}
	_, err = q.ExecContext(ctx, `INSERT INTO results
		(id, node_id, time, passed, findings, pcr_digest, pcr_selection, policy, claims, evidence)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
		r.ID, r.NodeID, nanos(r.Time), r.Passed, string(findings), r.PCRDigest, string(sel), r.Policy, string(claims), r.Evidence)
	if err != nil {
		return wrap("put result", err)
	}
	return nil
}

const resultColumns = `id, node_id, time, passed, findings, pcr_digest, pcr_selection, policy, claims, evidence`

func scanResult(row scanner) (Result, error) {
	var (
		r                Result
		at               sql.NullInt64
		findings, claims string
		sel              string
	)
	if err := row.Scan(&r.ID, &r.NodeID, &at, &r.Passed, &findings, &r.PCRDigest, &sel, &r.Policy, &claims, &r.Evidence); err != nil {
		return Result{}, err
	}
	r.Time, r.Evidence = fromNanos(at), blob(r.Evidence)
	if err := decodeVerdict(&r, findings, claims, sel); err != nil {
		return Result{}, err
	}
	return r, nil
}

// decodeVerdict decodes a result's JSON columns into r.
func decodeVerdict(r *Result, findings, claims, sel string) error {
	if sel != "" { // results of older brokers have none
		if err := json.Unmarshal([]byte(sel), &r.Sel); err != nil {
			return fmt.Errorf("result %s: selection: %w", r.ID, err)
		}
	}
	if err := json.Unmarshal([]byte(findings), &r.Findings); err != nil {
		return fmt.Errorf("result %s: findings: %w", r.ID, err)
	}
	if err := json.Unmarshal([]byte(claims), &r.Claims); err != nil {
		return fmt.Errorf("result %s: claims: %w", r.ID, err)
	}
	return nil
}

// Result returns one result, or ErrNotFound.
func (s *DB) Result(ctx context.Context, id string) (Result, error) {
	r, err := scanResult(s.db.QueryRowContext(ctx, `SELECT `+resultColumns+` FROM results WHERE id = ?`, id))
	if absent(err) {
		return Result{}, ErrNotFound
	}
	if err != nil {
		return Result{}, wrap("result", err)
	}
	return r, nil
}

// LatestResult returns a node's most recent result, or ErrNotFound. Of
// results with the same time, the last recorded is the most recent.
func (s *DB) LatestResult(ctx context.Context, nodeID string) (Result, error) {
	return s.latestResult(ctx, nodeID, resultColumns)
}

// LatestVerdict is LatestResult without the evidence, which holds the
// node's event logs (its runtime log grows with every exec): the column
// is not read.
func (s *DB) LatestVerdict(ctx context.Context, nodeID string) (Result, error) {
	return s.latestResult(ctx, nodeID, verdictColumns)
}

// verdictColumns are resultColumns with NULL (read as nil) for the
// evidence.
const verdictColumns = `id, node_id, time, passed, findings, pcr_digest, pcr_selection, policy, claims, NULL`

func (s *DB) latestResult(ctx context.Context, nodeID, columns string) (Result, error) {
	r, err := scanResult(s.db.QueryRowContext(ctx, `SELECT `+columns+` FROM results
		WHERE node_id = ? ORDER BY time DESC, rowid DESC LIMIT 1`, nodeID))
	if absent(err) {
		return Result{}, ErrNotFound
	}
	if err != nil {
		return Result{}, wrap("latest result", err)
	}
	return r, nil
}

// Results returns a node's results, newest first, at most limit; none when
// limit is not positive.
func (s *DB) Results(ctx context.Context, nodeID string, limit int) ([]Result, error) {
	if limit <= 0 {
		return nil, nil
	}
	rows, err := s.db.QueryContext(ctx, `SELECT `+resultColumns+` FROM results
		WHERE node_id = ? ORDER BY time DESC, rowid DESC LIMIT ?`, nodeID, limit)
	if err != nil {
		return nil, wrap("results", err)
	}
	return collect(rows, scanResult, "results")
}

// PutSVID records an issued SVID. Its node and result must be stored.
func (s *DB) PutSVID(ctx context.Context, v SVID) error {
	_, err := s.db.ExecContext(ctx, `INSERT INTO svids (serial, node_id, spiffe_id, result_id, issued_at, not_after)
		VALUES (?, ?, ?, ?, ?, ?)`,
		v.Serial, v.NodeID, v.SPIFFEID, v.ResultID, nanos(v.IssuedAt), nanos(v.NotAfter))
	if err != nil {
		return wrap("put svid", err)
	}
	return nil
}

func scanSVID(row scanner) (SVID, error) {
	var (
		v                SVID
		issued, notAfter sql.NullInt64
	)
	if err := row.Scan(&v.Serial, &v.NodeID, &v.SPIFFEID, &v.ResultID, &issued, &notAfter); err != nil {
		return SVID{}, err
	}
	v.IssuedAt, v.NotAfter = fromNanos(issued), fromNanos(notAfter)
	return v, nil
}

// SVIDs returns the SVIDs issued to a node, newest first.
func (s *DB) SVIDs(ctx context.Context, nodeID string) ([]SVID, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT serial, node_id, spiffe_id, result_id, issued_at, not_after
		FROM svids WHERE node_id = ? ORDER BY issued_at DESC, rowid DESC`, nodeID)
	if err != nil {
		return nil, wrap("svids", err)
	}
	return collect(rows, scanSVID, "svids")
}

// SVIDBySerial returns the SVID issued with that serial (hex), or
// ErrNotFound.
func (s *DB) SVIDBySerial(ctx context.Context, serial string) (SVID, error) {
	v, err := scanSVID(s.db.QueryRowContext(ctx, `SELECT serial, node_id, spiffe_id, result_id, issued_at, not_after
		FROM svids WHERE serial = ?`, serial))
	if absent(err) {
		return SVID{}, ErrNotFound
	}
	if err != nil {
		return SVID{}, wrap("svid", err)
	}
	return v, nil
}

// collect scans every row with scan and closes rows.
func collect[T any](rows *sql.Rows, scan func(scanner) (T, error), op string) (_ []T, err error) {
	defer func() {
		if cerr := rows.Close(); cerr != nil && err == nil {
			err = wrap(op, cerr)
		}
	}()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, wrap(op, err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		return nil, wrap(op, err)
	}
	return out, nil
}
