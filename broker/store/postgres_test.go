package store

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Both dialects have the same schema versions.
func TestMigrationListsMatch(t *testing.T) {
	if len(migrations) != len(pgMigrations) {
		t.Fatalf("%d SQLite migrations, %d PostgreSQL migrations: every version needs both", len(migrations), len(pgMigrations))
	}
}

func TestRebind(t *testing.T) {
	for in, want := range map[string]string{
		`SELECT ? , ?`:                  `SELECT $1 , $2`,
		`WHERE a = '?' AND b = ?`:       `WHERE a = '?' AND b = $1`,
		`WHERE "we?ird" = ? OR c = 'x'`: `WHERE "we?ird" = $1 OR c = 'x'`,
		`no placeholders`:               `no placeholders`,
	} {
		if got := rebind(in); got != want {
			t.Errorf("rebind(%q) = %q, want %q", in, got, want)
		}
	}
}

// A DSN's password never reaches a log line or an error.
func TestRedactHidesThePassword(t *testing.T) {
	for _, dsn := range []string{
		"postgres://writ:s3cret-pw@db.example:5433/writ?sslmode=disable",
		"host=db.example port=5433 user=writ password=s3cret-pw dbname=writ sslmode=disable",
		"postgres://writ:s3cret-pw@db.example:bad-port/writ", // does not parse
	} {
		if got := Redact(dsn); strings.Contains(got, "s3cret-pw") {
			t.Errorf("Redact(%q) = %q: shows the password", dsn, got)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := OpenPostgres(ctx, strings.Replace(dsn, "db.example", "127.0.0.1", 1))
		cancel()
		if err == nil {
			_ = s.Close()
			continue // a server with that user and password: nothing to check
		}
		if strings.Contains(err.Error(), "s3cret-pw") {
			t.Errorf("OpenPostgres(%q): error shows the password: %v", dsn, err)
		}
	}
	if got, want := Redact("postgres://writ:pw@db.example:5433/writ"), "postgres://writ@db.example:5433/writ"; got != want {
		t.Errorf("Redact = %q, want %q", got, want)
	}
}

// Many callers, through four stores (four connection pools, as four
// brokers would hold), consume each of five single-use writs at once:
// exactly one wins each, the others get ErrWritUsed.
func TestConsumeWritConcurrently(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	stores := []*DB{openTest(t, path), openTest(t, path), openTest(t, path), openTest(t, path)}
	const jtis, callers = 5, 16
	var (
		mu   sync.Mutex
		won  = map[string]int{}
		bad  []error
		wg   sync.WaitGroup
		gate = make(chan struct{})
	)
	for j := range jtis {
		for c := range callers {
			jti := fmt.Sprintf("jti-%d", j)
			s := stores[c%len(stores)]
			wg.Go(func() {
				<-gate
				err := s.ConsumeWrit(ctx, jti, t0.Add(time.Minute), t0)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won[jti]++
				case !errors.Is(err, ErrWritUsed):
					bad = append(bad, err)
				}
			})
		}
	}
	close(gate)
	wg.Wait()
	for _, err := range bad {
		t.Errorf("ConsumeWrit: %v, want nil or ErrWritUsed", err)
	}
	for j := range jtis {
		if n := won[fmt.Sprintf("jti-%d", j)]; n != 1 {
			t.Errorf("jti-%d consumed %d times, want once", j, n)
		}
	}
}

// Writs issued under a parent while its ancestor is revoked, from two
// stores: every descendant recorded is revoked at the end (a child that
// slipped in during the revocation would outlive it), or was refused
// with ErrParentRevoked.
func TestPutIssuedWritRacesRevoke(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	a, b := openTest(t, path), openTest(t, path)
	put := func(s *DB, jti, parent string, depth int) error {
		return s.PutIssuedWrit(ctx, IssuedWrit{JTI: jti, Subject: "spiffe://example.org/w", Node: "spiffe://example.org/node/n1",
			IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), Parent: parent, Depth: depth})
	}
	for round := range 5 {
		root, mid := fmt.Sprintf("root-%d", round), fmt.Sprintf("mid-%d", round)
		if err := put(a, root, "", 0); err != nil {
			t.Fatal(err)
		}
		if err := put(a, mid, root, 1); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		gate := make(chan struct{})
		for i := range 8 {
			s := []*DB{a, b}[i%2]
			wg.Go(func() {
				<-gate
				if err := put(s, fmt.Sprintf("leaf-%d-%d", round, i), mid, 2); err != nil && !errors.Is(err, ErrParentRevoked) {
					t.Errorf("put leaf: %v", err)
				}
			})
		}
		wg.Go(func() {
			<-gate
			if _, err := b.RevokeWrit(ctx, root, "test", t0); err != nil {
				t.Errorf("revoke: %v", err)
			}
		})
		close(gate)
		wg.Wait()
		for i := range 8 {
			w, err := a.IssuedWrit(ctx, fmt.Sprintf("leaf-%d-%d", round, i))
			switch {
			case errors.Is(err, ErrNotFound): // refused
			case err != nil:
				t.Fatal(err)
			case w.RevokedAt.IsZero():
				t.Errorf("round %d: leaf %d recorded under a revoked parent, not revoked", round, i)
			}
		}
	}
}

// A database whose schema is newer than the build's is refused, on
// either backend.
func TestNewerSchemaRefused(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	s := openTest(t, path)
	if _, err := s.db.ExecContext(ctx, `INSERT INTO schema_version (version, applied_at) VALUES (?, 0)`, SchemaVersion()+1); err != nil {
		t.Fatal(err)
	}
	if s, err := openAt(location(t, path)); err == nil || !strings.Contains(err.Error(), "newer") {
		if err == nil {
			_ = s.Close()
		}
		t.Fatalf("open a newer schema: %v, want refused", err)
	}
}

// Keys no row can have (not UTF-8, or with a NUL: PostgreSQL refuses them
// as text, SQLite stores any bytes) are reported absent by every lookup,
// with the store's own errors, on either backend: a request carrying one
// is refused as unknown, not as a database failure.
func TestInvalidTextKeysAreAbsent(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	putNodes(t, s, "n1")
	for _, key := range []string{"\xff\xfe", "n1\x00"} {
		checks := map[string]error{}
		_, checks["Node"] = s.Node(ctx, key)
		_, checks["TakeEnrollment"] = s.TakeEnrollment(ctx, key, t0)
		_, checks["Result"] = s.Result(ctx, key)
		_, checks["LatestResult"] = s.LatestResult(ctx, key)
		_, checks["SVIDBySerial"] = s.SVIDBySerial(ctx, key)
		_, checks["LatestAuditAnchor"] = s.LatestAuditAnchor(ctx, key)
		_, checks["Entry"] = s.Entry(ctx, key)
		checks["DeleteEntry"] = s.DeleteEntry(ctx, key)
		_, checks["IssuedWrit"] = s.IssuedWrit(ctx, key)
		_, checks["RevokeWrit"] = s.RevokeWrit(ctx, key, "r", t0)
		_, checks["FederatedBundle"] = s.FederatedBundle(ctx, key)
		_, checks["Approval"] = s.Approval(ctx, key)
		_, checks["SetNodeState"] = s.SetNodeState(ctx, key, NodeFailed, "", t0)
		for op, err := range checks {
			if !errors.Is(err, ErrNotFound) {
				t.Errorf("%s(%q): %v, want ErrNotFound", op, key, err)
			}
		}
		if err := s.ConsumeNonce(ctx, key, []byte("v"), t0); !errors.Is(err, ErrNonceUnknown) {
			t.Errorf("ConsumeNonce(%q): %v, want ErrNonceUnknown", key, err)
		}
		if err := s.UseApproval(ctx, key, "jti", t0); !errors.Is(err, ErrApprovalUnusable) {
			t.Errorf("UseApproval(%q): %v, want ErrApprovalUnusable", key, err)
		}
		if err := s.DecideApproval(ctx, key, ApprovalApproved, "by", "", t0); !errors.Is(err, ErrApprovalNotPending) {
			t.Errorf("DecideApproval(%q): %v, want ErrApprovalNotPending", key, err)
		}
	}
}

// Brokers starting together on a fresh database migrate it once: every
// open succeeds and the schema is at the latest version once.
func TestOpenConcurrently(t *testing.T) {
	path := filepath.Join(t.TempDir(), "broker.db")
	loc := location(t, path)
	const n = 4
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := openAt(loc)
			if err == nil {
				err = s.Close()
			}
			errs[i] = err
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("open %d: %v", i, err)
		}
	}
	s := openTest(t, path)
	vs, err := queryAll[int](s, `SELECT version FROM schema_version ORDER BY version`)
	if err != nil || len(vs) != SchemaVersion() || vs[len(vs)-1] != SchemaVersion() {
		t.Fatalf("schema versions %v, %v; want 1..%d once each", vs, err, SchemaVersion())
	}
}

// Brokers numbering different bundle contents at once, through two
// stores: each content gets its own number, 1..n, none twice.
func TestBundleSequenceConcurrently(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	stores := []*DB{openTest(t, path), openTest(t, path)}
	const n = 20
	got := make([]uint64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-gate
			got[i], errs[i] = stores[i%2].BundleSequence(ctx, []byte(fmt.Sprintf("content-%d", i)))
		})
	}
	close(gate)
	wg.Wait()
	seen := map[uint64]bool{}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("BundleSequence %d: %v", i, errs[i])
		}
		if seen[got[i]] || got[i] < 1 || got[i] > n {
			t.Errorf("number %d handed out twice or out of 1..%d (all: %v)", got[i], n, got)
		}
		seen[got[i]] = true
	}
}

// One pending enrollment answered by many callers at once, through two
// stores: one takes it.
func TestTakeEnrollmentConcurrently(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	stores := []*DB{openTest(t, path), openTest(t, path)}
	if err := stores[0].PutEnrollment(ctx, Enrollment{ID: "e1", Node: testNode("n1"), Secret: []byte("s"), ExpiresAt: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	const n = 16
	var (
		mu    sync.Mutex
		taken int
		wg    sync.WaitGroup
		gate  = make(chan struct{})
	)
	for i := range n {
		wg.Go(func() {
			<-gate
			_, err := stores[i%2].TakeEnrollment(ctx, "e1", t0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				taken++
			case !errors.Is(err, ErrNotFound):
				t.Errorf("TakeEnrollment: %v", err)
			}
		})
	}
	close(gate)
	wg.Wait()
	if taken != 1 {
		t.Fatalf("the enrollment was taken %d times, want once", taken)
	}
}

// Federated bundles stored at once with sequences 1..n in any order: the
// stored one ends at n, never overwritten by a lower one.
func TestPutFederatedBundleConcurrently(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	stores := []*DB{openTest(t, path), openTest(t, path)}
	const n = 20
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-gate
			seq := uint64(n - i) // highest first: the lower ones come late
			err := stores[i%2].PutFederatedBundle(ctx, FederatedBundle{TrustDomain: "a.example",
				Bundle: []byte(fmt.Sprintf("doc-%d", seq)), Sequence: &seq, FetchedAt: t0})
			if err != nil && !errors.Is(err, ErrSequenceBackwards) {
				t.Errorf("put %d: %v", seq, err)
			}
		})
	}
	close(gate)
	wg.Wait()
	b, err := stores[0].FederatedBundle(ctx, "a.example")
	if err != nil || b.Sequence == nil || *b.Sequence != n || string(b.Bundle) != fmt.Sprintf("doc-%d", n) {
		t.Fatalf("stored %+v, %v; want sequence %d", b, err, n)
	}
}

// Two revocations of overlapping trees at once, through two stores: every
// writ ends revoked, and each is reported newly revoked by exactly one.
func TestRevokeWritConcurrently(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	a, b := openTest(t, path), openTest(t, path)
	put := func(jti, parent string, depth int) {
		t.Helper()
		if err := a.PutIssuedWrit(ctx, IssuedWrit{JTI: jti, Subject: "spiffe://example.org/w", Node: "spiffe://example.org/node/n1",
			IssuedAt: t0, ExpiresAt: t0.Add(time.Hour), Parent: parent, Depth: depth}); err != nil {
			t.Fatal(err)
		}
	}
	put("root", "", 0)
	put("mid", "root", 1)
	var all []string
	for i := range 10 {
		put(fmt.Sprintf("leaf-%d", i), "mid", 2)
		all = append(all, fmt.Sprintf("leaf-%d", i))
	}
	all = append(all, "root", "mid")
	var (
		wg     sync.WaitGroup
		gate   = make(chan struct{})
		byRoot []IssuedWrit
		byMid  []IssuedWrit
	)
	wg.Go(func() {
		<-gate
		var err error
		if byRoot, err = a.RevokeWrit(ctx, "root", "root", t0); err != nil {
			t.Errorf("revoke root: %v", err)
		}
	})
	wg.Go(func() {
		<-gate
		var err error
		if byMid, err = b.RevokeWrit(ctx, "mid", "mid", t0); err != nil {
			t.Errorf("revoke mid: %v", err)
		}
	})
	close(gate)
	wg.Wait()
	count := map[string]int{}
	for _, w := range append(byRoot, byMid...) {
		count[w.JTI]++
	}
	for _, jti := range all {
		w, err := a.IssuedWrit(ctx, jti)
		if err != nil || w.RevokedAt.IsZero() {
			t.Errorf("%s after both revocations: %+v, %v; want revoked", jti, w, err)
		}
		if count[jti] != 1 {
			t.Errorf("%s reported newly revoked %d times, want once", jti, count[jti])
		}
	}
}
