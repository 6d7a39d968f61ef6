package workload

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
)

// startServer serves the Workload API for f on a fresh socket and returns
// its address for workloadapi.WithAddr.
func startServer(t *testing.T, f *fakeBroker, tick time.Duration) string {
	t.Helper()
	addr, _ := startServerGet(t, f, tick)
	return addr
}

// startServerGet is startServer that also returns the server.
func startServerGet(t *testing.T, f *fakeBroker, tick time.Duration) (string, *Server) {
	t.Helper()
	dir, err := os.MkdirTemp("", "wl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	sock := filepath.Join(dir, "workload.sock")
	s, err := NewServer(Config{Socket: sock, Broker: f, TrustDomain: td, Bundle: f.bundle, Tick: tick, Refresh: tick})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	waitFor(t, "socket", func() bool { _, err := os.Stat(sock); return err == nil })
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	return "unix://" + sock, s
}

// waitFor polls cond until it holds, failing the test after 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// selfEntry is an entry for this test process: its uid and executable hash.
func selfEntry(t *testing.T, id, spiffeID string) *brokerv1.Entry {
	_, sum := selfSHA256(t)
	return &brokerv1.Entry{Id: id, SpiffeId: spiffeID, Parent: "spiffe://writ.test/node/x", Selectors: []*brokerv1.Selector{
		{Type: TypeUnix, Value: "uid:" + strconv.Itoa(os.Getuid())},
		{Type: TypeUnix, Value: "sha256:" + sum},
	}}
}

func client(t *testing.T, addr string) *workloadapi.Client {
	t.Helper()
	c, err := workloadapi.New(testCtx(t), workloadapi.WithAddr(addr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// An unmodified go-spiffe client gets the SVID of the entry whose uid and
// sha256 selectors match it, with a key only it and the agent hold.
func TestFetchX509SVIDMatching(t *testing.T) {
	f := newFakeBroker(t)
	f.setEntries(
		selfEntry(t, "e1", "spiffe://writ.test/app"),
		&brokerv1.Entry{Id: "e2", SpiffeId: "spiffe://writ.test/other", Selectors: []*brokerv1.Selector{{Type: TypeUnix, Value: "uid:4242"}}},
	)
	addr := startServer(t, f, time.Hour)
	c := client(t, addr)
	svids, err := c.FetchX509SVIDs(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(svids) != 1 || svids[0].ID.String() != "spiffe://writ.test/app" {
		t.Fatalf("SVIDs %v", svids)
	}
	if _, _, err := x509svid.Verify(svids[0].Certificates, f.bundle); err != nil {
		t.Fatalf("SVID does not verify: %v", err)
	}
	bundles, err := c.FetchX509Bundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := bundles.GetX509BundleForTrustDomain(td); err != nil || !b.HasX509Authority(f.ca) {
		t.Fatalf("X.509 bundle: %v", err)
	}
	jb, err := c.FetchJWTBundles(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if b, err := jb.GetJWTBundleForTrustDomain(td); err != nil || !b.HasJWTAuthority("jwt1") {
		t.Fatalf("JWT bundle: %v", err)
	}
}

// A process no entry matches gets PermissionDenied "no identity issued",
// and the broker is never asked to sign.
func TestFetchX509SVIDNoMatch(t *testing.T) {
	f := newFakeBroker(t)
	_, sum := selfSHA256(t)
	f.setEntries(&brokerv1.Entry{Id: "e1", SpiffeId: "spiffe://writ.test/app", Selectors: []*brokerv1.Selector{
		{Type: TypeUnix, Value: "uid:" + strconv.Itoa(os.Getuid()+1)},
		{Type: TypeUnix, Value: "sha256:" + sum},
	}})
	c := client(t, startServer(t, f, time.Hour))
	_, err := c.FetchX509SVID(testCtx(t))
	if status.Code(err) != codes.PermissionDenied || status.Convert(err).Message() != "no identity issued" {
		t.Fatalf("non-matching process: %v", err)
	}
	if _, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "a"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("JWT-SVID for a non-matching process: %v", err)
	}
	if f.signed != 0 {
		t.Fatalf("broker signed %d SVIDs", f.signed)
	}
}

// A call without the workload.spiffe.io header is refused before anything
// else, as SPIRE refuses it.
func TestMissingSecurityHeader(t *testing.T) {
	f := newFakeBroker(t)
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	addr := startServer(t, f, time.Hour)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wl := workloadpb.NewSpiffeWorkloadAPIClient(conn)
	stream, err := wl.FetchX509SVID(testCtx(t), &workloadpb.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("FetchX509SVID without header: %v", err)
	}
	_, err = wl.ValidateJWTSVID(testCtx(t), &workloadpb.ValidateJWTSVIDRequest{Audience: "a", Svid: "x"})
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("ValidateJWTSVID without header: %v", err)
	}
	if f.signed != 0 {
		t.Fatalf("broker signed %d SVIDs", f.signed)
	}
}

// A JWT-SVID fetched through the API validates through it, for its
// audience only.
func TestJWTSVID(t *testing.T) {
	f := newFakeBroker(t)
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	c := client(t, startServer(t, f, time.Hour))
	sv, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "db"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.ValidateJWTSVID(testCtx(t), sv.Marshal(), "db")
	if err != nil || got.ID.String() != "spiffe://writ.test/app" {
		t.Fatalf("validate: %v %v", got, err)
	}
	if _, err := c.ValidateJWTSVID(testCtx(t), sv.Marshal(), "other"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("wrong audience: %v", err)
	}
}

// watcher records what an X.509 context watch sees.
type watcher struct {
	mu       sync.Mutex
	serials  map[string]bool
	notAfter time.Time // of the latest SVID seen
	denied   time.Time // when the stream first said PermissionDenied
}

func (w *watcher) OnX509ContextUpdate(c *workloadapi.X509Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range c.SVIDs {
		w.serials[s.Certificates[0].SerialNumber.String()] = true
		w.notAfter = s.Certificates[0].NotAfter
	}
}

func (w *watcher) OnX509ContextWatchError(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if status.Code(err) == codes.PermissionDenied && w.denied.IsZero() {
		w.denied = time.Now()
	}
}

func (w *watcher) state() (n int, notAfter, denied time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.serials), w.notAfter, w.denied
}

// An SVID is renewed at half its lifetime and an X509Source sees the new
// one; once the broker refuses (the node failed attestation), renewals stop
// and, after expiry, the stream says "no identity issued".
func TestRotationAndRenewalStops(t *testing.T) {
	f := newFakeBroker(t)
	f.ttl = 2 * time.Second
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	addr := startServer(t, f, 50*time.Millisecond)

	src, err := workloadapi.NewX509Source(testCtx(t), workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = src.Close() }()
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	var rotatedAt time.Time
	waitFor(t, "a rotated SVID in the source", func() bool {
		s, err := src.GetX509SVID()
		rotatedAt = time.Now()
		return err == nil && s.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0
	})
	if !rotatedAt.Before(first.Certificates[0].NotAfter) {
		t.Errorf("the SVID was replaced only after it expired (%v), not at half-life", first.Certificates[0].NotAfter)
	}

	w := &watcher{serials: map[string]bool{}}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- client(t, addr).WatchX509Context(ctx, w) }()
	waitFor(t, "the watcher's first SVID", func() bool { n, _, _ := w.state(); return n > 0 })
	f.setRefuse(true)
	seenBefore, _, _ := w.state()
	waitFor(t, "the stream to report no identity", func() bool { _, _, denied := w.state(); return !denied.IsZero() })
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("watch ended with %v", err)
	}
	n, notAfter, denied := w.state()
	if denied.Before(notAfter) {
		t.Errorf("stream said no identity at %v, before the last SVID expired at %v", denied, notAfter)
	}
	if n > seenBefore+1 { // one renewal may have been in flight
		t.Errorf("watcher saw %d new SVIDs after the broker refused", n-seenBefore)
	}
	t.Logf("watcher saw %d SVIDs; no identity %v after the last expired", n, denied.Sub(notAfter))
}

// An entry created after the agent fetched the entries serves the caller
// without waiting for the next periodic refresh.
func TestNewEntryServedOnMiss(t *testing.T) {
	f := newFakeBroker(t)
	c := client(t, startServer(t, f, time.Hour))
	if _, err := c.FetchX509SVID(testCtx(t)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("no entries: %v", err)
	}
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	waitFor(t, "the new entry to serve", func() bool {
		s, err := c.FetchX509SVID(testCtx(t))
		return err == nil && s.ID.String() == "spiffe://writ.test/app"
	})
}

// When the node's standing is withdrawn (the agent heard node_revoked), the
// server drops the SVIDs it holds at once, long before they expire: the
// stream says "no identity" with the reason, JWT-SVIDs and bundles are
// refused, and nothing is signed, although this fake broker would still
// sign. Restored, the watcher gets a new SVID.
func TestStandingWithdrawsIdentities(t *testing.T) {
	f := newFakeBroker(t)
	f.setEntries(selfEntry(t, "e1", "spiffe://writ.test/app"))
	addr, srv := startServerGet(t, f, 50*time.Millisecond)
	w := &watcher{serials: map[string]bool{}}
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() { done <- client(t, addr).WatchX509Context(ctx, w) }()
	defer func() {
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
			t.Errorf("watch ended with %v", err)
		}
	}()
	waitFor(t, "the watcher's first SVID", func() bool { n, _, _ := w.state(); return n > 0 })
	f.mu.Lock()
	signed := f.signed
	f.mu.Unlock()

	srv.SetStanding("node_revoked")
	waitFor(t, "the stream to report no identity", func() bool { _, _, denied := w.state(); return !denied.IsZero() })
	_, notAfter, denied := w.state()
	if !denied.Before(notAfter) {
		t.Fatalf("no identity only at %v, the SVID's expiry %v", denied, notAfter)
	}
	c := client(t, addr)
	_, err := c.FetchX509SVID(testCtx(t))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "node_revoked") {
		t.Fatalf("FetchX509SVID while revoked: %v; want PermissionDenied naming node_revoked", err)
	}
	if _, err := c.FetchJWTSVID(testCtx(t), jwtsvid.Params{Audience: "db"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchJWTSVID while revoked: %v; want PermissionDenied", err)
	}
	if _, err := c.FetchX509Bundles(testCtx(t)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("FetchX509Bundles while revoked: %v; want PermissionDenied", err)
	}
	time.Sleep(300 * time.Millisecond) // the watcher retries meanwhile
	f.mu.Lock()
	after := f.signed
	f.mu.Unlock()
	if after != signed {
		t.Fatalf("%d SVIDs signed while the node was revoked", after-signed)
	}

	n, _, _ := w.state()
	srv.SetStanding("")
	waitFor(t, "a new SVID after the standing is restored", func() bool { m, _, _ := w.state(); return m > n })
}

// TestHealth: the Workload API socket answers grpc.health.v1 with the
// security header, and refuses it without, as it refuses the API.
func TestHealth(t *testing.T) {
	f := newFakeBroker(t)
	addr := startServer(t, f, time.Hour)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	if _, err := hc.Check(testCtx(t), &healthpb.HealthCheckRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("health without the header: %v", err)
	}
	ctx := metadata.AppendToOutgoingContext(testCtx(t), "workload.spiffe.io", "true")
	r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", r.GetStatus(), err)
	}
}
