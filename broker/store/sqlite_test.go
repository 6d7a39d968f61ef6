package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/writ-dev/writ/attest"
)

// t0 is a fixed instant with nanoseconds, in UTC as the store returns it.
var t0 = time.Date(2026, 3, 14, 15, 9, 26, 535897932, time.UTC)

func openTest(t *testing.T, path string) *SQLite {
	t.Helper()
	s, err := openAt(location(t, path))
	if err != nil {
		t.Fatalf("open %s store: %v", backend, err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func newStore(t *testing.T) *SQLite {
	t.Helper()
	return openTest(t, filepath.Join(t.TempDir(), "broker.db"))
}

// queryAll returns the single column of every row query returns.
func queryAll[T any](s *SQLite, query string) ([]T, error) {
	rows, err := s.db.QueryContext(context.Background(), query)
	if err != nil {
		return nil, err
	}
	return collect(rows, func(row scanner) (T, error) {
		var v T
		err := row.Scan(&v)
		return v, err
	}, "test query")
}

func testNode(id string) Node {
	return Node{
		ID:         id,
		SPIFFEID:   "spiffe://example.org/node/" + id,
		EKPublic:   []byte("ek-" + id),
		EKCert:     []byte("cert-" + id),
		AKPublic:   []byte("ak-" + id),
		EnrolledAt: t0,
		State:      NodeEnrolled, // what a new node reads back as
	}
}

func putNodes(t *testing.T, s *SQLite, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := s.PutNode(context.Background(), testNode(id)); err != nil {
			t.Fatalf("PutNode(%s): %v", id, err)
		}
	}
}

func failedResult(id, nodeID string, at time.Time) Result {
	return Result{
		ID:     id,
		NodeID: nodeID,
		Time:   at,
		Findings: []attest.Finding{
			{Reason: attest.ReasonPCRMismatch, PCR: 7, Detail: "secure boot state changed"},
			{Reason: attest.ReasonPolicyDenied, PCR: attest.NoPCR, Detail: "policy denied"},
		},
		PCRDigest: "sha256:00ff",
		Policy:    "fleet@3",
		Claims: attest.Claims{
			PCRs:     map[int]string{0: "aa", 7: "bb"},
			EventLog: &attest.LogClaims{Events: 12, EventsByPCR: map[int]int{0: 5, 7: 7}},
		},
	}
}

func TestOpenSQLiteFileModes(t *testing.T) {
	sqliteOnly(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	s := openTest(t, path)
	putNodes(t, s, "n1") // a write, so the WAL and shared memory files exist
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat: %v", err)
		}
		if got := fi.Mode().Perm(); got != 0o600 {
			t.Errorf("%s: mode %v, want 0600", filepath.Base(p), got)
		}
	}
}

func TestOpenSQLitePragmas(t *testing.T) {
	sqliteOnly(t)
	s := newStore(t)
	ctx := context.Background()
	// Hold several connections at once, so that each is a distinct one
	// and the pragmas are shown to be set per connection.
	for i := range 3 {
		c, err := s.db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := c.Close(); err != nil {
				t.Errorf("conn %d: Close: %v", i, err)
			}
		})
		for _, tc := range []struct {
			pragma string
			want   string
		}{
			{"journal_mode", "wal"},
			{"busy_timeout", "5000"},
			{"foreign_keys", "1"},
			{"synchronous", "2"}, // FULL
		} {
			var got string
			if err := c.QueryRowContext(ctx, "PRAGMA "+tc.pragma).Scan(&got); err != nil {
				t.Fatalf("conn %d: PRAGMA %s: %v", i, tc.pragma, err)
			}
			if got != tc.want {
				t.Errorf("conn %d: PRAGMA %s = %s, want %s", i, tc.pragma, got, tc.want)
			}
		}
	}
}

func TestOpenSQLiteMigrations(t *testing.T) {
	sqliteOnly(t)
	path := filepath.Join(t.TempDir(), "broker.db")
	ctx := context.Background()
	versions := func(s *SQLite) []int {
		t.Helper()
		vs, err := queryAll[int](s, `SELECT version FROM schema_version ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		return vs
	}
	want := make([]int, len(migrations))
	for i := range want {
		want[i] = i + 1
	}

	s, err := OpenSQLite(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := versions(s); !reflect.DeepEqual(got, want) {
		t.Errorf("after first open: versions %v, want %v", got, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// Reopening applies nothing twice.
	s, err = OpenSQLite(path)
	if err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if got := versions(s); !reflect.DeepEqual(got, want) {
		t.Errorf("after reopen: versions %v, want %v", got, want)
	}

	// A database migrated by a newer broker is refused.
	if _, err := s.db.ExecContext(ctx, `INSERT INTO schema_version (version, applied_at) VALUES (?, 0)`,
		len(migrations)+1); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenSQLite(path); err == nil {
		_ = s.Close()
		t.Fatal("OpenSQLite of a newer schema: no error")
	}
}

func TestOpenSQLiteMissingDir(t *testing.T) {
	sqliteOnly(t)
	if s, err := OpenSQLite(filepath.Join(t.TempDir(), "missing", "broker.db")); err == nil {
		_ = s.Close()
		t.Fatal("OpenSQLite in a missing directory: no error")
	}
}

func TestNodes(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)

	if _, err := s.Node(ctx, "n1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Node before PutNode: err %v, want ErrNotFound", err)
	}
	if got, err := s.Nodes(ctx); err != nil || len(got) != 0 {
		t.Errorf("Nodes of an empty store: %v, %v; want none", got, err)
	}

	allowListed := testNode("n2")
	allowListed.EKCert = nil
	for _, n := range []Node{testNode("n3"), testNode("n1"), allowListed} {
		if err := s.PutNode(ctx, n); err != nil {
			t.Fatalf("PutNode(%s): %v", n.ID, err)
		}
	}
	// Re-enrolling n1 with a new AK replaces it.
	reenrolled := testNode("n1")
	reenrolled.AKPublic = []byte("new ak")
	reenrolled.EnrolledAt = t0.Add(time.Hour)
	if err := s.PutNode(ctx, reenrolled); err != nil {
		t.Fatalf("PutNode(re-enroll): %v", err)
	}

	for _, want := range []Node{reenrolled, allowListed, testNode("n3")} {
		got, err := s.Node(ctx, want.ID)
		if err != nil {
			t.Fatalf("Node(%s): %v", want.ID, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("Node(%s) = %+v, want %+v", want.ID, got, want)
		}
	}
	got, err := s.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []Node{reenrolled, allowListed, testNode("n3")}; !reflect.DeepEqual(got, want) {
		t.Errorf("Nodes = %+v, want %+v", got, want)
	}
}

func TestEnrollments(t *testing.T) {
	ctx := context.Background()
	enrollment := func(id string) Enrollment {
		n := testNode("node-" + id)
		n.EnrolledAt = time.Time{}
		return Enrollment{ID: id, Node: n, Secret: []byte("secret-" + id), ExpiresAt: t0.Add(time.Minute)}
	}
	type take struct {
		id      string
		now     time.Time
		wantErr error // nil: the enrollment is returned
	}
	tests := []struct {
		name  string
		takes []take
	}{
		{"single use", []take{{"e1", t0, nil}, {"e1", t0, ErrNotFound}}},
		{"never put", []take{{"e9", t0, ErrNotFound}}},
		{"just before expiry", []take{{"e1", t0.Add(time.Minute - 1), nil}}},
		{"at expiry", []take{{"e1", t0.Add(time.Minute), ErrNotFound}}},
		{"expired is removed", []take{{"e1", t0.Add(time.Hour), ErrNotFound}, {"e1", t0, ErrNotFound}}},
		{"others untouched", []take{{"e1", t0, nil}, {"e2", t0, nil}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			for _, id := range []string{"e1", "e2"} {
				if err := s.PutEnrollment(ctx, enrollment(id)); err != nil {
					t.Fatalf("PutEnrollment(%s): %v", id, err)
				}
			}
			for i, tk := range tc.takes {
				got, err := s.TakeEnrollment(ctx, tk.id, tk.now)
				if !errors.Is(err, tk.wantErr) {
					t.Fatalf("take %d (%s): err %v, want %v", i, tk.id, err, tk.wantErr)
				}
				if tk.wantErr != nil {
					continue
				}
				if want := enrollment(tk.id); !reflect.DeepEqual(got, want) {
					t.Errorf("take %d: got %+v, want %+v", i, got, want)
				}
			}
		})
	}
}

func TestPutEnrollmentRejects(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	e := Enrollment{ID: "e1", Node: testNode("n1"), Secret: []byte("s"), ExpiresAt: t0}
	if err := s.PutEnrollment(ctx, e); err != nil {
		t.Fatal(err)
	}
	if err := s.PutEnrollment(ctx, e); err == nil {
		t.Error("PutEnrollment with a duplicate ID: no error")
	}
	if err := s.PutEnrollment(ctx, Enrollment{ID: "e2", Node: testNode("n2")}); err == nil {
		t.Error("PutEnrollment without expiry: no error")
	}
}

func TestConsumeNonce(t *testing.T) {
	ctx := context.Background()
	value := []byte{0x6e, 0x6f, 0x6e, 0x63, 0x65, 0x00, 0xff}
	expires := t0.Add(time.Minute)
	type consume struct {
		nodeID  string
		value   []byte
		now     time.Time
		wantErr error
	}
	tests := []struct {
		name     string
		consumes []consume
	}{
		{"first use", []consume{{"n1", value, t0, nil}}},
		{"second use is a replay", []consume{{"n1", value, t0, nil}, {"n1", value, t0.Add(time.Second), ErrNonceReplayed}}},
		{"other node", []consume{{"n2", value, t0, ErrNonceUnknown}, {"n1", value, t0, nil}}},
		{"never issued", []consume{{"n1", []byte("other"), t0, ErrNonceUnknown}}},
		{"prefix of an issued nonce", []consume{{"n1", value[:4], t0, ErrNonceUnknown}}},
		{"expired", []consume{{"n1", value, expires.Add(time.Second), ErrNonceExpired}}},
		{"at expiry", []consume{{"n1", value, expires, ErrNonceExpired}}},
		{"just before expiry", []consume{{"n1", value, expires.Add(-1), nil}}},
		{"expired attempt does not use it", []consume{{"n1", value, expires, ErrNonceExpired}, {"n1", value, t0, nil}}},
		{"used then expired is a replay", []consume{{"n1", value, t0, nil}, {"n1", value, expires.Add(time.Hour), ErrNonceReplayed}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			putNodes(t, s, "n1", "n2")
			if err := s.PutNonce(ctx, Nonce{Value: value, NodeID: "n1", ExpiresAt: expires}); err != nil {
				t.Fatalf("PutNonce: %v", err)
			}
			for i, c := range tc.consumes {
				if err := s.ConsumeNonce(ctx, c.nodeID, c.value, c.now); !errors.Is(err, c.wantErr) {
					t.Errorf("consume %d: err %v, want %v", i, err, c.wantErr)
				}
			}
		})
	}
}

func TestPutNonceRejects(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	putNodes(t, s, "n1")
	tests := []struct {
		name     string
		nonce    Nonce
		notFound bool
	}{
		{"no expiry", Nonce{Value: []byte("a"), NodeID: "n1"}, false},
		{"unknown node", Nonce{Value: []byte("b"), NodeID: "n9", ExpiresAt: t0}, true},
		{"reissued value", Nonce{Value: []byte("c"), NodeID: "n1", ExpiresAt: t0}, false},
	}
	if err := s.PutNonce(ctx, Nonce{Value: []byte("c"), NodeID: "n1", ExpiresAt: t0}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := s.PutNonce(ctx, tc.nonce)
			if err == nil {
				t.Fatal("no error")
			}
			if errors.Is(err, ErrNotFound) != tc.notFound {
				t.Errorf("err %v: errors.Is(ErrNotFound) = %t, want %t", err, !tc.notFound, tc.notFound)
			}
		})
	}
}

// Twenty callers race for one nonce, through two stores open on the same
// file as two brokers would be: exactly one wins, the rest see a replay.
func TestConsumeNonceRace(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	a, b := openTest(t, path), openTest(t, path)
	putNodes(t, a, "n1")
	value := []byte("raced")
	if err := a.PutNonce(ctx, Nonce{Value: value, NodeID: "n1", ExpiresAt: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}

	const callers = 20
	errs := make([]error, callers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range callers {
		s := a
		if i%2 == 1 {
			s = b
		}
		wg.Go(func() {
			<-start
			errs[i] = s.ConsumeNonce(ctx, "n1", value, t0)
		})
	}
	close(start)
	wg.Wait()

	won := 0
	for i, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrNonceReplayed):
			t.Errorf("caller %d: err %v, want nil or ErrNonceReplayed", i, err)
		}
	}
	if won != 1 {
		t.Errorf("%d callers consumed the nonce, want 1", won)
	}
}

// The same race between processes: the test binary, run again as four
// brokers of five callers each. Exactly one of the twenty wins.
func TestConsumeNonceRaceProcesses(t *testing.T) {
	if path := os.Getenv(raceChildEnv); path != "" {
		raceChild(path)
		return
	}
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	s := openTest(t, path)
	putNodes(t, s, "n1")
	if err := s.PutNonce(ctx, Nonce{Value: []byte("raced"), NodeID: "n1", ExpiresAt: t0.Add(time.Minute)}); err != nil {
		t.Fatal(err)
	}

	const procs = 4
	outs := make([][]byte, procs)
	errs := make([]error, procs)
	var wg sync.WaitGroup
	for i := range procs {
		wg.Go(func() {
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestConsumeNonceRaceProcesses$")
			cmd.Env = append(os.Environ(), raceChildEnv+"="+location(t, path), backendEnv+"="+backend)
			outs[i], errs[i] = cmd.CombinedOutput()
		})
	}
	wg.Wait()

	won, replayed := 0, 0
	for i := range procs {
		if errs[i] != nil {
			t.Fatalf("process %d: %v\n%s", i, errs[i], outs[i])
		}
		won += strings.Count(string(outs[i]), "consume: won\n")
		replayed += strings.Count(string(outs[i]), "consume: replayed\n")
	}
	if won != 1 || replayed != procs*5-1 {
		t.Errorf("%d won and %d saw a replay, want 1 and %d", won, replayed, procs*5-1)
	}
}

const raceChildEnv = "WRIT_STORE_RACE_CHILD"

// raceChild consumes the nonce from five goroutines and prints each outcome.
func raceChild(path string) {
	s, err := openAt(path)
	if err != nil {
		fmt.Println("open:", err)
		os.Exit(1)
	}
	defer func() {
		if err := s.Close(); err != nil {
			fmt.Println("close:", err)
		}
	}()
	var (
		mu sync.Mutex
		wg sync.WaitGroup
	)
	for range 5 {
		wg.Go(func() {
			err := s.ConsumeNonce(context.Background(), "n1", []byte("raced"), t0)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				fmt.Println("consume: won")
			case errors.Is(err, ErrNonceReplayed):
				fmt.Println("consume: replayed")
			default:
				fmt.Println("consume:", err)
			}
		})
	}
	wg.Wait()
}

func TestPruneNonces(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	putNodes(t, s, "n1")
	nonces := []Nonce{
		{Value: []byte("expired"), NodeID: "n1", ExpiresAt: t0.Add(-time.Second)},
		{Value: []byte("expired, used"), NodeID: "n1", ExpiresAt: t0.Add(-time.Second)},
		{Value: []byte("expires now"), NodeID: "n1", ExpiresAt: t0},
		{Value: []byte("live"), NodeID: "n1", ExpiresAt: t0.Add(time.Minute)},
		{Value: []byte("live, used"), NodeID: "n1", ExpiresAt: t0.Add(time.Minute)},
	}
	for _, n := range nonces {
		if err := s.PutNonce(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	for _, v := range []string{"expired, used", "live, used"} {
		if err := s.ConsumeNonce(ctx, "n1", []byte(v), t0.Add(-time.Hour)); err != nil {
			t.Fatalf("ConsumeNonce(%s): %v", v, err)
		}
	}
	if err := s.PruneNonces(ctx, t0); err != nil {
		t.Fatal(err)
	}

	values, err := queryAll[[]byte](s, `SELECT value FROM nonces ORDER BY value`)
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	for _, v := range values {
		left = append(left, string(v))
	}
	if want := []string{"expires now", "live", "live, used"}; !reflect.DeepEqual(left, want) {
		t.Errorf("after prune: nonces %q, want %q", left, want)
	}
	// A pruned nonce is unknown; a kept one still works, once.
	if err := s.ConsumeNonce(ctx, "n1", []byte("expired"), t0.Add(-time.Hour)); !errors.Is(err, ErrNonceUnknown) {
		t.Errorf("consume pruned: err %v, want ErrNonceUnknown", err)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("live"), t0); err != nil {
		t.Errorf("consume kept: %v", err)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("live, used"), t0); !errors.Is(err, ErrNonceReplayed) {
		t.Errorf("consume kept used: err %v, want ErrNonceReplayed", err)
	}
}

func TestResults(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	putNodes(t, s, "n1", "n2", "n3")

	if _, err := s.Result(ctx, "r1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Result before PutResult: err %v, want ErrNotFound", err)
	}
	if _, err := s.LatestResult(ctx, "n1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("LatestResult before PutResult: err %v, want ErrNotFound", err)
	}

	passed := Result{
		ID: "r-pass", NodeID: "n1", Time: t0.Add(time.Minute), Passed: true,
		PCRDigest: "sha256:abcd", Policy: "fleet@3",
		Claims: attest.Claims{PCRs: map[int]string{0: "aa"}},
	}
	// Put out of time order; r-same-1 and r-same-2 share a time, so their
	// insertion order decides.
	put := []Result{
		failedResult("r-old", "n1", t0),
		failedResult("r-new", "n1", t0.Add(2*time.Minute)),
		passed,
		failedResult("r-same-1", "n1", t0.Add(3*time.Minute)),
		failedResult("r-same-2", "n1", t0.Add(3*time.Minute)),
		failedResult("r-other", "n2", t0.Add(time.Hour)),
	}
	put[4].Evidence = []byte(`{"event_log":"AAAA"}`)
	for _, r := range put {
		if err := s.PutResult(ctx, r); err != nil {
			t.Fatalf("PutResult(%s): %v", r.ID, err)
		}
	}
	byID := map[string]Result{}
	for _, r := range put {
		byID[r.ID] = r
		got, err := s.Result(ctx, r.ID)
		if err != nil {
			t.Fatalf("Result(%s): %v", r.ID, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("Result(%s) = %+v, want %+v", r.ID, got, r)
		}
	}

	latest := []struct {
		nodeID  string
		wantID  string
		wantErr error
	}{
		{"n1", "r-same-2", nil},
		{"n2", "r-other", nil},
		{"n3", "", ErrNotFound},
	}
	for _, tc := range latest {
		got, err := s.LatestResult(ctx, tc.nodeID)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("LatestResult(%s): err %v, want %v", tc.nodeID, err, tc.wantErr)
			continue
		}
		if tc.wantErr == nil && !reflect.DeepEqual(got, byID[tc.wantID]) {
			t.Errorf("LatestResult(%s) = %s, want %s", tc.nodeID, got.ID, tc.wantID)
		}
		// LatestVerdict: the same result without its evidence.
		got, err = s.LatestVerdict(ctx, tc.nodeID)
		if !errors.Is(err, tc.wantErr) {
			t.Errorf("LatestVerdict(%s): err %v, want %v", tc.nodeID, err, tc.wantErr)
			continue
		}
		want := byID[tc.wantID]
		want.Evidence = nil
		if tc.wantErr == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("LatestVerdict(%s) = %+v, want %+v", tc.nodeID, got, want)
		}
	}

	list := []struct {
		nodeID  string
		limit   int
		wantIDs []string
	}{
		{"n1", 10, []string{"r-same-2", "r-same-1", "r-new", "r-pass", "r-old"}},
		{"n1", 5, []string{"r-same-2", "r-same-1", "r-new", "r-pass", "r-old"}},
		{"n1", 2, []string{"r-same-2", "r-same-1"}},
		{"n1", 1, []string{"r-same-2"}},
		{"n1", 0, nil},
		{"n1", -1, nil},
		{"n2", 10, []string{"r-other"}},
		{"n3", 10, nil},
	}
	for _, tc := range list {
		got, err := s.Results(ctx, tc.nodeID, tc.limit)
		if err != nil {
			t.Fatalf("Results(%s, %d): %v", tc.nodeID, tc.limit, err)
		}
		var ids []string
		for _, r := range got {
			ids = append(ids, r.ID)
			if !reflect.DeepEqual(r, byID[r.ID]) {
				t.Errorf("Results(%s, %d): %s = %+v, want %+v", tc.nodeID, tc.limit, r.ID, r, byID[r.ID])
			}
		}
		if !reflect.DeepEqual(ids, tc.wantIDs) {
			t.Errorf("Results(%s, %d) = %v, want %v", tc.nodeID, tc.limit, ids, tc.wantIDs)
		}
	}
}

func TestPutResultRejects(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	putNodes(t, s, "n1")
	if err := s.PutResult(ctx, failedResult("r1", "n9", t0)); !errors.Is(err, ErrNotFound) {
		t.Errorf("PutResult for an unknown node: err %v, want ErrNotFound", err)
	}
	if err := s.PutResult(ctx, failedResult("r1", "n1", t0)); err != nil {
		t.Fatal(err)
	}
	if err := s.PutResult(ctx, failedResult("r1", "n1", t0)); err == nil {
		t.Error("PutResult with a duplicate ID: no error")
	}
}

func TestSVIDs(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	putNodes(t, s, "n1", "n2")
	for _, r := range []Result{failedResult("r1", "n1", t0), failedResult("r2", "n2", t0)} {
		if err := s.PutResult(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	svid := func(serial, nodeID, resultID string, issued time.Time) SVID {
		return SVID{
			Serial: serial, NodeID: nodeID, SPIFFEID: "spiffe://example.org/node/" + nodeID,
			ResultID: resultID, IssuedAt: issued, NotAfter: issued.Add(time.Hour),
		}
	}
	put := []SVID{
		svid("01", "n1", "r1", t0),
		svid("03", "n1", "r1", t0.Add(2*time.Minute)),
		svid("02", "n1", "r1", t0.Add(time.Minute)),
		svid("04", "n1", "r1", t0.Add(2*time.Minute)),
		svid("0a", "n2", "r2", t0),
	}
	for _, v := range put {
		if err := s.PutSVID(ctx, v); err != nil {
			t.Fatalf("PutSVID(%s): %v", v.Serial, err)
		}
	}
	tests := []struct {
		nodeID string
		want   []SVID
	}{
		{"n1", []SVID{put[3], put[1], put[2], put[0]}},
		{"n2", []SVID{put[4]}},
		{"n3", nil},
	}
	for _, tc := range tests {
		got, err := s.SVIDs(ctx, tc.nodeID)
		if err != nil {
			t.Fatalf("SVIDs(%s): %v", tc.nodeID, err)
		}
		if !reflect.DeepEqual(got, tc.want) {
			t.Errorf("SVIDs(%s) = %+v, want %+v", tc.nodeID, got, tc.want)
		}
	}

	for _, bad := range []SVID{svid("10", "n9", "r1", t0), svid("11", "n1", "r9", t0)} {
		if err := s.PutSVID(ctx, bad); !errors.Is(err, ErrNotFound) {
			t.Errorf("PutSVID(node %s, result %s): err %v, want ErrNotFound", bad.NodeID, bad.ResultID, err)
		}
	}
}

// What one broker wrote, the next one to open the file reads.
func TestSQLitePersists(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "broker.db")
	node := testNode("n1")
	result := failedResult("r1", "n1", t0)
	svid := SVID{Serial: "01", NodeID: "n1", SPIFFEID: node.SPIFFEID, ResultID: "r1", IssuedAt: t0, NotAfter: t0.Add(time.Hour)}
	enrollment := Enrollment{ID: "e1", Node: testNode("n2"), Secret: []byte("s"), ExpiresAt: t0.Add(time.Minute)}

	s, err := openAt(location(t, path))
	if err != nil {
		t.Fatal(err)
	}
	for _, err := range []error{
		s.PutNode(ctx, node),
		s.PutResult(ctx, result),
		s.PutSVID(ctx, svid),
		s.PutEnrollment(ctx, enrollment),
		s.PutNonce(ctx, Nonce{Value: []byte("used"), NodeID: "n1", ExpiresAt: t0.Add(time.Minute)}),
		s.PutNonce(ctx, Nonce{Value: []byte("fresh"), NodeID: "n1", ExpiresAt: t0.Add(time.Minute)}),
		s.ConsumeNonce(ctx, "n1", []byte("used"), t0),
	} {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTest(t, path)
	if got, err := s.Nodes(ctx); err != nil || !reflect.DeepEqual(got, []Node{node}) {
		t.Errorf("Nodes after reopen = %+v, %v; want %+v", got, err, []Node{node})
	}
	if got, err := s.LatestResult(ctx, "n1"); err != nil || !reflect.DeepEqual(got, result) {
		t.Errorf("LatestResult after reopen = %+v, %v; want %+v", got, err, result)
	}
	if got, err := s.SVIDs(ctx, "n1"); err != nil || !reflect.DeepEqual(got, []SVID{svid}) {
		t.Errorf("SVIDs after reopen = %+v, %v; want %+v", got, err, []SVID{svid})
	}
	if got, err := s.TakeEnrollment(ctx, "e1", t0); err != nil || !reflect.DeepEqual(got, enrollment) {
		t.Errorf("TakeEnrollment after reopen = %+v, %v; want %+v", got, err, enrollment)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("used"), t0); !errors.Is(err, ErrNonceReplayed) {
		t.Errorf("used nonce after reopen: err %v, want ErrNonceReplayed", err)
	}
	if err := s.ConsumeNonce(ctx, "n1", []byte("fresh"), t0); err != nil {
		t.Errorf("fresh nonce after reopen: %v", err)
	}
}

func TestSetNodeState(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	putNodes(t, s, "n1")
	changed, err := s.SetNodeState(ctx, "n1", NodeFailed, "policy_denied", t0)
	if err != nil || !changed {
		t.Fatalf("first change: %v %v", changed, err)
	}
	if changed, err = s.SetNodeState(ctx, "n1", NodeFailed, "policy_denied", t0); err != nil || changed {
		t.Fatalf("same state again: changed %v, err %v", changed, err)
	}
	if changed, err = s.SetNodeState(ctx, "n1", NodeRevoked, "stolen", t0); err != nil || !changed {
		t.Fatalf("revoke: %v %v", changed, err)
	}
	if _, err = s.SetNodeState(ctx, "n1", NodeAttested, "", t0); !errors.Is(err, ErrRevoked) {
		t.Fatalf("a revoked node changed state: %v", err)
	}
	n, err := s.Node(ctx, "n1")
	if err != nil || n.State != NodeRevoked || n.StateReason != "stolen" || !n.StateChangedAt.Equal(t0) {
		t.Fatalf("node after revocation: %+v %v", n, err)
	}
	// PutNode (re-enrollment) keeps the standing.
	if err := s.PutNode(ctx, testNode("n1")); err != nil {
		t.Fatal(err)
	}
	if n, _ = s.Node(ctx, "n1"); n.State != NodeRevoked {
		t.Fatalf("re-enrollment cleared the revocation: %+v", n)
	}
	if _, err := s.SetNodeState(ctx, "nobody", NodeFailed, "", t0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown node: %v", err)
	}
}
