package broker

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	brokerv1 "github.com/writ-dev/writ/api/broker/v1"
	"github.com/writ-dev/writ/broker/store"
)

// TestStoreBusyIsUnavailable: while another process holds the SQLite
// file's write lock past busy_timeout, a writ request and a challenge are
// refused with store_busy and gRPC Unavailable (retry with backoff), not
// internal_error; no writ is returned, and once the lock is gone the same
// requests succeed.
func TestStoreBusyIsUnavailable(t *testing.T) {
	dir := t.TempDir()
	b := newTestBroker(t, dir, 1, defaultRules)
	ctx, _ := b.passedNode(t, "n1")
	path := filepath.Join(dir, "data", DBFile)
	other, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?_pragma=busy_timeout(5000)&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = other.Close() }()
	tx, err := other.BeginTx(context.Background(), nil) // "another process": takes the write lock
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(`INSERT INTO used_writs (jti, expires_at, used_at) VALUES ('other', 1, 1)`); err != nil {
		t.Fatal(err)
	}
	var (
		wg       sync.WaitGroup
		writ     *brokerv1.WritResponse
		wErr, cE error
	)
	wg.Add(2)
	go func() {
		defer wg.Done()
		writ, wErr = b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()})
	}()
	go func() {
		defer wg.Done()
		_, cE = b.Challenge(context.Background(), &brokerv1.ChallengeRequest{NodeId: "n1"})
	}()
	wg.Wait()
	for what, err := range map[string]error{"RequestWrit": wErr, "Challenge": cE} {
		wantRefused(t, what, err, ReasonStoreBusy)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: code %v, want Unavailable", what, status.Code(err))
		}
		if d, ok := brokerv1.RetryDelayOf(err); !ok || d < minRetryHint || d >= maxRetryHint {
			t.Fatalf("%s: retry hint %s (%v), want one in [%s, %s) (docs/adr/0056)", what, d, ok, minRetryHint, maxRetryHint)
		}
	}
	if writ != nil {
		t.Fatalf("a writ was returned although its record was not stored: %v", writ)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.RequestWrit(ctx, &brokerv1.WritRequest{Exec: execReq()}); err != nil {
		t.Fatalf("RequestWrit once the store is free: %v", err)
	}
	if _, err := b.Challenge(context.Background(), &brokerv1.ChallengeRequest{NodeId: "n1"}); err != nil {
		t.Fatalf("Challenge once the store is free: %v", err)
	}
}

// TestBusyUnaryMapsRawStoreErrors: a handler that returns a busy store
// error as it came is answered store_busy (Unavailable); refusals and
// other errors pass unchanged.
func TestBusyUnaryMapsRawStoreErrors(t *testing.T) {
	b := newTestBroker(t, t.TempDir(), 1, defaultRules)
	info := &grpc.UnaryServerInfo{FullMethod: "/writ.broker.v1.Broker/Test"}
	call := func(err error) error {
		_, got := b.busyUnary(context.Background(), nil, info, func(context.Context, any) (any, error) { return nil, err })
		return got
	}
	got := call(fmt.Errorf("store: put nonce: %w", store.ErrBusy))
	if brokerv1.ReasonOf(got) != ReasonStoreBusy || status.Code(got) != codes.Unavailable {
		t.Fatalf("raw busy error: %v", got)
	}
	if _, ok := brokerv1.RetryDelayOf(got); !ok {
		t.Fatalf("raw busy error answered without a retry hint: %v", got)
	}
	refusal := brokerv1.Refuse(codes.PermissionDenied, ReasonNodeRevoked, "x")
	if got := call(refusal); brokerv1.ReasonOf(got) != ReasonNodeRevoked {
		t.Fatalf("a refusal was changed: %v", got)
	}
	other := errors.New("something else")
	if got := call(other); !errors.Is(got, other) {
		t.Fatalf("another error was changed: %v", got)
	}
}
