package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/attest/prover"
	"github.com/writ-dev/writ/identity"
	"github.com/writ-dev/writ/internal/swtpmtest"
	"github.com/writ-dev/writ/internal/tcglog"
)

func TestMain(m *testing.M) { os.Exit(swtpmtest.Main(m)) }

var td = spiffeid.RequireTrustDomainFromString("writ.test")

// TestBackoff: waits double per failure from base, are capped at max,
// carry jitter in their upper half, and start over after a success.
func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    float64
		want []time.Duration
	}{
		{"no jitter drawn", 0.999999, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 5 * time.Second, 5 * time.Second}},
		{"most jitter drawn", 0, []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 2500 * time.Millisecond, 2500 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &backoff{base: time.Second, max: 5 * time.Second, rand: func() float64 { return tc.r }}
			for i, want := range tc.want {
				if got := b.next(); got.Round(time.Millisecond) != want {
					t.Fatalf("wait %d: %v, want %v", i, got, want)
				}
			}
			b.reset()
			if got := b.next().Round(time.Millisecond); got != tc.want[0] {
				t.Fatalf("after a success: %v, want %v", got, tc.want[0])
			}
		})
	}
	// Real jitter: waits differ and stay in [d/2, d].
	b := &backoff{base: time.Second, max: time.Hour}
	seen := map[time.Duration]bool{}
	for range 20 {
		b.reset()
		d := b.next()
		if d < 500*time.Millisecond || d > time.Second {
			t.Fatalf("first wait %v outside [500ms, 1s]", d)
		}
		seen[d] = true
	}
	if len(seen) < 2 {
		t.Fatal("no jitter: every agent would retry at the same instant")
	}
}

// silentBroker accepts broker calls and never answers them.
type silentBroker struct {
	brokerv1.UnimplementedBrokerServer
}

func (silentBroker) Enroll(ctx context.Context, _ *brokerv1.EnrollRequest) (*brokerv1.EnrollResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// serveSilent serves a silentBroker over TLS as the trust domain's broker,
// and returns its address and the bundle file that authenticates it.
func serveSilent(t *testing.T) (addr, bundle string) {
	t.Helper()
	dir := t.TempDir()
	ca, err := identity.LoadOrCreateCA(dir, td)
	if err != nil {
		t.Fatal(err)
	}
	key, err := identity.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.IssueX509SVID(identity.BrokerID(td), key.Public(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := ca.Bundle().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	bundle = filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(bundle, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	svid := &x509svid.SVID{ID: identity.BrokerID(td), Certificates: []*x509.Certificate{cert}, PrivateKey: key}
	conf := tlsconfig.TLSServerConfig(svid)
	conf.ClientAuth = tls.NoClientCert
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(conf)))
	brokerv1.RegisterBrokerServer(srv, silentBroker{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String(), bundle
}

func newTestAgent(t *testing.T, broker, bundle string, cfg Config) *Agent {
	t.Helper()
	sw := swtpmtest.Start(t)
	logPath := sw.Boot(t, tcglog.HonestBoot())
	cfg.Broker, cfg.TrustDomain, cfg.Bundle, cfg.DataDir = broker, td, bundle, t.TempDir()
	cfg.OpenTPM = func() (*prover.TPM, error) { return prover.New(sw.Channel(), logPath) }
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestRPCDeadline: a broker that accepts a call and never answers does
// not hold the agent: every call has a deadline (Config.RPCTimeout).
// Before, the call waited for as long as the caller's context lasted.
func TestRPCDeadline(t *testing.T) {
	addr, bundle := serveSilent(t)
	a := newTestAgent(t, addr, bundle, Config{RPCTimeout: 300 * time.Millisecond})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, err := a.Attest(ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if status.Code(errors.Unwrap(err)) != codes.DeadlineExceeded && status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("Attest: %v, want DeadlineExceeded", err)
		}
		if ctx.Err() != nil {
			t.Fatal("the caller's context ended first")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the agent waited 20s on a broker that never answers")
	}
}

// countingHandler counts log records with one message.
type countingHandler struct {
	msg string
	n   *atomic.Int32
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.n.Add(1)
	}
	return nil
}
func (h countingHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countingHandler) WithGroup(string) slog.Handler      { return h }

// TestRunRetriesWithBackoff: when the broker cannot be reached, Run
// retries sooner than its interval, with waits that grow: a few attempts
// in two seconds, neither one (a whole interval of an hour lost, as
// before) nor a hot loop.
func TestRunRetriesWithBackoff(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens: every call fails at once
	_, bundle := serveSilent(t)
	var attempts atomic.Int32
	a := newTestAgent(t, addr, bundle, Config{Interval: time.Hour, RetryBase: 50 * time.Millisecond,
		Log: slog.New(countingHandler{msg: "attestation error", n: &attempts})})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	// Waits are at least 25, 50, 100, 200, 400, 800 ms: at most 7 attempts
	// fit in 2 s, and the first four need under 350 ms of waiting.
	if n := attempts.Load(); n < 3 || n > 7 {
		t.Fatalf("%d attempts in 2s with a 50ms base and a 1h interval, want 3 to 7", n)
	}
}
